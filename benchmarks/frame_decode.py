"""Decoding a clip's frames (``load_frames``) one at a time against :data:`DECODE_THREADS` at once.

    python -m sv_engine.benchmarks.frame_decode --out decode.json [--frames 70] [--repeat 5]

A synthetic clip of 768x432 JPEGs (the engine bench's size) is written to a temporary folder; each
variant's median seconds of ``repeat`` loads, alternating, and the frames checked equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from sv_engine.stablevideo import data


def _load_s(root: Path, threads: int) -> tuple[float, torch.Tensor]:
    data.DECODE_THREADS = threads
    t0 = time.perf_counter()
    frames, _ = data.load_frames(root, data.read_config(root))
    return time.perf_counter() - t0, frames


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=70)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    from sv_engine.benchmarks.e2e import synth_data_dir

    threads = data.DECODE_THREADS
    root = synth_data_dir(Path(tempfile.mkdtemp(prefix="sv-decode-")), args.frames, 432, 768)
    times: dict[int, list[float]] = {1: [], threads: []}
    reference = None
    for _ in range(args.repeat):
        for n in times:
            seconds, frames = _load_s(root, n)
            times[n].append(seconds)
            reference = frames if reference is None else reference
            assert torch.equal(frames, reference), "threaded decoding changed the frames"
    data.DECODE_THREADS = threads
    median = {n: statistics.median(v) for n, v in times.items()}
    result = {
        "benchmark": "frame-decode",
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "commit": os.environ.get("SV_ENGINE_COMMIT", "unknown"),
        "date": time.strftime("%Y-%m-%d"),
        "clip": f"{args.frames} frames 768x432 JPEG",
        "median_s": {f"{n} thread{'s' if n > 1 else ''}": round(s, 3) for n, s in median.items()},
        "speedup": round(median[1] / median[threads], 2),
        "runs_s": {str(n): [round(x, 3) for x in v] for n, v in times.items()},
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median_s"]), "speed-up", result["speedup"])


if __name__ == "__main__":
    main()
