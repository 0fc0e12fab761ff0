"""Where a warm edit's GPU time goes, and which fix of each part wins (issue 16), in one process.

    python -m sv_engine.benchmarks.warm_probe --out probe.json [--budget-s 330]

Parts, each side by side in this one process, each failure recorded (not raised), the JSON rewritten
after every part:

1. ``edit``: whole warm edits (70 frames 768×432, 3 keyframes, 20 steps, background, seed 0) with every
   UNet+ControlNet, VAE and text-encoder call timed by CUDA events (GPU milliseconds per call and
   shape, and the GPU gaps between calls: DDIM math, copies, the host); variants: eager fp16 (the
   parity reference), the GPU default as it was (the conditioning copied to the GPU every step), with
   the conditioning placed once, with native fp16 norms, with cuDNN autotuning, with the background
   beside the keyframe loop on its own stream; PSNR of each against eager;
2. ``step``: the CFG step at 512² and at the edit's keyframe and background shapes: the default
   module (norms upcast to fp32), native fp16 norms, cuDNN autotuning, each SDPA backend, all from
   CUDA graphs; two graphs replayed serially vs on two streams at once;
3. ``maps``: NLA maps of 70×768×432: FastMaps at 2^18, 2^19, 2^20 points per chunk, and one fused
   Triton kernel (all three MLPs, activations in registers and an L2-resident scratch);
4. ``compile``: torch.compile (inductor, static shapes) of the native-norm module replayed from a
   CUDA graph, in a subprocess per mode with a timeout: compile seconds, ms per step, the size of
   ``torch.compiler.save_cache_artifacts()``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def _time_ms(fn, repeat: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return round(start.elapsed_time(end) / repeat, 3)


def _error(exc: BaseException) -> dict:
    log.exception("part failed")
    return {"status": "error", "error": f"{type(exc).__name__}: {str(exc)[:600]}"}


# --------------------------------------------------------------------------------------------------
# 1. whole edits with every network call timed on the GPU
# --------------------------------------------------------------------------------------------------


class CallLog:
    """Wraps a denoiser's network callables; records (name, shape, start, end) CUDA events per call."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, tuple, torch.cuda.Event, torch.cuda.Event, int]] = []
        self.on = False

    def wrap(self, name: str, fn):
        def call(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args, **kwargs)
            end.record()
            shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
            self.rows.append((name, shape, start, end, torch.cuda.current_stream().stream_id))
            return out

        call.thread_safe = getattr(fn, "thread_safe", True)
        return call

    def instrument(self, pipeline) -> None:
        for side, den in (("fg", pipeline.fg_denoiser), ("bg", pipeline.bg_denoiser)):
            den.unet_controlnet = self.wrap(f"{side} unet_controlnet", den.unet_controlnet)
            for attr in ("text_encode", "vae_encode", "vae_decode"):
                setattr(den, attr, self.wrap(f"{side} {attr}", getattr(den, attr)))

    def summary(self) -> dict:
        torch.cuda.synchronize()
        per: dict[str, dict] = {}
        gaps: dict[str, float] = {}
        last_end: dict[tuple[str, int], torch.cuda.Event] = {}
        for name, shape, start, end, stream in self.rows:
            key = f"{name} {list(shape)}"
            row = per.setdefault(key, {"calls": 0, "gpu_ms": 0.0})
            row["calls"] += 1
            row["gpu_ms"] += start.elapsed_time(end)
            side = name.split()[0]
            prev = last_end.get((side, stream))
            if prev is not None and name.endswith("unet_controlnet"):
                gap = prev.elapsed_time(start)
                if 0 <= gap < 50:  # between two steps of one sampling loop (not across keyframes)
                    gaps[side] = gaps.get(side, 0.0) + gap
            last_end[(side, stream)] = end
        for row in per.values():
            row["gpu_ms"] = round(row["gpu_ms"], 2)
            row["ms_per_call"] = round(row["gpu_ms"] / row["calls"], 3)
        return {"calls": per, "gaps_between_steps_ms": {k: round(v, 2) for k, v in gaps.items()}}


def _old_eps_fn(self, cond_emb, uncond_emb, control, control_scale=1.0, cfg=9.0):
    """The GPU default as it was: ``eps`` (conditioning to the device and concatenated) every step."""

    def fn(x, t):
        emb_2b, control_2b = self.guidance_inputs(x.shape, cond_emb, uncond_emb, control)
        return self._guided(x, t, emb_2b, control_2b, control_scale, cfg)

    return fn


def _native_norm_modules(on: bool) -> None:
    """The torch backends' module form with native fp16 GroupNorm/LayerNorm (fp32 statistics inside
    PyTorch's kernels) instead of the export form's fp32 upcast."""
    from sv_engine.export import spec

    spec.TORCH_NATIVE_NORMS = on


def edit_variants(components, data_dir: Path, deadline: float) -> dict:
    from sv_engine.benchmarks.e2e import edit_params
    from sv_engine.engine.parity import psnr
    from sv_engine.export.compose import RuntimeConfig, build_pipeline
    from sv_engine.stablevideo.models.diffusion import ControlledDenoiser

    params = edit_params(20, 0.8, tiny=False)
    new_eps_fn = ControlledDenoiser.eps_fn
    variants = [
        # name, backend, eps per step (old), native norms, cudnn benchmark, overlap
        ("eager fp16 (reference)", "torch", False, False, False, False),
        ("default as it was (conditioning per step)", None, True, False, False, False),
        ("default + conditioning once", None, False, False, False, False),
        ("+ native fp16 norms", None, False, True, False, False),
        ("+ native norms + cudnn.benchmark", None, False, True, True, False),
        ("+ native norms + cudnn.benchmark + bg on own stream", None, False, True, True, True),
    ]
    out: dict = {}
    frames: dict[str, np.ndarray] = {}
    ref = variants[0][0]
    for name, backend, old_eps, native, bench, overlap in variants:
        if time.monotonic() > deadline:
            out[name] = {"status": "skipped", "reason": "time budget"}
            continue
        try:
            ControlledDenoiser.eps_fn = _old_eps_fn if old_eps else new_eps_fn
            _native_norm_modules(native)
            torch.backends.cudnn.benchmark = bench
            config = RuntimeConfig(
                random_full=True,
                precision="fp16",
                device="cuda",
                backend=backend or "torch",
                cuda_graphs=False if backend == "torch" else None,
            )
            runtime = build_pipeline(config, components=components)
            pipeline = runtime.pipeline
            calls = CallLog()
            calls.instrument(pipeline)
            t0 = time.perf_counter()
            pipeline.edit(data_dir, params)  # captures the graphs, tunes cuDNN, caches the maps
            torch.cuda.synchronize()
            first_s = time.perf_counter() - t0
            if overlap:  # the graphs are captured: the two threads only replay their own model's graphs
                pipeline.overlap_background = True
                pipeline._side_stream = torch.cuda.Stream()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            result = pipeline.edit(data_dir, params)
            torch.cuda.synchronize()
            warm_s = time.perf_counter() - t0
            calls.on = True
            t0 = time.perf_counter()
            pipeline.edit(data_dir, params)
            torch.cuda.synchronize()
            instrumented_s = time.perf_counter() - t0
            frames[name] = result.frames
            row = {
                "status": "ok",
                "first_edit_s": round(first_s, 3),
                "warm_s": round(warm_s, 3),
                "timings": result.timings,
                "overlapped": result.overlapped_background,
                "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "instrumented_warm_s": round(instrumented_s, 3),
                **calls.summary(),
            }
            if name != ref and ref in frames:
                row["psnr_vs_eager_db"] = round(float(psnr(result.frames, frames[ref])), 2)
            out[name] = row
            log.info("edit %s: warm %.3f s %s", name, warm_s, row.get("psnr_vs_eager_db"))
            del pipeline, runtime, result
        except Exception as exc:  # noqa: BLE001
            out[name] = _error(exc)
        finally:
            ControlledDenoiser.eps_fn = new_eps_fn
            _native_norm_modules(False)
            torch.backends.cudnn.benchmark = False
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------------------------------
# 2. the CFG step
# --------------------------------------------------------------------------------------------------


def _sdpa(module, backend_name: str | None):
    if backend_name is None:
        return module
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }[backend_name]

    class WithSdpa(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args):
            with sdpa_kernel([backend]):
                return self.inner(*args)

    return WithSdpa()


def step_variants(components, shapes: dict[str, tuple[int, int]], deadline: float) -> dict:
    import dataclasses

    from sv_engine.engine.registry import get_backend
    from sv_engine.export.registry import build_specs
    from sv_engine.export.unet_controlnet import _FusedUNetControlNet

    device = torch.device("cuda")
    spec = build_specs(components, None, names=["unet_controlnet_canny"], precision="fp16", device=device)[
        "unet_controlnet_canny"
    ]
    source = spec.model_source()
    inputs = {k: spec.sample_inputs("opt", device=device, h=h, w=w) for k, (h, w) in shapes.items()}
    names = spec.input_names()
    eager = spec.torch_module(fused_attention=True)
    with torch.inference_mode():
        ref = {k: eager(*[x[n] for n in names])[0].float() for k, x in inputs.items()}
    native = _FusedUNetControlNet(components.unet, components.controlnet_canny).eval()
    out: dict = {"shapes": {k: [8 * h, 8 * w] for k, (h, w) in shapes.items()}}
    variants = [
        ("default (fp32 norms, NHWC, CUDA graph)", source.module, None, False),
        ("native fp16 norms", native, None, False),
        ("native norms + cudnn.benchmark", native, None, True),
        ("native norms + cudnn.benchmark + sdpa flash", native, "flash", True),
        ("native norms + cudnn.benchmark + sdpa efficient", native, "efficient", True),
        ("native norms + cudnn.benchmark + sdpa cudnn", native, "cudnn", True),
    ]
    graphs = {}
    for name, module, sdpa, bench in variants:
        if time.monotonic() > deadline:
            out[name] = {"status": "skipped", "reason": "time budget"}
            continue
        try:
            torch.backends.cudnn.benchmark = bench
            model = get_backend("torch-cuda-graph", device=device).compile(
                dataclasses.replace(source, module=_sdpa(module, sdpa))
            )
            row = {}
            for k, x in inputs.items():
                y = model(**x)["noise_pred"].float()
                cos = torch.nn.functional.cosine_similarity(y.flatten(), ref[k].flatten(), dim=0).item()
                row[k] = {
                    "ms": _time_ms(lambda x=x, model=model: model(**x)),
                    "cosine_vs_eager": round(cos, 6),
                    "max_abs_err": round((y - ref[k]).abs().max().item(), 5),
                }
            out[name] = row
            graphs[name] = model
            log.info("step %s: %s", name, row)
        except Exception as exc:  # noqa: BLE001
            out[name] = _error(exc)
        finally:
            torch.backends.cudnn.benchmark = False
    out["two streams"] = _two_streams(components, spec, shapes, deadline)
    return out


def _two_streams(components, spec, shapes, deadline: float) -> dict:
    """The keyframe-shape canny step and the background-shape depth step, 16 replays each: one after
    the other on one stream vs on two streams at once (the background beside the keyframe loop)."""
    import dataclasses

    from sv_engine.engine.registry import get_backend
    from sv_engine.export.unet_controlnet import _FusedUNetControlNet

    if time.monotonic() > deadline:
        return {"status": "skipped", "reason": "time budget"}
    try:
        device = torch.device("cuda")
        fg_hw, bg_hw = shapes.get("keyframe", shapes["512x512"]), shapes.get("background", shapes["512x512"])
        source = spec.model_source()
        canny = get_backend("torch-cuda-graph", device=device).compile(
            dataclasses.replace(source, module=_FusedUNetControlNet(components.unet, components.controlnet_canny))
        )
        depth = get_backend("torch-cuda-graph", device=device).compile(
            dataclasses.replace(source, module=_FusedUNetControlNet(components.unet, components.controlnet_depth))
        )
        x_fg = spec.sample_inputs("opt", device=device, h=fg_hw[0], w=fg_hw[1])
        x_bg = spec.sample_inputs("opt", device=device, h=bg_hw[0], w=bg_hw[1])
        main, side = torch.cuda.current_stream(), torch.cuda.Stream()

        def serial() -> None:
            for _ in range(16):
                canny(**x_fg)
            for _ in range(16):
                depth(**x_bg)

        def overlapped() -> None:
            side.wait_stream(main)
            for _ in range(16):
                canny(**x_fg)
                with torch.cuda.stream(side):
                    depth(**x_bg)
            main.wait_stream(side)

        res = {
            "serial_ms": _time_ms(serial, repeat=3),
            "two_streams_ms": _time_ms(overlapped, repeat=3),
            "fg_alone_ms": _time_ms(lambda: [canny(**x_fg) for _ in range(16)], repeat=3),
            "bg_alone_ms": _time_ms(lambda: [depth(**x_bg) for _ in range(16)], repeat=3),
        }
        res["speedup"] = round(res["serial_ms"] / res["two_streams_ms"], 3)
        log.info("two streams: %s", res)
        return res
    except Exception as exc:  # noqa: BLE001
        return _error(exc)


# --------------------------------------------------------------------------------------------------
# 3. NLA maps
# --------------------------------------------------------------------------------------------------


def maps_variants(deadline: float) -> dict:
    from sv_engine.stablevideo.data import VideoConfig, load_checkpoint
    from sv_engine.stablevideo.demo import demo_data_dir
    from sv_engine.stablevideo.fast_maps import FastMaps
    from sv_engine.stablevideo.maps import compute_maps
    from sv_engine.stablevideo.nla import NLAField

    device = torch.device("cuda")
    nla, _ = load_checkpoint(demo_data_dir() / "checkpoint")
    field = NLAField(nla.to(device)).eval().requires_grad_(False)
    config = VideoConfig(768, 432, 70)
    ref = compute_maps(field, config, device, progress=False)
    out: dict = {}
    variants = {f"FastMaps fp16, chunks of 2^{b}": FastMaps(field, torch.float16, 1 << b) for b in (18, 19, 20)}
    try:
        from sv_engine.stablevideo.triton_maps import TritonMaps

        for bm, warps in ((64, 4), (128, 8), (64, 8)):
            variants[f"fused Triton MLPs, {bm} points per block, {warps} warps"] = TritonMaps(field, bm, warps)
    except Exception as exc:  # noqa: BLE001
        out["triton"] = _error(exc)
    for name, fn in variants.items():
        if time.monotonic() > deadline:
            out[name] = {"status": "skipped", "reason": "time budget"}
            continue
        try:
            got = fn(config)
            errs = [
                round((a - b).abs().max().item(), 6)
                for a, b in zip(got, (ref.fg_uv, ref.bg_uv, ref.alpha), strict=True)
            ]
            out[name] = {"ms": _time_ms(lambda fn=fn: fn(config), repeat=5), "max_abs_err_fg_uv_bg_uv_alpha": errs}
        except Exception as exc:  # noqa: BLE001
            out[name] = _error(exc)
        log.info("maps %s: %s", name, out[name])
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------------------------------
# 4. torch.compile, in a subprocess per mode
# --------------------------------------------------------------------------------------------------

_COMPILE_SCRIPT = r"""
import json, sys, time, dataclasses
import torch
mode = None if sys.argv[1] == "default" else sys.argv[1]
h, w = int(sys.argv[2]), int(sys.argv[3])
torch.backends.cudnn.benchmark = True
from sv_engine.stablevideo.model_source import load_components
from sv_engine.export.registry import build_specs
from sv_engine.export.unet_controlnet import _FusedUNetControlNet
from sv_engine.engine.torch_backend import CudaGraphModel
dev = torch.device("cuda")
c = load_components(dev, random_full=True, precision="fp16")
spec = build_specs(c, None, names=["unet_controlnet_canny"], precision="fp16", device=dev)["unet_controlnet_canny"]
source = spec.model_source()
x = spec.sample_inputs("opt", device=dev, h=h, w=w)
names = spec.input_names()
module = _FusedUNetControlNet(c.unet, c.controlnet_canny).eval().to(memory_format=torch.channels_last)
with torch.inference_mode():
    ref = module(*[x[n] for n in names])[0].float()
compiled = torch.compile(module, mode=mode, dynamic=False, fullgraph=False)
t0 = time.perf_counter()
with torch.inference_mode():
    compiled(*[x[n] for n in names])
torch.cuda.synchronize()
compile_s = time.perf_counter() - t0
model = CudaGraphModel(dataclasses.replace(source, module=compiled), dev, compiled)
y = model(**x)["noise_pred"].float()
for _ in range(3):
    model(**x)
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(20):
    model(**x)
e.record()
torch.cuda.synchronize()
art = torch.compiler.save_cache_artifacts()
print("COMPILE " + json.dumps({
    "mode": sys.argv[1], "shape": [8 * h, 8 * w], "compile_s": round(compile_s, 1),
    "ms": round(s.elapsed_time(e) / 20, 3),
    "cosine_vs_eager_native": round(torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0).item(), 6),
    "cache_artifacts_mb": round(len(art[0]) / 1e6, 1) if art else None,
}))
"""


def compile_variants(deadline: float, env: dict) -> dict:
    out: dict = {}
    for mode in ("default", "max-autotune-no-cudagraphs"):
        left = deadline - time.monotonic()
        if left < 60:
            out[mode] = {"status": "skipped", "reason": "time budget"}
            continue
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _COMPILE_SCRIPT, mode, "64", "64"],
                capture_output=True,
                text=True,
                timeout=left,
                env=env,
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("COMPILE ")), None)
            out[mode] = (
                {"status": "ok", **json.loads(line[8:])}
                if line
                else {"status": "error", "error": " | ".join(proc.stderr.strip().splitlines()[-5:])}
            )
        except subprocess.TimeoutExpired:
            out[mode] = {"status": "error", "error": f"timed out after {left:.0f} s"}
        out[mode]["process_s"] = round(time.perf_counter() - t0, 1)
        log.info("compile %s: %s", mode, out[mode])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=330.0)
    ap.add_argument("--parts", default="edit,step,maps,compile")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    parts = set(args.parts.split(","))
    result: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "commit": os.environ.get("SV_ENGINE_COMMIT", "unknown"),
        "date": time.strftime("%Y-%m-%d"),
        "weights": "full-size random (latency does not depend on weight values)",
    }

    def save() -> None:
        result["elapsed_s"] = round(time.monotonic() - t_start, 1)
        args.out.write_text(json.dumps(result, indent=1, default=str))

    tmp = Path(tempfile.mkdtemp(prefix="sv-engine-probe-"))
    os.environ["SV_ENGINE_CACHE"] = str(tmp / "cache")
    env = {**os.environ}
    from sv_engine.benchmarks.e2e import synth_data_dir
    from sv_engine.stablevideo.model_source import load_components

    if "maps" in parts:  # first: the NLA kernels need the GPU to themselves
        try:
            result["nla_maps"] = maps_variants(t_start + 80)
        except Exception as exc:  # noqa: BLE001
            result["nla_maps"] = _error(exc)
        save()
    components = load_components(torch.device("cuda"), random_full=True, precision="fp16")
    data_dir = synth_data_dir(tmp, 70, 432, 768)
    shapes = {"512x512": (64, 64)}
    if "edit" in parts:
        try:
            result["edit"] = edit_variants(components, data_dir, deadline - 150)
            calls = next((v["calls"] for v in result["edit"].values() if isinstance(v, dict) and "calls" in v), {})
            for key, kind in (("fg unet_controlnet", "keyframe"), ("bg unet_controlnet", "background")):
                counts = {k: v["calls"] for k, v in calls.items() if k.startswith(key)}
                if counts:
                    shape = json.loads(max(counts, key=counts.get)[len(key) :])
                    shapes[kind] = (shape[-2], shape[-1])
        except Exception as exc:  # noqa: BLE001
            result["edit"] = _error(exc)
        save()
    if "step" in parts:
        try:
            result["step"] = step_variants(components, shapes, deadline - 120)
        except Exception as exc:  # noqa: BLE001
            result["step"] = _error(exc)
        save()
    del components
    torch.cuda.empty_cache()
    if "compile" in parts:
        result["compile"] = compile_variants(deadline, env)
        save()
    save()
    print(json.dumps(result, indent=1, default=str)[-8000:])


if __name__ == "__main__":
    main()
