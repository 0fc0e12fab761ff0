"""Timing and environment helpers for ``sv-engine bench``.

* :func:`time_fn`: warm-up, then N timed calls — CUDA events around each call on a GPU, host
  ``perf_counter`` on the CPU — summarised as median / p90 / min milliseconds, plus the peak GPU
  memory of the calls (``torch.cuda.max_memory_allocated`` after a reset).
* :func:`environment`: GPU, driver, CUDA, library versions, git commit, date.
* :func:`result_filename`: ``<gpu>-<date>-<commit>.json`` for ``benchmarks/results/``.
* :func:`instrument_denoisers`: a timing wrapper around every network call of a pipeline's two halves.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RANDOM_WEIGHTS_NOTE = "random weights: latency does not depend on weight values"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: The network calls of a :class:`~sv_engine.stablevideo.models.diffusion.ControlledDenoiser`.
DENOISER_CALLS = ("unet_controlnet", "text_encode", "vae_encode", "vae_decode")


def instrument_denoisers(pipeline: object, wrap: Callable[[str, Callable], Callable]) -> None:
    """Replaces each network call of the pipeline's fg and bg denoisers by ``wrap(name, call)`` (names
    like ``"fg unet_controlnet"``); each wrapper keeps what the pipeline reads off the call it wraps:
    ``thread_safe`` (before it runs the background beside the keyframe loop) and ``prepare`` (the later
    keyframes' sizes captured ahead, ControlledDenoiser.prepare)."""
    for side, denoiser in (("fg", pipeline.fg_denoiser), ("bg", pipeline.bg_denoiser)):  # type: ignore[attr-defined]
        for attr in DENOISER_CALLS:
            call = getattr(denoiser, attr)
            wrapped = wrap(f"{side} {attr}", call)
            wrapped.thread_safe = getattr(call, "thread_safe", True)  # type: ignore[attr-defined]
            if hasattr(call, "prepare"):
                wrapped.prepare = call.prepare  # type: ignore[attr-defined]
            setattr(denoiser, attr, wrapped)


def summarize(times_ms: list[float]) -> dict:
    """median / p90 (nearest rank) / min / mean of a list of milliseconds."""
    if not times_ms:
        raise ValueError("no timings to summarise")
    ordered = sorted(times_ms)
    p90_index = min(len(ordered) - 1, max(0, math.ceil(0.9 * len(ordered)) - 1))
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[p90_index],
        "min_ms": ordered[0],
        "mean_ms": statistics.fmean(ordered),
        "repeat": len(ordered),
    }


def format_ms(ms: float | None, small_digits: int = 3) -> str:
    """Human milliseconds: "1.24 s", "73.2 ms", "0.376 ms" (``small_digits`` decimals under 10 ms)."""
    if ms is None:
        return "–"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.{small_digits}f} ms"


def time_fn(fn: Callable[[], object], device: torch.device | str, repeat: int, warmup: int = 1) -> dict:
    """Times ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed ones (CUDA events on a GPU).

    Returns :func:`summarize` of the per-call milliseconds plus ``warmup`` and ``peak_mem_mb`` (the
    peak GPU memory allocated by torch during the timed calls; ``None`` on the CPU).
    """
    device = torch.device(device)
    repeat = max(1, int(repeat))
    for _ in range(max(0, int(warmup))):
        fn()
    _sync(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    for _ in range(repeat):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    out = summarize(times)
    out["warmup"] = int(warmup)
    out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return out


def slowest_imports(importtime_stderr: str, top: int) -> list[list]:
    """``[[module, cumulative seconds], ...]``, the ``top`` slowest imports of a ``python -X importtime``
    run's stderr (its module names keep the nesting indent)."""
    imports = []
    for row in importtime_stderr.splitlines():
        parts = row.split("|")
        if row.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            imports.append((int(parts[1]), parts[2].rstrip()))
    return [[name, round(us / 1e6, 3)] for us, name in sorted(imports, reverse=True)[:top]]


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse --short HEAD`` of the source tree; ``$SV_ENGINE_COMMIT`` where the tree has no .git
    (a copy sent to a GPU machine); ``"unknown"`` otherwise."""
    if os.environ.get("SV_ENGINE_COMMIT"):
        return os.environ["SV_ENGINE_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=str(cwd or Path(__file__).resolve().parent),
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - an optional runtime that fails to import is "not installed"
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
    return line or None


def environment(
    device: torch.device | str, now: _dt.datetime | None = None, note: str | None = RANDOM_WEIGHTS_NOTE
) -> dict:
    """Everything needed to compare two result files: hardware, software versions, commit, date (the one
    environment record of every benchmark's JSON); ``note``: what the reader must know (the models'
    random weights, by default)."""
    device = torch.device(device)
    now = now or _dt.datetime.now(_dt.UTC)
    env = {
        "device": str(device),
        "gpu": None,
        "gpu_memory_gb": None,
        "capability": None,
        "driver": None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "tensorrt": _version("tensorrt"),
        "nvrtc": _nvrtc_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "date": now.strftime("%Y-%m-%d"),
        "datetime": now.isoformat(timespec="seconds"),
        "argv": list(sys.argv),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if note is not None:
        env["note"] = note
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            driver=_nvidia_driver(),
        )
    return env


def _nvrtc_version() -> str | None:
    try:
        from cuda.bindings import nvrtc

        _, major, minor = nvrtc.nvrtcVersion()
    except Exception:  # noqa: BLE001 - not installed, or no CUDA runtime: not part of this run
        return None
    return f"{major}.{minor}"


def slug(text: str) -> str:
    """Lower-case, ``[a-z0-9]`` runs joined by ``-`` (``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``)."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "unknown"


def result_filename(env: dict) -> str:
    """``<gpu>-<date>-<commit>.json``; a CPU run uses ``cpu`` as the GPU name."""
    gpu = env.get("gpu") or "cpu"
    return f"{slug(gpu)}-{env.get('date') or 'unknown-date'}-{slug(env.get('git_commit') or 'unknown')}.json"
