"""Benchmark of ``sv-engine fit`` on CUDA: a synthetic 70-frame 768x432 clip with known ground truth
(textured square moving over a panning textured background, with masks), fitted for M minutes.

    python -m sv_engine.benchmarks.fit_bench --out $OUT/fit.json --minutes 5

Writes JSON: PSNR over time, iterations/s, final PSNR, GPU name, torch version. No typer/rich.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch
from sv_engine.stablevideo.fit import FitOptions, fit_arrays
from sv_engine.stablevideo.fit.synthetic import make_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=70)
    parser.add_argument("--size", default="768x432")
    parser.add_argument("--batch", type=int, default=None, help="points per step (default 131072 on CUDA)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-masks", action="store_true", help="use the motion-segmentation fallback")
    parser.add_argument("--no-amp", action="store_true", help="fp32 everywhere (default: bf16 atlas/alpha)")
    parser.add_argument("--eval-seconds", type=float, default=15.0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the data folder here (default: temporary)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    w, h = (int(v) for v in args.size.split("x"))

    t0 = time.time()
    frames, masks = make_clip(args.frames, w, h, seed=0, detail=2.0)
    history: list[dict] = []
    result: dict = {
        "benchmark": "fit",
        "frames": args.frames,
        "size": [w, h],
        "minutes_budget": args.minutes,
        "masks": not args.no_masks,
        "amp": not args.no_amp,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "host": platform.node(),
        "clip_build_s": round(time.time() - t0, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "synthetic"
        options = FitOptions(
            out=out,
            minutes=args.minutes,
            device=args.device,
            batch_size=args.batch,
            progress=False,
            eval_seconds=args.eval_seconds,
            amp=not args.no_amp,
            force=True,
        )
        t1 = time.time()
        fit = fit_arrays(frames, None if args.no_masks else masks, options, callback=history.append)
        result.update(
            {
                "wall_s": round(time.time() - t1, 2),
                "fit_s": round(fit.elapsed_s, 2),
                "iterations": fit.iterations,
                "iterations_per_s": round(fit.iterations / max(fit.elapsed_s, 1e-6), 3),
                "points_per_s": round(fit.iterations * fit.report["batch_size"] / max(fit.elapsed_s, 1e-6)),
                "batch_size": fit.report["batch_size"],
                "final_psnr_db": round(fit.psnr_db, 3),
                "psnr_over_time": fit.report["psnr_history"],
                "final_losses": fit.report["losses"],
                "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if torch.cuda.is_available()
                else None,
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    logging.getLogger("fit_bench").info(
        "final PSNR %.2f dB, %.1f it/s -> %s", result["final_psnr_db"], result["iterations_per_s"], args.out
    )


if __name__ == "__main__":
    main()
