"""What the UNet+ControlNet step pays the first time it meets a new latent shape, per cuDNN API.

    python -m sv_engine.benchmarks.new_shape --out new-shape.json

A cold edit's keyframe diffusion took 4-5 s against 1.7 s warm on an H200, about 1 s per clip shape
(two keyframe shapes and the background's; benchmarks/results/first-use-nvidia-h200-*): the warm-up
calls and the capture of a new shape's CUDA graph. The same is paid by a warm service's first edit of
a clip of a new size. Each variant runs in its own process (the cuDNN API is chosen when torch
loads): the full-size random fp16 UNet+canny ControlNet through the GPU default (CUDA graphs,
channels-last), first warmed at a 512x512 image so that the process-wide one-offs (libraries,
kernels) are paid, then per new shape: the first call (warm-up calls + capture) and the replayed
step, and the same shapes eager (its first call and its step), so a faster first call is not bought
with a slower step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: name -> (environment of the child process, eager calls before a capture, also time eager steps).
VARIANTS = {
    "default (cuDNN v8 API, 1 call before a capture)": ({}, 1, True),
    "cuDNN v7 API": ({"TORCH_CUDNN_V8_API_DISABLED": "1"}, 1, True),
    "2 calls before a capture": ({}, 2, False),
}
#: Latent (h, w) of the benchmark clip's shapes: the two keyframe crops and the background atlas.
NEW_SHAPES = ((64, 112), (64, 120), (72, 64))


def _sync_s(device: torch.device, fn) -> float:  # noqa: ANN001 - a call without arguments
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _step_at(step, h: int, w: int, device: torch.device):  # noqa: ANN001, ANN202 - the step, a call
    """One CFG step (batch 2) at latent ``h`` x ``w`` with random inputs, as a call without arguments."""
    latent = torch.randn(2, 4, h, w, device=device, dtype=torch.float16)
    control = torch.rand(2, 3, 8 * h, 8 * w, device=device, dtype=torch.float16)
    emb = torch.randn(2, 77, 768, device=device, dtype=torch.float16)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    return lambda: step(latent, t, emb, control, 1.0)


def child(mode: str, warmup_calls: int) -> dict:
    """In a fresh process (the variant's): the step's first call and steady time per new shape, with
    ``mode`` "graphs" (the GPU default, ``warmup_calls`` eager calls before each capture) or "eager"
    (channels-last, no graphs)."""
    from sv_engine.engine.registry import TorchOptions
    from sv_engine.engine.torch_backend import CudaGraphModel
    from sv_engine.export.runtime import accelerate
    from sv_engine.stablevideo.model_source import to_edit_precision
    from sv_engine.stablevideo.models.tiny import build_random_components

    CudaGraphModel.WARMUP_CALLS = warmup_calls
    device = torch.device("cuda")
    components = to_edit_precision(build_random_components(0, device=device), device, torch.float16)
    models = ("unet_controlnet_canny",)
    options = TorchOptions(channels_last=True, cuda_graphs=mode == "graphs")
    step = accelerate(components, "torch", "fp16", device, models=models, options=options).unet_controlnet["canny"]
    with torch.inference_mode():
        process_first = _sync_s(device, _step_at(step, 64, 64, device))
        for _ in range(3):
            _step_at(step, 64, 64, device)()
        rows = {}
        for h, w in NEW_SHAPES:
            fn = _step_at(step, h, w, device)
            first = _sync_s(device, fn)
            steady = sorted(_sync_s(device, fn) for _ in range(10))[5]
            rows[f"{8 * h}x{8 * w}"] = {"first_call_s": round(first, 3), "step_ms": round(steady * 1e3, 2)}
    log.info("%s: %s", mode, rows)
    return {
        "cudnn_version": torch.backends.cudnn.version(),
        "process_first_call_s": round(process_first, 3),
        "new_shapes": rows,
    }


def _run_child(out: Path, mode: str, env: dict[str, str], warmup_calls: int, timeout_s: float) -> dict:
    part = out.with_name(f"{out.stem}-child.json")
    cmd = [sys.executable, "-m", "sv_engine.benchmarks.new_shape", "--child", mode, "--out", str(part)]
    cmd += ["--warmup-calls", str(warmup_calls)]
    try:
        proc = subprocess.run(cmd, env={**os.environ, **env}, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": "timed out"}
    if proc.returncode != 0 or not part.is_file():
        return {"status": "error", "error": proc.stderr[-2000:]}
    result = json.loads(part.read_text())
    part.unlink()
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--child", choices=("graphs", "eager"), help=argparse.SUPPRESS)
    ap.add_argument("--warmup-calls", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--timeout-s", type=float, default=150.0, help="per child process")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        args.out.write_text(json.dumps(child(args.child, args.warmup_calls), indent=1))
        return
    from sv_engine.benchmarks.timing import environment

    result: dict = {"environment": environment("cuda"), "what": __doc__.splitlines()[0], "variants": {}}
    for name, (env, warmup_calls, eager) in VARIANTS.items():
        result["variants"][name] = {"env": env, "calls_before_capture": warmup_calls}
        for mode in ("graphs", "eager") if eager else ("graphs",):
            result["variants"][name][mode] = _run_child(args.out, mode, env, warmup_calls, args.timeout_s)
            args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["variants"], indent=1))


if __name__ == "__main__":
    main()
