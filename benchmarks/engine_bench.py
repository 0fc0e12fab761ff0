"""Persistent engines and latency on one GPU (issue 16), variants side by side in one process and call.

    python -m sv_engine.benchmarks.engine_bench --out engines.json [--budget-s 540]

1. ``sv-engine build --backend aoti --random-full`` in a fresh process (build time, package sizes), then
   again (must be a no-op: its time is what a second build costs);
2. the UNet+ControlNet CFG step at 512² and 512×768 (fp16, full-size random weights): eager torch,
   torch from CUDA graphs + NHWC (the GPU default), the AOTInductor engine with and without CUDA
   graphs (cosine and max error against eager torch);
3. whole warm edits (70 frames 768×432, 3 keyframes × 20 steps + background, seed 0): eager fp16
   torch (the parity reference), AOTInductor, the GPU default; PSNR of each against eager; per-stage
   seconds; peak GPU memory; the second open of an open video;
4. cold ``sv-engine edit`` in fresh processes on saved weights with the built engines: AOTInductor and
   the GPU default, with the CLI report's phases.

Every part's failure is recorded, not raised, and the JSON is rewritten after each part.
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


def build_cli(weights_flag: list[str], env: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "sv_engine", "build", "--backend", "aoti", *weights_flag, "--precision", "fp16"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"command": cmd, "returncode": None, "error": f"timed out after {timeout:.0f} s"}
    return {
        "command": cmd,
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 2),
        "output_tail": (proc.stdout + proc.stderr).strip().splitlines()[-14:],
    }


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
        "autocast-bf16 (the current)": lambda: _autocast(torch.bfloat16, field, config, device),
        "autocast-fp16": lambda: _autocast(torch.float16, field, config, device),
    }
    for chunk in (1 << 15, 1 << 16, 1 << 17, 1 << 18):
        fast = FastMaps(field, torch.float16, chunk)
        variants[f"fused fp16 + CUDA graph, chunks of 2^{chunk.bit_length() - 1}"] = lambda fast=fast: fast(config)
    fast_bf16 = FastMaps(field, torch.bfloat16, 1 << 16)
    variants["fused bf16 + CUDA graph, chunks of 2^16"] = lambda: fast_bf16(config)
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


def _autocast(dtype: torch.dtype, field, config, device):
    from sv_engine.stablevideo.maps import compute_maps

    with torch.autocast("cuda", dtype=dtype):
        return compute_maps(field, config, device, progress=False)


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


def warm_edits(weights: Path | None, data_dir: Path, device: torch.device, variants: list[str]) -> dict:
    """One pipeline per variant on the same saved weights; the first edit warms, the second is timed;
    PSNR against the first variant (the reference). ``weights`` None: the full-size random models."""
    from sv_engine.benchmarks.e2e import edit_params
    from sv_engine.export.compose import RuntimeConfig, build_pipeline

    params = edit_params(20, 0.8, tiny=False)
    out: dict = {}
    frames: dict[str, np.ndarray] = {}
    for variant in variants:
        try:
            backend, graphs = {
                "torch-eager": ("torch", False),
                "torch-eager, fp32 maps": ("torch", False),
                "torch-cuda-graph": ("torch", None),
                "torch-cuda-graph, fp32 maps": ("torch", None),
            }.get(variant, (variant, None))
            _fp32_maps(variant.endswith("fp32 maps"))
            config = RuntimeConfig(
                weights=str(weights) if weights else None,
                random_full=weights is None,
                precision="fp16",
                device=str(device),
                backend=backend,
                cuda_graphs=graphs,
            )
            runtime = build_pipeline(config)
            pipeline = runtime.pipeline
            load_s = runtime.seconds_per_phase["load models"]
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
            frames[variant] = result.frames
            out[variant] = {
                "status": "ok",
                "load_s": round(load_s, 2),
                "prepare_backend_s": round(prepare_s, 2),
                "first_edit_s": round(first_s, 3),
                "first_timings": first.timings,
                "warm_s": round(warm_s, 3),
                "timings": result.timings,
                "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
            if variant != variants[0] and variants[0] in frames:
                out[variant][f"psnr_vs_{variants[0]}_db"] = _psnr(result.frames, frames[variants[0]])
            log.info("warm %s: %s", variant, {k: v for k, v in out[variant].items() if "timings" not in k})
            del pipeline, runtime, result, first
        except Exception as exc:  # noqa: BLE001
            out[variant] = _error(exc)
        torch.cuda.empty_cache()
    return out


def _fp32_maps(on: bool) -> None:
    """Open videos with the fp32 NLA maps (the reference) instead of the GPU's FastMaps."""
    from sv_engine.stablevideo import maps, session
    from sv_engine.stablevideo.nla import NLAField

    def fp32(video, device):  # noqa: ANN001, ANN202
        return maps.load_or_compute_maps(video, device, field=NLAField(video.nla).to(device).eval())

    session.load_or_compute_maps = fp32 if on else maps.load_or_compute_maps


def cold_edit(weights: Path, data_dir: Path, backend: str, tmp: Path, env: dict, timeout: float) -> dict:
    from sv_engine.benchmarks.e2e import cold_command, cold_phases

    video = tmp / f"cold-{backend}.mp4"
    cmd = cold_command(data_dir, weights, video, torch.device("cuda"), False, 20, 0.8, backend)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
    seconds = time.perf_counter() - t0
    res = {"returncode": proc.returncode, "seconds": round(seconds, 2), "video_written": video.is_file()}
    if proc.returncode != 0 or not video.is_file():
        return {**res, "status": "error", "error": " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])}
    return {
        **res,
        "status": "ok",
        "seconds_per_phase": cold_phases(video.with_name(f"{video.stem}_report.json"), seconds),
    }


VIEW_KEYS = ("environment", "stages", "e2e")


def bench_view(result: dict) -> dict:
    """The measurements in ``sv-engine bench``'s result form (``environment``, ``stages``, ``e2e``), so
    the README table (benchmarks.readme_table) takes its rows from them: the NLA maps and the whole
    edit with the GPU default (warm, cold, peak memory)."""
    from sv_engine.benchmarks.stages import TARGETS_MS

    view: dict = {
        "environment": {
            "gpu": result.get("gpu"),
            "torch": result.get("torch"),
            "cuda": result.get("cuda"),
            "git_commit": result.get("commit"),
            "date": result.get("date"),
            "datetime": result.get("date"),
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
    warm = next((w.get("torch-cuda-graph") for w in (result.get("warm_edit_maps"), result.get("warm_edit")) if w), None)
    cold = (result.get("cold_edit") or {}).get("torch-cuda-graph")
    if warm and warm.get("status") == "ok" and cold:  # the table's rows come as a set: warm, cold, peak
        view["e2e"] = {
            "warm": {**warm, "backend": "torch-cuda-graph"},
            "cold": cold,
            "targets": {
                "warm_met": warm["warm_s"] <= 0.6,
                "cold_met": bool(cold and cold.get("status") == "ok" and cold["seconds"] <= 4.0),
                "peak_mem_met": warm["peak_mem_gb"] <= 8.0,
            },
        }
    return view


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--parts", default="maps,load,build,steps,warm,cold")
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
        "weights": "full-size random (latency does not depend on weight values)",
    }

    def save() -> None:
        args.out.write_text(json.dumps({**result, **bench_view(result)}, indent=1, default=str))

    tmp = Path(tempfile.mkdtemp(prefix="sv-engine-bench-"))
    cache = tmp / "cache"
    env = {**os.environ, "SV_ENGINE_CACHE": str(cache)}
    os.environ["SV_ENGINE_CACHE"] = str(cache)  # this process's engines and maps: the same cache
    from sv_engine.benchmarks.e2e import synth_data_dir
    from sv_engine.stablevideo.model_source import load_components
    from sv_engine.stablevideo.models.loaders import save_components

    data_dir = synth_data_dir(tmp, 70, 432, 768)
    weights: Path | None = None
    if parts & {"load", "build", "steps", "cold"}:  # the parts that load saved weights in other processes
        weights = tmp / "weights"
        components = load_components(device, random_full=True, precision="fp16")
        save_components(components, weights)
        del components
        torch.cuda.empty_cache()
    if "maps" in parts:
        try:
            result["nla_maps"] = maps_variants(device)
        except Exception as exc:  # noqa: BLE001
            result["nla_maps"] = _error(exc)
        save()
    if "load" in parts:
        try:
            result["load"] = load_phases(weights, env)
        except Exception as exc:  # noqa: BLE001
            result["load"] = _error(exc)
        save()
    if "build" in parts:
        result["build"] = build_cli(["--weights", str(weights)], env, max(60.0, deadline - time.monotonic() - 200))
        if result["build"]["returncode"] == 0:
            result["build_again"] = build_cli(["--weights", str(weights)], env, 120)
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
            weights, data_dir, device, ["torch-eager, fp32 maps", "torch-cuda-graph", "torch-cuda-graph, fp32 maps"]
        )
        save()
    if "warm" in parts and deadline - time.monotonic() > 100:
        result["warm_edit"] = warm_edits(
            weights, data_dir, device, ["torch-eager", *(["aoti"] if aoti else []), "torch-cuda-graph"]
        )
        save()
    if "cold" in parts:
        result["cold_edit"] = {}
        for backend in ("aoti", "torch-cuda-graph") if aoti else ("torch-cuda-graph",):
            left = deadline - time.monotonic()
            if left < 40:
                result["cold_edit"][backend] = {"status": "skipped", "reason": "time budget"}
                continue
            result["cold_edit"][backend] = cold_edit(weights, data_dir, backend, tmp, env, left - 5)
            save()
    save()
    print(json.dumps({k: v for k, v in result.items()}, indent=1, default=str)[-6000:])


if __name__ == "__main__":
    main()
