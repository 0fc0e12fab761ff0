"""Persistent engines and latency on one GPU (issue 16), variants side by side in one process and call.

    python -m sv_engine.benchmarks.engine_bench --out engines.json [--budget-s 540] [--parts ...]

Parts (``--parts``, comma-separated):

* ``warm``: whole warm edits (70 frames 768×432, 3 keyframes × 20 steps + background, seed 0): eager
  fp16 torch (the parity reference), the GPU default as it was (norms upcast to fp32, the conditioning
  copied to the GPU every step), the GPU default, the GPU default with the background on its own
  stream; PSNR of each against eager; per-stage seconds; peak GPU memory; and, for the defaults, every
  UNet+ControlNet / VAE / text-encoder call's GPU milliseconds (CUDA events) and the GPU gaps between
  sampling steps;
* ``maps``: NLA maps of 70×768×432 on the bundled clip's fitted NLA (fp32 reference, FastMaps) with
  the largest error against fp32 (a fused Triton kernel of the three MLPs measured 289-373 ms against
  FastMaps' 225 ms in runs 2ad96af and 3c0532a, and was dropped);
* ``compile``: the persistent torch.compile route: ``sv-engine build --backend torch-compile`` in a
  fresh process (seconds, entry size), again (a no-op), then a fresh process that loads the stored
  artifacts and times the CFG step at 512² against the GPU default and eager torch;
* ``build`` / ``steps``: ``sv-engine build --backend aoti`` and the CFG step of its engine;
* ``load``: a fresh process's import and weight-load seconds; ``cold``: ``sv-engine edit`` in fresh
  processes with the built engines.

Every part's failure is recorded, not raised, and the JSON is rewritten after each part.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sv_engine.benchmarks.timing import instrument_denoisers

log = logging.getLogger(__name__)


def _sync() -> None:
    torch.cuda.synchronize()


def _time_ms(fn, repeat: int = 20) -> float:
    for _ in range(3):
        fn()
    _sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    _sync()
    return start.elapsed_time(end) / repeat


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from sv_engine.engine.parity import psnr

    return round(float(psnr(a, b)), 2)


def _error(exc: BaseException) -> dict:
    from sv_engine.benchmarks.stages import error_string

    log.exception("part failed")
    return {"status": "error", "error": error_string(exc)}


def build_cli(args: list[str], env: dict, timeout: float, log_path: Path | None = None) -> dict:
    """``sv-engine build ARGS`` in a fresh process: return code, seconds, the end of its output. With
    ``log_path`` the output goes to that file as it comes, so a build cut off by ``timeout`` still
    shows which models it had compiled (and how long each took) in the tail."""
    cmd = [sys.executable, "-m", "sv_engine", "build", *args]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") if log_path is None else open(log_path, "w+") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            returncode = None
        log_file.seek(0)
        tail = log_file.read().strip().splitlines()[-14:]
    row = {"command": cmd, "returncode": returncode, "seconds": round(time.perf_counter() - t0, 2), "output_tail": tail}
    if returncode is None:
        row["error"] = f"timed out after {timeout:.0f} s"
    return row


_LOAD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import torch
torch.zeros(1, device="cuda")
t1 = time.perf_counter()
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextModel, DPTForDepthEstimation
from sv_engine.stablevideo.models.loaders import load_weights
t2 = time.perf_counter()
out = {"torch import + CUDA init": t1 - t0, "diffusers + transformers import": t2 - t1}
for how in ("straight to the GPU", "CPU then .to(GPU)"):
    t = time.perf_counter()
    if how == "straight to the GPU":
        c = load_weights(sys.argv[1], dtype=torch.float16, device=torch.device("cuda"))
    else:
        c = load_weights(sys.argv[1], dtype=torch.float16).to("cuda")
    torch.cuda.synchronize()
    out["load fp16 weights, " + how] = time.perf_counter() - t
    del c
    torch.cuda.empty_cache()
print("LOAD " + json.dumps({k: round(v, 3) for k, v in out.items()}))
"""


def load_phases(weights: Path, env: dict) -> dict:
    """A fresh process's import and weight-load seconds (safetensors straight to the GPU vs via the
    CPU), and the slowest imports of ``python -X importtime``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _LOAD_SCRIPT, str(weights)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("LOAD ")), None)
    if line is None:
        return {"status": "error", "error": " | ".join(proc.stderr.strip().splitlines()[-4:])}
    from sv_engine.benchmarks.timing import slowest_imports

    return {
        "status": "ok",
        "seconds": json.loads(line[5:]),
        "slowest_imports_cumulative_s": slowest_imports(proc.stderr, 25),
    }


def maps_variants(device: torch.device) -> dict:
    """NLA maps of 70 frames 768×432 per variant, on the bundled clip's fitted NLA (a real field, not
    random weights), with the largest error against the fp32 reference."""
    from sv_engine.stablevideo.data import VideoConfig, load_checkpoint
    from sv_engine.stablevideo.demo import demo_data_dir
    from sv_engine.stablevideo.fast_maps import FastMaps
    from sv_engine.stablevideo.maps import compute_maps
    from sv_engine.stablevideo.nla import NLAField

    nla, _ = load_checkpoint(demo_data_dir() / "checkpoint")
    field = NLAField(nla.to(device)).eval().requires_grad_(False)
    config = VideoConfig(768, 432, 70)
    ref = compute_maps(field, config, device, progress=False)
    out: dict = {}

    variants = {
        "fp32 reference (chunks of 2^18)": lambda: compute_maps(field, config, device, progress=False),
        "FastMaps: fp16 GEMMs + CUDA graph, chunks of 2^18": lambda: gemms(config),
        "FastMaps: fused MLP kernels (the default)": lambda: fused(config),
        "FastMaps: fused MLP kernels, one tile a warp": lambda: fused_1(config),
    }
    gemms = FastMaps(field, torch.float16, 1 << 18, fused=False)
    fused = FastMaps(field)
    fused_1 = FastMaps(field, m_tiles=1)
    for name, fn in variants.items():
        try:
            got = fn()
            got = (got.fg_uv, got.bg_uv, got.alpha) if hasattr(got, "fg_uv") else got
            errs = [
                round((a - b).abs().max().item(), 6)
                for a, b in zip(got, (ref.fg_uv, ref.bg_uv, ref.alpha), strict=True)
            ]
            out[name] = {"ms": round(_time_ms(fn, repeat=5), 2), "max_abs_err_fg_uv_bg_uv_alpha": errs}
        except Exception as exc:  # noqa: BLE001
            out[name] = _error(exc)
        log.info("maps %s: %s", name, out[name])
    return out


def engine_files(cache: Path) -> list[dict]:
    return [{"file": p.name, "mb": round(p.stat().st_size / 1e6, 1)} for p in sorted((cache / "engines").glob("*.pt2"))]


def step_variants(components, device: torch.device, with_aoti: bool) -> dict:
    """UNet+ControlNet CFG step per variant at two shapes; AOTInductor first (the torch NHWC variant
    re-lays the shared weights out in place, which the engine's user-managed weights must not see)."""
    from sv_engine.engine.registry import get_backend
    from sv_engine.export.registry import build_specs
    from sv_engine.export.runtime import aoti_options
    from sv_engine.export.spec import DEFAULT_SHAPES

    spec = build_specs(components, None, names=["unet_controlnet_canny"], precision="fp16", device=device)[
        "unet_controlnet_canny"
    ]
    source = spec.model_source()
    shapes = {"512x512": {"h": 64, "w": 64}, "512x768": {"h": 64, "w": 96}}
    inputs = {k: spec.sample_inputs("opt", device=device, **v) for k, v in shapes.items()}
    eager = get_backend("torch", device=device).compile(source)
    ref = {k: eager(**x)["noise_pred"].float() for k, x in inputs.items()}
    out: dict = {}

    def measure(name: str, model) -> None:
        row = {}
        for k, x in inputs.items():
            y = model(**x)["noise_pred"].float()
            cos = torch.nn.functional.cosine_similarity(y.flatten(), ref[k].flatten(), dim=0).item()
            row[k] = {
                "ms": round(_time_ms(lambda x=x: model(**x)), 3),
                "cosine_vs_eager": round(cos, 6),
                "max_abs_err": round((y - ref[k]).abs().max().item(), 5),
            }
        out[name] = row
        log.info("step %s: %s", name, row)

    aoti_variants = (("aoti", False), ("aoti-cuda-graph", True)) if with_aoti else ()
    for name, graphs in aoti_variants:
        try:
            backend = get_backend("aoti", device=device, options=aoti_options(DEFAULT_SHAPES), cuda_graphs=graphs)
            measure(name, backend.compile(source))
            out[name]["engine"] = backend.last_entry
        except Exception as exc:  # noqa: BLE001
            out[name] = _error(exc)
    measure("torch-eager", eager)
    torch.cuda.empty_cache()
    try:
        measure("torch-cuda-graph", get_backend("torch-cuda-graph", device=device).compile(source))
    except Exception as exc:  # noqa: BLE001
        out["torch-cuda-graph"] = _error(exc)
    return out


class CallLog:
    """Wraps a pipeline's network callables and records a pair of CUDA events around each call, so a
    warm edit's GPU time splits into UNet+ControlNet steps (per shape), VAE and text-encoder calls,
    and the GPU's gaps between two sampling steps (DDIM math, copies, the host)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, tuple, torch.cuda.Event, torch.cuda.Event, int]] = []
        self.on = False

    def wrap(self, name: str, fn):  # noqa: ANN001, ANN201
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if not self.on:
                return fn(*args, **kwargs)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args, **kwargs)
            end.record()
            shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
            self.rows.append((name, shape, start, end, torch.cuda.current_stream().stream_id))
            return out

        return call

    def instrument(self, pipeline) -> None:  # noqa: ANN001
        instrument_denoisers(pipeline, self.wrap)

    def summary(self) -> dict:
        _sync()
        calls: dict[str, dict] = {}
        gaps: dict[str, float] = {}
        last_end: dict[tuple[str, int], torch.cuda.Event] = {}
        for name, shape, start, end, stream in self.rows:
            row = calls.setdefault(f"{name} {list(shape)}", {"calls": 0, "gpu_ms": 0.0})
            row["calls"] += 1
            row["gpu_ms"] += start.elapsed_time(end)
            side = name.split()[0]
            prev = last_end.get((side, stream))
            if prev is not None and name.endswith("unet_controlnet"):
                gap = prev.elapsed_time(start)
                if 0 <= gap < 50:  # within one sampling loop (keyframe to keyframe runs host work)
                    gaps[side] = gaps.get(side, 0.0) + gap
            last_end[(side, stream)] = end
        for row in calls.values():
            row["gpu_ms"] = round(row["gpu_ms"], 2)
            row["ms_per_call"] = round(row["gpu_ms"] / row["calls"], 3)
        return {"calls": calls, "gaps_between_steps_ms": {k: round(v, 2) for k, v in gaps.items()}}


class WarmVariant(NamedTuple):
    """How one warm-edit variant builds its pipeline."""

    backend: str
    cuda_graphs: bool | None = None
    overlap: bool = False  # the background on its own stream, beside the keyframe loop
    before: bool = False  # the GPU default as it was before issue 16's step fixes
    models: tuple[str, ...] | None = None  # the models the backend takes (None: its default)
    switch_interval_s: float | None = None  # Python's thread switch interval during the edits
    options: tuple[tuple[str, object], ...] = ()  # the backend's options changed from its defaults
    library_models: bool = False  # the diffusers / transformers classes instead of the pipeline's own networks
    prioritize_foreground: bool = True  # the keyframe loop on a high-priority stream (with overlap)
    fused_kernels: bool = True  # the networks' GroupNorm+SiLU, GEGLU and conv-bias kernels (False: torch's ops)


#: Every model a pipeline calls, for the variants that put all of them on the backend.
ALL_MODELS = ("unet_controlnet_canny", "unet_controlnet_depth", "vae_encoder", "vae_decoder", "text_encoder")

WARM_VARIANTS = {
    "torch-eager": WarmVariant("torch", False),
    "torch-eager, fp32 maps": WarmVariant("torch", False),
    "torch-cuda-graph, as before": WarmVariant("torch", before=True),
    "torch-cuda-graph": WarmVariant("torch"),
    "torch-cuda-graph, fp32 maps": WarmVariant("torch"),
    "torch-cuda-graph, background stream": WarmVariant("torch", overlap=True),
    # The same weights in the classes the pipeline's own networks replaced (benchmarks/library_models.py).
    "torch-cuda-graph, background stream, diffusers models": WarmVariant("torch", overlap=True, library_models=True),
    # torch's GroupNorm (it copies channels-last input to NCHW and back), SiLU, GEGLU and conv bias add
    # instead of the fused kernels (sv_engine.kernels.group_norm, .geglu, .bias).
    "torch-cuda-graph, background stream, torch norms": WarmVariant("torch", overlap=True, fused_kernels=False),
    # The keyframe loop on the main stream, at the background's priority (the default before c850aa6).
    "torch-cuda-graph, background stream, keyframes at its priority": WarmVariant(
        "torch", overlap=True, prioritize_foreground=False
    ),
    "torch-eager, diffusers models": WarmVariant("torch", False, library_models=True),
    # The background's eager VAE and text-encoder calls beside the keyframe loop took 8-12x their
    # time alone (engines-*-6112e61): in graphs they are launched by the GPU, not one by one by Python.
    "torch-cuda-graph, background stream, every model in graphs": WarmVariant("torch", overlap=True, models=ALL_MODELS),
    # Two Python threads hand the interpreter to each other every 5 ms by default: the keyframe loop's
    # few eager ops between two replays may wait that long for the background's thread.
    "torch-cuda-graph, background stream, 0.5 ms thread switches": WarmVariant(
        "torch", overlap=True, switch_interval_s=0.0005
    ),
    "aoti": WarmVariant("aoti"),  # with CUDA graphs (AotiOptions' default)
    "aoti, background stream": WarmVariant("aoti", overlap=True),
    "aoti, no CUDA graphs": WarmVariant("aoti", options=(("cuda_graphs", False),)),
    "torch-compile": WarmVariant("torch-compile"),
    # One graph over symbolic h, w instead of one compile per keyframe shape (issue 16 asks for its cost).
    "torch-compile, dynamic shapes": WarmVariant("torch-compile", options=(("dynamic", True),)),
}


@contextlib.contextmanager
def _as_before(on: bool):  # noqa: ANN202
    """The GPU default as it was before issue 16's step fixes: the torch backends' module with its
    norms upcast to fp32, and the conditioning copied to the GPU and concatenated every step."""
    if not on:
        yield
        return
    from sv_engine.export import spec
    from sv_engine.stablevideo.models.diffusion import ControlledDenoiser

    prepare, eps_fn = spec.prepare_for_precision, ControlledDenoiser.eps_fn

    def upcast(module, precision, fused_attention=False, native_norms=False):  # noqa: ANN001, ANN202
        return prepare(module, precision, fused_attention, native_norms=False)

    def per_step(self, cond_emb, uncond_emb, control, control_scale=1.0, cfg=9.0):  # noqa: ANN001, ANN202
        def fn(x, t):  # noqa: ANN001, ANN202
            emb_2b, control_2b = self.guidance_inputs(x.shape, cond_emb, uncond_emb, control)
            return self._guided(x, t, emb_2b, control_2b, control_scale, cfg)

        return fn

    spec.prepare_for_precision, ControlledDenoiser.eps_fn = upcast, per_step
    try:
        yield
    finally:
        spec.prepare_for_precision, ControlledDenoiser.eps_fn = prepare, eps_fn


def warm_edits(
    weights: Path | None,
    data_dir: Path,
    device: torch.device,
    variants: list[str],
    deadline: float = float("inf"),
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """One pipeline per variant on the same saved weights; the first edit warms (captures, maps), the
    second is timed, a third (CUDA-graph variants) is timed call by call; PSNR against the first
    variant (the reference). ``weights`` None: the full-size random models. ``progress`` gets the
    results so far after each variant, so a run cut off by its time limit keeps what it measured (a
    variant's compile can outlast the whole budget: torch.compile over symbolic h, w did)."""
    from sv_engine.benchmarks.e2e import edit_params
    from sv_engine.engine.registry import make_options
    from sv_engine.export.compose import RuntimeConfig, build_pipeline

    params = edit_params(20, 0.8, tiny=False)
    out: dict = {}
    frames: dict[str, np.ndarray] = {}
    report = progress or (lambda done: None)
    for variant in variants:
        if time.monotonic() > deadline:
            out[variant] = {"status": "skipped", "reason": "time budget"}
            report(out)
            continue
        gc.collect()  # the previous variant's pipeline, before this one's memory is counted
        torch.cuda.empty_cache()
        allocated_before = torch.cuda.memory_allocated() / 2**30
        try:
            spec = WARM_VARIANTS.get(variant, WarmVariant(variant))
            backend = spec.backend
            _fp32_maps(variant.endswith("fp32 maps"))
            config = RuntimeConfig(
                weights=str(weights) if weights else None,
                random_full=weights is None,
                precision="fp16",
                device=str(device),
                backend=backend,
                cuda_graphs=spec.cuda_graphs,
                overlap_background=spec.overlap,
                models=spec.models,
                options=make_options(backend, **dict(spec.options)) if spec.options else None,
            )
            given = own = None
            if spec.library_models:
                from sv_engine.benchmarks.library_models import as_library_models
                from sv_engine.stablevideo.model_source import load_components

                own = load_components(device, weights=weights, precision="fp16") if weights else None
                given = as_library_models(own or _random_components(device))
            from sv_engine.stablevideo.models.nets.fused import kernel_backends

            norms = kernel_backends() if spec.fused_kernels else kernel_backends("torch", "torch", "torch")
            with _as_before(spec.before), _switch_interval(spec.switch_interval_s), norms:
                runtime = build_pipeline(config, components=given)
                pipeline = runtime.pipeline
                pipeline.prioritize_foreground = spec.prioritize_foreground
                calls = CallLog()
                if backend == "torch" and spec.cuda_graphs is None:
                    calls.instrument(pipeline)
                load_s = runtime.seconds_per_phase.get("load models", 0.0)
                prepare_s = runtime.seconds_per_phase["prepare backend"]
                _sync()
                t0 = time.perf_counter()
                first = pipeline.edit(data_dir, params)
                _sync()
                first_s = time.perf_counter() - t0
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                result = pipeline.edit(data_dir, params)
                _sync()
                warm_s = time.perf_counter() - t0
                peak = torch.cuda.max_memory_allocated() / 2**30
                if backend == "torch" and spec.cuda_graphs is None:
                    calls.on = True
                    pipeline.edit(data_dir, params)
                    calls.on = False
            frames[variant] = result.frames
            out[variant] = {
                "status": "ok",
                "load_s": round(load_s, 2),
                "prepare_backend_s": round(prepare_s, 2),
                "first_edit_s": round(first_s, 3),
                "first_timings": first.timings,
                "warm_s": round(warm_s, 3),
                "timings": result.timings,
                "overlapped_background": result.overlapped_background,
                "peak_mem_gb": round(peak, 2),
                "allocated_before_gb": round(allocated_before, 2),  # left by earlier variants: 0 unless one leaks
                **(calls.summary() if calls.rows else {}),
            }
            if variant != variants[0] and variants[0] in frames:
                out[variant][f"psnr_vs_{variants[0]}_db"] = _psnr(result.frames, frames[variants[0]])
            log.info(
                "warm %s: %s", variant, {k: v for k, v in out[variant].items() if k != "calls" and "timings" not in k}
            )
            del pipeline, runtime, result, first, calls, given, own  # own: the library twins' tensors
        except Exception as exc:  # noqa: BLE001
            out[variant] = _error(exc)
        torch.cuda.empty_cache()
        report(out)
    return out


@contextlib.contextmanager
def _switch_interval(seconds: float | None):  # noqa: ANN202
    if seconds is None:
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _fp32_maps(on: bool) -> None:
    """Open videos with the fp32 NLA maps (the reference) instead of the GPU's FastMaps."""
    from sv_engine.stablevideo import maps, session
    from sv_engine.stablevideo.nla import NLAField

    def fp32(video, device):  # noqa: ANN001, ANN202
        return maps.load_or_compute_maps(video, device, field=NLAField(video.nla).to(device).eval())

    session.load_or_compute_maps = fp32 if on else maps.load_or_compute_maps


_COMPILE_STEP_SCRIPT = r"""
import json, sys, time
import torch
from sv_engine.engine.registry import get_backend
from sv_engine.export.registry import build_specs
from sv_engine.stablevideo.model_source import load_components

dev = torch.device("cuda")
components = load_components(dev, weights=sys.argv[1], precision="fp16")
spec = build_specs(components, None, names=["unet_controlnet_canny"], precision="fp16", device=dev)
spec = spec["unet_controlnet_canny"]
x = spec.sample_inputs("opt", device=dev)


def ms(model, repeat=20):
    for _ in range(3):
        model(**x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        model(**x)
    end.record()
    torch.cuda.synchronize()
    return round(start.elapsed_time(end) / repeat, 3)


def cosine(y):
    return round(torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0).item(), 6)


out = {}
eager = get_backend("torch", device=dev).compile(spec.model_source())
ref = eager(**x)["noise_pred"].float()
out["torch-eager"] = {"ms": ms(eager, 5)}
t0 = time.perf_counter()
backend = get_backend("torch-compile", device=dev)
model = backend.compile(spec.model_source())
y = model(**x)["noise_pred"].float()
torch.cuda.synchronize()
out["torch-compile"] = {
    "artifacts_loaded": backend.artifacts(spec.model_source()).loaded,
    "compile_and_first_call_s": round(time.perf_counter() - t0, 2),
    "ms": ms(model),
    "cosine_vs_eager": cosine(y),
}
graphs = get_backend("torch-cuda-graph", device=dev).compile(spec.model_source())  # NHWC in place: after compile
out["torch-cuda-graph"] = {"ms": ms(graphs), "cosine_vs_eager": cosine(graphs(**x)["noise_pred"].float())}
print("STEP " + json.dumps(out))
"""


def compile_route(weights: Path, env: dict, deadline: float, meanwhile=None) -> dict:  # noqa: ANN001
    """The persistent torch.compile route at 512²: ``sv-engine build --backend torch-compile`` in a
    fresh process (``meanwhile()`` runs here while it compiles), the same build again (a no-op), then
    a fresh process that loads the stored artifacts and times the CFG step against the GPU default."""
    args = ["--backend", "torch-compile", "--weights", str(weights), "--precision", "fp16"]
    args += ["--shapes", "512x512", "--models", "unet_controlnet_canny"]
    cmd = [sys.executable, "-m", "sv_engine", "build", *args]
    out: dict = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env)
        if meanwhile is not None:
            meanwhile()
        try:
            proc.wait(timeout=max(10.0, deadline - time.monotonic() - 70))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.seek(0)
        tail = log_file.read().strip().splitlines()[-14:]
    out["build"] = {
        "command": cmd,
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 2),
        "overlapped_with": "the maps part" if meanwhile is not None else None,
        "output_tail": tail,
    }
    if proc.returncode != 0:
        return out
    out["build_again"] = build_cli(args, env, 120)
    out["entries"] = [
        {"file": p.name, "mb": round(p.stat().st_size / 1e6, 1)}
        for p in sorted((Path(env["SV_ENGINE_CACHE"]) / "engines").glob("compile-*.bin"))
    ]
    left = deadline - time.monotonic()
    if left < 30:
        out["step"] = {"status": "skipped", "reason": "time budget"}
        return out
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _COMPILE_STEP_SCRIPT, str(weights)],
            capture_output=True,
            text=True,
            timeout=left,
            env=env,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("STEP ")), None)
        out["step"] = (
            {"status": "ok", **json.loads(line[5:])}
            if line
            else {"status": "error", "error": " | ".join(proc.stderr.strip().splitlines()[-5:])}
        )
    except subprocess.TimeoutExpired:
        out["step"] = {"status": "error", "error": f"timed out after {left:.0f} s"}
    out["step"]["process_s"] = round(time.perf_counter() - t0, 1)
    return out


def _random_components(device: torch.device):  # noqa: ANN202
    """The full-size random fp16 models, built on the GPU (seconds; on the CPU they take ~35 s)."""
    from sv_engine.stablevideo.model_source import load_components, to_edit_precision
    from sv_engine.stablevideo.models.tiny import build_random_components

    try:
        return to_edit_precision(build_random_components(0, device=device), device, torch.float16)
    except Exception:  # noqa: BLE001 - building on the GPU is an optimisation; the CPU route always works
        log.warning("random models on the GPU failed; building them on the CPU", exc_info=True)
        return load_components(device, random_full=True, precision="fp16")


VIEW_KEYS = ("environment", "stages", "e2e")


def bench_view(result: dict) -> dict:
    """The measurements in ``sv-engine bench``'s result form (``environment``, ``stages``, ``e2e``), so
    the README table (benchmarks.readme_table) takes its rows from them: the NLA maps and the whole
    edit with the GPU default (warm, cold, peak memory)."""
    from sv_engine.benchmarks.stages import E2E_TARGETS, TARGETS_MS

    view: dict = {
        "environment": {
            "gpu": result.get("gpu"),
            "torch": result.get("torch"),
            "cuda": result.get("cuda"),
            "git_commit": result.get("commit"),
            "date": result.get("date"),
            "datetime": result.get("datetime") or result.get("date"),
            "note": "random weights: latency does not depend on weight values",
        },
        "stages": {},
    }
    maps = {k: v for k, v in (result.get("nla_maps") or {}).items() if isinstance(v, dict) and "ms" in v}
    reference = next((k for k in maps if k.startswith("fp32 reference")), None)
    if reference:
        best = min(maps, key=lambda k: maps[k]["ms"])
        view["stages"]["nla_maps"] = {
            "status": "ok",
            "reference": "reference",
            "best": best,
            "backends": {
                ("reference" if k == reference else k): {
                    "status": "ok",
                    "median_ms": v["ms"],
                    "speedup": maps[reference]["ms"] / v["ms"],
                }
                for k, v in maps.items()
            },
            "target_ms": TARGETS_MS["nla_maps"],
            "target_met": maps[best]["ms"] <= TARGETS_MS["nla_maps"],
        }
        if best == reference:
            view["stages"]["nla_maps"]["best"] = "reference"
    step = (result.get("torch_compile") or {}).get("step") or {}
    if step.get("status") == "ok":
        steps = {k: v["ms"] for k, v in step.items() if isinstance(v, dict) and "ms" in v}
        names = {"torch-eager": "reference", "torch-compile": "torch-compile (stored artifacts)"}
        best = min((k for k in steps if k != "torch-eager"), key=steps.get)
        view["stages"]["unet_step"] = {
            "status": "ok",
            "reference": "reference",
            "best": names.get(best, best),
            "backends": {
                names.get(k, k): {"status": "ok", "median_ms": v, "speedup": steps["torch-eager"] / v}
                for k, v in steps.items()
            },
            "target_ms": TARGETS_MS["unet_step"],
            "target_met": steps[best] <= TARGETS_MS["unet_step"],
        }
    name = default_warm_variant()
    runs = (result.get("warm_edit"), result.get("warm_edit_maps"), result.get("warm_edit_aoti"))
    warm = next((w.get(name) for w in runs if w and name in w), None)
    cold = (result.get("cold_edit") or {}).get("torch-cuda-graph") or {"status": "not measured in this run"}
    if warm and warm.get("status") == "ok":  # the README takes the cold row from the newest run that has one
        view["e2e"] = {
            "warm": {**warm, "backend": name},
            "cold": cold,
            "targets": {
                "warm_met": warm["warm_s"] <= 0.6,
                "cold_met": cold["seconds"] <= 4.0 if cold.get("status") == "ok" else None,
                "peak_mem_met": warm["peak_mem_gb"] - warm.get("allocated_before_gb", 0.0)
                <= E2E_TARGETS["peak_mem_gb"],
            },
        }
    elif cold.get("status") == "ok":  # a run of builds and cold edits only: its cold row still counts
        view["e2e"] = {"cold": cold, "targets": {"cold_met": cold["seconds"] <= 4.0}}
    return view


def default_warm_variant() -> str:
    """The warm-edit variant that is what ``sv-engine edit`` does on a GPU by default."""
    from sv_engine.export.compose import RuntimeConfig, overlap_background

    return (
        "torch-cuda-graph, background stream"
        if overlap_background(RuntimeConfig(), torch.device("cuda"), "torch", cuda_graphs=True)
        else "torch-cuda-graph"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--parts", default="warm,compile,maps")
    ap.add_argument(
        "--work-dir",
        type=Path,
        help="keep the clip, weights and engine cache here (default: a new temporary folder); a second run "
        "with the same folder reuses them, so a build started in one call is timed in the next",
    )
    ap.add_argument(
        "--warm-variants",
        default="torch-eager;torch-cuda-graph, as before;torch-cuda-graph;torch-cuda-graph, background stream",
        help="';'-separated warm-edit variants (the first is the PSNR reference)",
    )
    ap.add_argument("--view-of", type=Path, help="only rewrite this result JSON with its bench-form view into --out")
    args = ap.parse_args(argv)
    if args.view_of:
        result = {k: v for k, v in json.loads(args.view_of.read_text()).items() if k not in VIEW_KEYS}
        args.out.write_text(json.dumps({**result, **bench_view(result)}, indent=1, default=str))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    deadline = time.monotonic() + args.budget_s
    parts = set(args.parts.split(","))
    device = torch.device("cuda")
    result: dict = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": os.environ.get("SV_ENGINE_COMMIT", "unknown"),
        "date": time.strftime("%Y-%m-%d"),
        "datetime": time.strftime("%Y-%m-%dT%H:%M"),  # orders same-day runs for the README table
        "weights": "full-size random (latency does not depend on weight values)",
    }

    def save() -> None:
        args.out.write_text(json.dumps({**result, **bench_view(result)}, indent=1, default=str))

    def saving(key: str) -> Callable[[dict], None]:  # a part's results so far, saved as they come
        def keep(done: dict) -> None:
            result[key] = done
            save()

        return keep

    tmp = args.work_dir or Path(tempfile.mkdtemp(prefix="sv-engine-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    cache = tmp / "cache"
    env = {**os.environ, "SV_ENGINE_CACHE": str(cache)}
    os.environ["SV_ENGINE_CACHE"] = str(cache)  # this process's engines and maps: the same cache
    from sv_engine.benchmarks.e2e import synth_data_dir
    from sv_engine.stablevideo.model_source import load_components
    from sv_engine.stablevideo.models.loaders import save_components

    def maps_part() -> None:
        try:
            result["nla_maps"] = maps_variants(device)
        except Exception as exc:  # noqa: BLE001
            result["nla_maps"] = _error(exc)
        save()

    if parts == {"maps"}:  # the maps need neither the clip nor the diffusion weights
        maps_part()
        return
    data_dir = synth_data_dir(tmp, 70, 432, 768)
    weights = tmp / "weights"  # every part's pipelines load these (1-2 s) instead of building random models
    if not (tmp / "weights.complete").exists():  # a reused work folder keeps its weights
        save_components(_random_components(device), weights)
        (tmp / "weights.complete").touch()
    torch.cuda.empty_cache()

    if "warm" in parts:  # first: the edits are what issue 16 is about
        variants = args.warm_variants.split(";")
        result["warm_edit"] = warm_edits(
            weights,
            data_dir,
            device,
            variants,
            deadline - (150 if "compile" in parts else 0),
            progress=saving("warm_edit"),
        )
    if "compile" in parts:  # the maps run here while the build compiles in its own process
        result["torch_compile"] = compile_route(weights, env, deadline, maps_part if "maps" in parts else None)
        save()
    elif "maps" in parts:
        maps_part()
    if "load" in parts:
        try:
            result["load"] = load_phases(weights, env)
        except Exception as exc:  # noqa: BLE001
            result["load"] = _error(exc)
        save()
    if "build" in parts:
        aoti_args = ["--backend", "aoti", "--weights", str(weights), "--precision", "fp16"]
        build_log = args.out.with_name(args.out.stem + "-build.log")
        after = 200 if {"steps", "aoti-warm"} & set(parts) else 60  # what the later parts need of the budget
        result["build"] = build_cli(aoti_args, env, max(60.0, deadline - time.monotonic() - after), build_log)
        if result["build"]["returncode"] == 0:
            result["build_again"] = build_cli(aoti_args, env, 120)
        result["engine_files"] = engine_files(cache)
        save()
    # Without a built engine every AOTInductor part would compile again in-process: leave them out.
    aoti = result.get("build", {}).get("returncode") == 0
    if "steps" in parts and deadline - time.monotonic() > 150:
        try:
            result["unet_controlnet_step"] = step_variants(
                load_components(device, weights=weights, precision="fp16"), device, aoti
            )
        except Exception as exc:  # noqa: BLE001
            result["unet_controlnet_step"] = _error(exc)
        torch.cuda.empty_cache()
        save()
    if "maps-e2e" in parts:  # the GPU default with FastMaps vs fp32 maps, against eager torch
        result["warm_edit_maps"] = warm_edits(
            weights,
            data_dir,
            device,
            ["torch-eager, fp32 maps", "torch-cuda-graph", "torch-cuda-graph, fp32 maps"],
            progress=saving("warm_edit_maps"),
        )
    if "aoti-warm" in parts and aoti and deadline - time.monotonic() > 100:
        variants = ["torch-eager", "torch-cuda-graph, background stream", "aoti", "aoti, no CUDA graphs"]
        result["warm_edit_aoti"] = warm_edits(weights, data_dir, device, variants, progress=saving("warm_edit_aoti"))
    if "cold" in parts:
        from sv_engine.benchmarks.e2e import cold_edit as e2e_cold_edit

        result["cold_edit"] = {}
        for backend in ("aoti", "torch-cuda-graph") if aoti else ("torch-cuda-graph",):
            left = deadline - time.monotonic()
            if left < 40:
                result["cold_edit"][backend] = {"status": "skipped", "reason": "time budget"}
                continue
            result["cold_edit"][backend] = e2e_cold_edit(
                data_dir, weights, tmp, device, False, 20, 0.8, left - 5, backend, env
            )
            save()
    save()
    print(json.dumps({k: v for k, v in result.items()}, indent=1, default=str)[-6000:])


if __name__ == "__main__":
    main()
