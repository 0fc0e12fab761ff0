"""Reading a model folder's safetensors onto the GPU, route by route, each in a fresh process (issue 16's
cold path: the "load models" phase), on the full-size random fp16 SD 1.5 + 2 ControlNets + VAE + CLIP +
DPT saved in the folder layout.

    python -m sv_engine.benchmarks.weights_load --out weights-load.json [--rounds 2]

Routes: safetensors' ``load_file`` straight to the GPU (the loader's); ``load_file`` on the CPU then
``.to``; the whole loader (read, build on the meta device, cast to the edit's precision: the cold edit's
"load models" phase), its model folders read on threads and one at a time; each alone, and the first
and the loader beside the GPU warm-up a build runs on its worker thread (what the load shares the
process with in a cold edit). A one-read reader into a pinned host buffer was 3x slower than
``load_file`` (2.35 s vs 0.81 s for 4.07 GB at f609fac): pinning costs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ROUTES = {
    "load_file to the GPU": ("load_file_gpu", False),
    "load_file on the CPU, then .to": ("load_file_cpu", False),
    "load_file to the GPU, beside the GPU warm-up": ("load_file_gpu", True),
    "the loader (reads, builds, casts)": ("loader", False),
    "the loader, one model folder at a time": ("loader_sequential", False),
    "the loader, beside the GPU warm-up": ("loader", True),
}

_CHILD = """
import json, sys, time
from pathlib import Path
import torch
route, warm_up, folder, profile = sys.argv[1], sys.argv[2] == "1", Path(sys.argv[3]), sys.argv[4] == "1"
device = torch.device("cuda")
torch.zeros(1, device=device)
worker = None
if warm_up:
    from concurrent.futures import ThreadPoolExecutor
    from sv_engine.export.compose import warm_up_gpu
    worker = ThreadPoolExecutor(1).submit(warm_up_gpu, device, torch.float16)
from safetensors.torch import load_file
files = sorted(folder.rglob("*.safetensors"))
if profile:
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
t0 = time.perf_counter()
total = 0
if route.startswith("loader"):
    from sv_engine.stablevideo.model_source import load_components
    from sv_engine.stablevideo.models import loaders
    if route == "loader_sequential":
        loaders.READ_THREADS = 1
    models = load_components(device, weights=folder, precision="fp16").modules().values()
    total = sum(t.numel() * t.element_size() for m in models for t in m.state_dict().values())
    files = []
for path in files:
    if route == "load_file_gpu":
        tensors = load_file(str(path), device="cuda")
    else:
        tensors = {k: v.to(device) for k, v in load_file(str(path)).items()}
    total += sum(t.numel() * t.element_size() for t in tensors.values())
torch.cuda.synchronize()
seconds = time.perf_counter() - t0
if worker is not None:
    worker.result()
out = {"seconds": seconds, "gb": total / 1e9, "files": len(files)}
if profile:
    import io, pstats
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(35)
    out["profile"] = text.getvalue().splitlines()[-45:]
print("LOAD " + json.dumps(out))
"""


def load_once(route: str, warm_up: bool, folder: Path, profile: bool = False, timeout: float = 120.0) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, route, "1" if warm_up else "0", str(folder), "1" if profile else "0"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("LOAD ")), None)
    if line is None:
        return {"status": "error", "error": " | ".join(proc.stderr.strip().splitlines()[-4:])}
    return {"status": "ok", **{k: round(v, 3) if isinstance(v, float) else v for k, v in json.loads(line[5:]).items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from sv_engine.benchmarks.timing import environment
    from sv_engine.stablevideo.model_source import load_components
    from sv_engine.stablevideo.models.loaders import save_components

    device = torch.device("cuda")
    result: dict = {"what": __doc__.splitlines()[0], "environment": environment(device), "routes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_components(load_components(device, random_full=True, precision="fp16"), Path(tmp) / "w")
        torch.cuda.empty_cache()
        result["folder_gb"] = round(sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 1e9, 2)
        names = list(ROUTES)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                run = load_once(*ROUTES[name], folder)
                result["routes"].setdefault(name, []).append(run)
                log.info("%s: %s", name, run)
                args.out.write_text(json.dumps(result, indent=1))
        # where the loader's time goes (cProfile, cumulative; the profiler itself slows it)
        result["loader_profile"] = load_once("loader", True, folder, profile=True)
    for name, runs in result["routes"].items():
        ok = [x["seconds"] for x in runs if x["status"] == "ok"]
        result.setdefault("min_s", {})[name] = min(ok) if ok else None
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["min_s"], indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
