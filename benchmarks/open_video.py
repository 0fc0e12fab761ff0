"""Opening a video in a fresh process with its NLA maps already cached (a cold edit's "open video").

    python -m sv_engine.benchmarks.open_video --out open.json [--device cpu] [--frames 70] [--repeat 3]

A synthetic 768x432 clip (the engine bench's size) is written once; each round opens it in a new
process (decode, cached maps, atlas data) and reports that process's seconds; the first round, which
computes and caches the maps, is not counted. The median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: One round: open the video and print the seconds it took (imports excluded).
ROUND = """
import sys, time, torch
from sv_engine.stablevideo.session import open_video
device = torch.device(sys.argv[2])
torch.zeros(1, device=device)
t0 = time.perf_counter()
open_video(sys.argv[1], device)
if device.type == "cuda":
    torch.cuda.synchronize(device)
print(time.perf_counter() - t0)
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=70)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    from sv_engine.benchmarks.e2e import synth_data_dir

    work = Path(tempfile.mkdtemp(prefix="sv-open-"))
    root = synth_data_dir(work, args.frames, 432, 768)
    env = {**os.environ, "SV_ENGINE_CACHE": str(work / "cache")}
    runs = []
    for i in range(args.repeat + 1):
        proc = subprocess.run(
            [sys.executable, "-c", ROUND, str(root), args.device], env=env, capture_output=True, text=True, check=True
        )
        if i:  # round 0 computed and cached the maps
            runs.append(float(proc.stdout.split()[-1]))
    result = {
        "benchmark": "open-video",
        "device": args.device,
        "cpus": os.cpu_count(),
        "commit": os.environ.get("SV_ENGINE_COMMIT", "unknown"),
        "date": time.strftime("%Y-%m-%d"),
        "clip": f"{args.frames} frames 768x432, maps cached",
        "median_s": round(statistics.median(runs), 3),
        "runs_s": [round(r, 3) for r in runs],
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
