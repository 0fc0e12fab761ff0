"""End-to-end timing of a whole StableVideo edit for ``sv-engine bench --e2e``.

* warm: models loaded once, ``pipeline.edit`` called twice, the second timed (maps cached by the
  first), with its per-stage breakdown (``EditResult.timings``) and peak GPU memory;
* cold: process start to written video: the real ``python -m sv_engine edit --weights DIR`` in a
  fresh process, on the warm run's models saved in the diffusers folder layout (what a user's
  weights look like; fp16 on a GPU), after the warm edit so the maps and engines are cached.

The data folder: the bundled demo clip with ``--tiny`` when it is present, else a synthesised one
(random frames + random NLA weights via ``write_video_data``) of the benchmark's frames and size.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

FG_PROMPT = "a golden retriever, oil painting"
BG_PROMPT = "a snowy mountain road at sunset"


def synth_data_dir(root: Path, frames: int, height: int, width: int, seed: int = 0) -> Path:
    """A StableVideo data folder of ``frames`` random frames ``width``x``height`` with random NLA weights."""
    from sv_engine.stablevideo.data import write_video_data
    from sv_engine.stablevideo.nla import NLAModel

    rng = np.random.default_rng(seed)
    # Smooth-ish frames (a gradient plus noise) keep the JPEGs small and canny edges sparse.
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(1, width - 1), ys * 255 // max(1, height - 1), (xs + ys) % 256], -1)
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        noise = rng.integers(0, 32, size=(height, width, 3))
        clip[t] = ((base + 3 * t + noise) % 256).astype(np.uint8)
    return write_video_data(root / "benchclip", clip, NLAModel.random(seed=seed + 1))


def pick_data_dir(
    tmp: Path, tiny: bool, frames: int, height: int, width: int, data_dir: Path | None = None
) -> tuple[Path, str]:
    if data_dir is not None:
        return Path(data_dir), "given"
    if tiny:
        try:
            from sv_engine.stablevideo.demo import demo_data_dir

            demo = demo_data_dir()
            if (demo / "config.json").is_file() and (demo / "checkpoint").is_file():
                return demo, "bundled demo clip"
        except Exception:  # noqa: BLE001 - the demo clip is optional for the benchmark
            pass
    return synth_data_dir(tmp, frames, height, width), f"synthesised {frames} frames {width}x{height}, random NLA"


def runtime_config(
    backend: str, device: torch.device, tiny: bool, weights: Path | None = None, engine_dir: Path | None = None
):
    """The warm edit's pipeline: the UNet+ControlNet steps on ``backend`` (a registry name or named
    choice, with its registry options: ``torch`` stays eager, ``torch-cuda-graph`` is ``sv-engine
    edit``'s GPU default), fp16 on a GPU."""
    from sv_engine.engine.registry import resolve_choice
    from sv_engine.export.compose import RuntimeConfig
    from sv_engine.export.spec import DEFAULT_SHAPES, TINY_SHAPES

    choice = resolve_choice(backend or "torch")
    return RuntimeConfig(
        tiny=tiny and weights is None,
        random_full=not tiny and weights is None,
        weights=str(weights) if weights is not None else None,
        precision="fp16" if device.type == "cuda" else "fp32",
        device=str(device),
        backend=choice.backend,
        options=choice.options,
        models=("unet_controlnet_canny", "unet_controlnet_depth"),
        shapes=TINY_SHAPES if tiny else DEFAULT_SHAPES,
        cache_dir=str(engine_dir) if engine_dir is not None and choice.backend == "trt" else None,
    )


def edit_params(steps: int, strength: float, tiny: bool, seed: int = 0):
    """3 default keyframes, background edit; tiny models generate at 64 px (SD's 512 is minutes on a CPU)."""
    from sv_engine.stablevideo.params import EditParams

    res = 64 if tiny else 512
    return EditParams(
        FG_PROMPT,
        BG_PROMPT,
        steps=steps,
        strength=strength,
        seed=seed,
        edit_background=True,
        image_resolution=res,
        depth_resolution=res,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_edit(
    data_dir: Path,
    device: torch.device,
    tiny: bool,
    steps: int,
    strength: float,
    backend: str = "torch",
    engine_dir: Path | None = None,
    profile: bool = False,
    save_weights: Path | None = None,
    weights: Path | None = None,
) -> tuple[dict, np.ndarray]:
    """The warm timing on ``weights`` (else random models) and the warm edit's frames; ``save_weights``:
    also write the models there (diffusers layout) for the cold run."""
    from sv_engine.export.compose import build_pipeline

    config = runtime_config(backend, device, tiny, weights, engine_dir)
    runtime = build_pipeline(config)
    pipeline, components, precision = runtime.pipeline, runtime.components, config.precision
    load_s = runtime.seconds_per_phase["load models"]
    params = edit_params(steps, strength, tiny)
    _sync(device)
    t0 = time.perf_counter()
    first = pipeline.edit(data_dir, params)
    _sync(device)
    first_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = pipeline.edit(data_dir, params)
    _sync(device)
    warm_s = time.perf_counter() - t0
    out = {
        "status": "ok",
        "backend": backend,
        "precision": precision,
        "load_s": round(load_s, 3),
        "first_edit_s": round(first_s, 4),
        "first_timings": first.timings,
        "warm_s": round(warm_s, 4),
        "timings": result.timings,
        "keyframes": result.keyframes,
        "frames_shape": list(result.frames.shape),
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "overlapped_background": result.overlapped_background,
    }
    if profile:
        from sv_engine.benchmarks.torch_profile import profile_call

        out["profile"] = profile_call(functools.partial(pipeline.edit, data_dir, params), device)
    if save_weights is not None:
        from sv_engine.stablevideo.models.loaders import save_components

        save_components(components, save_weights)
    frames = result.frames
    del pipeline, components, result, first
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out, frames


def cold_command(
    data_dir: Path,
    weights: Path,
    out: Path,
    device: torch.device,
    tiny: bool,
    steps: int,
    strength: float,
    backend: str = "torch",
) -> list[str]:
    """``sv-engine edit`` with the warm run's parameters (seed 0, fp16 on a GPU) on saved weights."""
    params = edit_params(steps, strength, tiny)
    return [
        sys.executable,
        "-m",
        "sv_engine",
        "edit",
        str(data_dir),
        "--weights",
        str(weights),
        "--fg-prompt",
        params.fg_prompt,
        "--bg-prompt",
        params.bg_prompt,
        "--steps",
        str(steps),
        "--strength",
        str(strength),
        "--seed",
        str(params.seed),
        "--image-resolution",
        str(params.image_resolution),
        "--precision",
        "fp16" if device.type == "cuda" else "fp32",
        *_backend_flags(backend),
        "--device",
        device.type,
        "--out",
        str(out),
        "--force",
    ]


def _backend_flags(backend: str) -> list[str]:
    if backend in ("torch", "torch-cuda-graph"):  # the CLI's torch on a GPU replays CUDA graphs unless told not to
        return ["--backend", "torch", "--cuda-graphs" if backend == "torch-cuda-graph" else "--no-cuda-graphs"]
    return ["--backend", backend]


def cold_edit(
    data_dir: Path,
    weights: Path,
    tmp: Path,
    device: torch.device,
    tiny: bool,
    steps: int,
    strength: float,
    timeout: float,
    backend: str = "torch",
    env: dict[str, str] | None = None,
) -> dict:
    """``sv-engine edit`` in a fresh process (environment ``env``, default this one's), timed from
    before its start to its exit, with its report's phases."""
    out = tmp / "cold.mp4"
    cmd = cold_command(data_dir, weights, out, device, tiny, steps, strength, backend)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=max(1.0, timeout), env=env or os.environ.copy()
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s", "command": cmd}
    seconds = time.perf_counter() - t0
    res = {"command": cmd, "returncode": proc.returncode, "seconds": round(seconds, 3), "video_written": out.is_file()}
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        return {**res, "status": "error", "error": " | ".join(tail) or f"exit code {proc.returncode}"}
    report = out.with_name(f"{out.stem}_report.json")
    return {**res, "status": "ok", "seconds_per_phase": cold_phases(report, seconds), **first_edit_stages(report)}


#: A cold edit's seconds outside its report's phases: the process's exit, and (reports without the
#: CLI's own start-up phases) its start, imports and input checks.
OUTSIDE_PHASES = "outside the report's phases"


def cold_phases(report: Path, seconds: float) -> dict[str, float]:
    """Where a cold edit's seconds went: the CLI report's phases (from the process's start), and the
    rest (:data:`OUTSIDE_PHASES`)."""
    try:
        phases = json.loads(report.read_text())["seconds_per_phase"]
    except (OSError, ValueError, KeyError):
        return {}
    return {**{k: round(v, 3) for k, v in phases.items()}, OUTSIDE_PHASES: round(seconds - sum(phases.values()), 3)}


def first_edit_stages(report: Path) -> dict[str, dict[str, float]]:
    """``{"seconds_per_stage": ...}`` of a cold edit's report: its one (first) edit's stages; empty when unreadable."""
    try:
        stages = json.loads(report.read_text())["seconds_per_stage"]
    except (OSError, ValueError, KeyError):
        return {}
    return {"seconds_per_stage": {k: round(v, 3) for k, v in stages.items()}}


def run_e2e(
    device: torch.device,
    tiny: bool,
    frames: int,
    height: int,
    width: int,
    steps: int = 20,
    strength: float = 0.8,
    cold: bool = True,
    backends: Sequence[str] = ("torch",),
    data_dir: Path | None = None,
    deadline: float | None = None,
    engine_dir: Path | None = None,
    profile: bool = False,
    weights: Path | None = None,
) -> dict:
    """Warm and cold whole-edit timings per backend, side by side on the same clip and weights (each
    part's failure recorded, not raised); ``weights``: the user's models (else random ones, saved after
    the first warm edit for every cold one). ``warm`` / ``cold`` are the first backend's; with several,
    ``backends`` holds each one's, with the PSNR of its warm frames against the first's."""
    from sv_engine.benchmarks.stages import error_string
    from sv_engine.engine.parity import psnr

    result: dict = {
        "params": {
            "keyframes": 3,
            "steps": steps,
            "strength": strength,
            "edit_background": True,
            "image_resolution": 64 if tiny else 512,
            "backend": backends[0],
        }
    }
    with tempfile.TemporaryDirectory(prefix="sv-bench-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            data, how = pick_data_dir(tmp, tiny, frames, height, width, data_dir)
            from sv_engine.stablevideo.data import read_config

            c = read_config(data)
            result["data"] = {"source": how, "frames": c.num_frames, "width": c.resx, "height": c.resy}
        except Exception as exc:  # noqa: BLE001
            result["warm"] = result["cold"] = {"status": "error", "error": error_string(exc)}
            return result
        saved = tmp / "weights" if cold and weights is None else None
        per_backend: dict[str, dict] = {}
        reference: np.ndarray | None = None
        for backend in backends:
            row: dict = {}
            try:
                row["warm"], edited = warm_edit(
                    data,
                    device,
                    tiny,
                    steps,
                    strength,
                    backend,
                    engine_dir,
                    profile,
                    save_weights=saved if saved is not None and not saved.exists() else None,
                    weights=weights,
                )
                if reference is None:
                    reference = edited
                elif reference.shape == edited.shape:
                    row["psnr_vs_first_db"] = round(psnr(edited, reference), 2)
            except Exception as exc:  # noqa: BLE001
                log.warning("warm edit (%s) failed: %s", backend, error_string(exc))
                row["warm"] = {"status": "error", "error": error_string(exc)}
            row["cold"] = _cold_row(data, weights or saved, tmp, device, tiny, steps, strength, backend, cold, deadline)
            per_backend[backend] = row
    first = per_backend[backends[0]]
    result["warm"], result["cold"] = first["warm"], first["cold"]
    if len(backends) > 1:
        result["backends"] = per_backend
    return result


def _cold_row(
    data: Path,
    weights: Path | None,
    tmp: Path,
    device: torch.device,
    tiny: bool,
    steps: int,
    strength: float,
    backend: str,
    cold: bool,
    deadline: float | None,
) -> dict:
    if not cold:
        return {"status": "skipped", "reason": "--no-cold"}
    if weights is None or not weights.exists():
        return {"status": "skipped", "reason": "the warm edit (which saves the weights) failed"}
    if deadline is not None and deadline - time.monotonic() <= 0:
        return {"status": "skipped", "reason": "time budget exceeded"}
    timeout = 600.0 if deadline is None else deadline - time.monotonic()
    run_dir = tmp / f"cold-{backend}"
    run_dir.mkdir(exist_ok=True)
    return cold_edit(data, weights, run_dir, device, tiny, steps, strength, timeout, backend)
