"""Where a new process's first edit loses its time (issue 16's cold path): every network call and GPU op of
the edit timed call by call in a fresh process, the first edit against the second.

    python -m sv_engine.benchmarks.first_use --out first-use.json [--backend torch-cuda-graph] [--device cpu]

A cold edit's first edit took 11.5 s on the H200 against 1.85 s warm (benchmarks/results/cold-start-*):
its one-offs (CUDA graph captures, cuDNN and cuBLAS plans, lazily loaded kernels, NVRTC) sit inside the
calls that first meet a shape. Here each call of the pipeline's networks (per denoiser: the UNet+ControlNet
step, text encoder, VAE encoder and decoder), its kernels (warp, splat, render), the depth model and the
video's opening are wrapped with a device synchronisation on each side, so each call's wall time is its
own; ``one_off_s`` of a call and input shape = its seconds in the first edit less as many of its median
in the second (all of them for a call the second edit does not make, e.g. the depth, kept per video).
The background runs after the keyframe loop (not beside it), so no call waits for the other half's.
The rest of the first edit's extra time (Python, allocations between calls) is ``unattributed_s``.

Setup as in benchmarks/cold_start.py (one process): a 70-frame 768×432 clip with a random NLA and the
full-size random fp16 models saved in the diffusers layout (``--device cpu``: the tiny models, an 8-frame
192×128 clip, 4 steps).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sv_engine.benchmarks.timing import instrument_denoisers

log = logging.getLogger(__name__)

#: (module, attribute) of the functions timed besides the denoisers' networks: the kernels, the depth
#: model and the video's opening, where the pipeline looks them up.
WRAPPED_FUNCTIONS = (
    ("sv_engine.stablevideo.foreground", "warp_atlas"),
    ("sv_engine.stablevideo.foreground", "splat_to_atlas"),
    ("sv_engine.stablevideo.render", "render_composite"),
    ("sv_engine.stablevideo.background", "estimate_depth"),
)


def _shape_of(args: tuple) -> str:
    """The first array argument's shape (a tensor, or the depth model's numpy image), as ``"2x4x64x112"``."""
    return next(("x".join(map(str, a.shape)) for a in args if hasattr(a, "shape")), "")


class CallTimes:
    """Wall seconds of every wrapped call, per edit, keyed by name and first input's shape."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.edit = 0
        self.rows: list[tuple[int, str, str, float]] = []

    def _sync(self) -> None:
        # The calling thread's stream, not the device: a device-wide sync is refused while another thread
        # captures a CUDA graph (the background's, or a later keyframe's captured ahead).
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            self.rows.append((self.edit, name, _shape_of(args), time.perf_counter() - t0))
            return out

        return timed

    def instrument(self, pipeline: Any) -> None:
        import importlib

        instrument_denoisers(pipeline, self.wrap)
        for module_name, attr in WRAPPED_FUNCTIONS:
            module = importlib.import_module(module_name)
            setattr(module, attr, self.wrap(attr, getattr(module, attr)))
        pipeline.sessions.open = self.wrap("open video", pipeline.sessions.open)

    def one_offs(self) -> list[dict]:
        """Per (call, shape): calls and seconds in the first edit, the median in the second, and the one-off."""
        first: dict[tuple[str, str], list[float]] = {}
        warm: dict[tuple[str, str], list[float]] = {}
        for edit, name, shape, seconds in self.rows:
            (first if edit == 0 else warm).setdefault((name, shape), []).append(seconds)
        out = []
        for (name, shape), times in first.items():
            later = warm.get((name, shape))
            typical = statistics.median(later) if later else 0.0  # a call the second edit does not make
            out.append(
                {
                    "call": name,
                    "shape": shape,
                    "calls": len(times),
                    "first_call_s": round(times[0], 4),
                    "first_edit_s": round(sum(times), 4),
                    "warm_call_s": round(typical, 4),
                    "one_off_s": round(max(0.0, sum(times) - typical * len(times)), 4),
                }
            )
        return sorted(out, key=lambda r: -r["one_off_s"])


def child(data_dir: Path, weights: Path, device_name: str, backend: str, steps: int, tiny: bool) -> dict:
    """In the fresh process: build the pipeline, two edits with every call timed; the JSON-ready result."""
    from sv_engine.benchmarks.e2e import edit_params
    from sv_engine.engine.registry import resolve_choice
    from sv_engine.export.compose import RuntimeConfig, build_pipeline

    device = torch.device(device_name)
    choice = resolve_choice(backend)
    config = RuntimeConfig(
        weights=str(weights),
        precision="fp16" if device.type == "cuda" else "fp32",
        device=device_name,
        backend=choice.backend,
        options=choice.options,
        overlap_background=False,
    )
    runtime = build_pipeline(config, open_videos=(data_dir,))  # as `sv-engine edit` builds it
    times = CallTimes(device)
    times.instrument(runtime.pipeline)
    params = edit_params(steps, 0.8, tiny)
    seconds = []
    for edit in range(2):
        times.edit = edit
        t0 = time.perf_counter()
        runtime.pipeline.edit(data_dir, params)
        times._sync()
        seconds.append(time.perf_counter() - t0)
    calls = times.one_offs()
    attributed = sum(r["one_off_s"] for r in calls)
    return {
        "build_phases_s": {k: round(v, 3) for k, v in runtime.seconds_per_phase.items()},
        "first_edit_s": round(seconds[0], 3),
        "second_edit_s": round(seconds[1], 3),
        "one_offs_s": round(attributed, 3),
        "unattributed_s": round(seconds[0] - seconds[1] - attributed, 3),
        "calls": calls,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backend", help="as `sv-engine edit --backend` (default: torch-cuda-graph; torch on a CPU)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--timeout-s", type=float, default=300.0)
    ap.add_argument("--child", nargs=2, type=Path, metavar=("DATA_DIR", "WEIGHTS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tiny = args.device == "cpu"
    steps = 4 if tiny else 20
    args.backend = args.backend or ("torch" if tiny else "torch-cuda-graph")
    if args.child:
        print("FIRST_USE " + json.dumps(child(*args.child, args.device, args.backend, steps, tiny)))
        return
    from sv_engine.benchmarks.cold_start import setup_clip_and_weights
    from sv_engine.benchmarks.timing import environment

    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="sv-engine-first-use-"))
    os.environ["SV_ENGINE_CACHE"] = str(tmp / "cache")  # the maps cached as a warm edit leaves them
    data_dir, weights = setup_clip_and_weights(tmp, device, tiny)
    cmd = [sys.executable, "-m", "sv_engine.benchmarks.first_use", "--device", args.device, "--out", str(args.out)]
    cmd += ["--backend", args.backend, "--child", str(data_dir), str(weights)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, cwd=tempfile.gettempdir())
    line = next((x for x in proc.stdout.splitlines() if x.startswith("FIRST_USE ")), None)
    result: dict = {
        "environment": environment(device),
        "what": "a fresh process's first edit against its second, call by call (benchmarks/first_use.py)",
        "backend": args.backend,
        "params": {"steps": steps, "models": "tiny random" if tiny else "full-size random fp16"},
    }
    if line is None:
        result["error"] = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
    else:
        result.update(json.loads(line[len("FIRST_USE ") :]))
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "calls"}, indent=1, default=str))
    for row in result.get("calls", [])[:12]:
        print(row)


if __name__ == "__main__":
    main()
