"""Warm render service vs a fresh process per edit, and batch throughput on 1 vs 2 GPUs.

1. **Warm latency**: one Ray actor (:class:`EditWorker`, models loaded once) runs N edits through the
   real scheduler (:class:`JobManager`); each edit's wall time from submit to outputs on disk.
2. **Fresh process**: the same edit as a new ``python -m sv_engine edit`` process per edit (imports,
   model load, edit, outputs). ``--random-full`` has no ``edit`` flag, so there the fresh process runs
   this module's ``--single-edit`` (the same steps as ``edit``: build_pipeline -> edit -> write).
3. **Batch throughput** (only with 2+ GPUs): 8 edits through the scheduler on 1 worker vs 2 workers
   (one per GPU), models loaded before the clock starts.

Edits use what ``sv-engine edit`` can express (prompts, keyframes, steps, strength, seed; 512 px SD
resolution), so warm and fresh runs do identical work. The NLA maps cache is warmed by one untimed
edit first (both paths then read it).

Usage::

    python -m sv_engine.benchmarks.service_bench --out results/service.json --random-full [--edits 5] [--fresh 2]
    # smoke test (CPU ok):
    python -m sv_engine.benchmarks.service_bench --out /tmp/s.json --tiny --edits 2 --fresh 1 --steps 2
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
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("service_bench")


def _stats(xs: list[float]) -> dict:
    return (
        {
            "runs_s": [round(x, 3) for x in xs],
            "mean_s": round(statistics.fmean(xs), 3),
            "median_s": round(statistics.median(xs), 3),
            "min_s": round(min(xs), 3),
        }
        if xs
        else {}
    )


def _data_dir(arg: str | None, scratch: Path) -> Path:
    if arg:
        return Path(arg).expanduser().resolve()
    from sv_engine.stablevideo.demo import demo_data_dir

    demo = demo_data_dir()
    if (demo / "config.json").is_file():
        return demo
    import numpy as np
    from sv_engine.stablevideo.data import write_video_data
    from sv_engine.stablevideo.nla import NLAModel

    log.info("demo clip not built; using a synthetic 8-frame 384x216 clip with a random NLA")
    frames = np.random.default_rng(0).integers(0, 255, size=(8, 216, 384, 3), dtype=np.uint8)
    return write_video_data(scratch / "data" / "synthetic", frames, NLAModel.random(seed=1))


def _spec(args, data_dir: Path, i: int):
    from sv_engine.service.jobs import JobSpec

    extra = {"keyframes": [int(k) for k in args.keyframes.split(",")]} if args.keyframes else {}
    return JobSpec(
        data=data_dir.name,
        fg_prompt=f"a red car {i}",
        bg_prompt="a snowy mountain road",
        steps=args.steps,
        strength=args.strength,
        seed=i,
        **extra,
    )


def _model(args):
    from sv_engine.export.compose import RuntimeConfig

    return RuntimeConfig(
        tiny=args.tiny,
        random_full=args.random_full,
        weights=args.weights,
        precision=args.precision,
        backend=args.backend,
        cuda_graphs=args.cuda_graphs,
    )


def _run_jobs(
    pool, args, data_dir: Path, out_root: Path, n: int, sequential: bool, offset: int = 0
) -> tuple[list[float], list[float], float]:
    """Submits n jobs; returns (per-job wall latencies, per-job worker seconds, total wall)."""
    from sv_engine.service.scheduler import JobManager

    manager = JobManager(pool, out_root, max_queue=None, max_retries=0).start()
    lat, inner = [], []
    start = time.perf_counter()
    try:
        ids = []
        for i in range(n):
            t0 = time.perf_counter()
            job = manager.submit(_spec(args, data_dir, offset + i), data_dir)
            ids.append(job.id)
            if sequential:
                manager.wait([job.id])
                lat.append(time.perf_counter() - t0)
        manager.wait(ids)
        total = time.perf_counter() - start
        for i in ids:
            job = manager.get(i)
            if job.status != "done":
                raise RuntimeError(f"benchmark edit failed: {job.error}")
            inner.append(job.result["seconds"])
    finally:
        manager.stop()
    return lat, inner, total


def _fresh(args, data_dir: Path, scratch: Path, i: int) -> tuple[float, list[str]]:
    spec = _spec(args, data_dir, 1000 + i)
    out = scratch / "fresh" / f"edit{i}.mp4"
    edit_flags = ["--steps", str(args.steps), "--strength", str(args.strength), "--seed", str(spec.seed)]
    edit_flags += ["--precision", args.precision, "--backend", args.backend]
    edit_flags += ["--keyframes", args.keyframes] if args.keyframes else []
    if args.random_full:
        module = ["sv_engine.benchmarks.service_bench", "--single-edit", str(data_dir), "--random-full"]
        cmd = [sys.executable, "-m", *module, "--out", str(out), *edit_flags]
    else:
        source = ["--tiny"] if args.tiny else ["--weights", args.weights]
        prompts = ["--fg-prompt", spec.fg_prompt, "--bg-prompt", spec.bg_prompt]
        cmd = [sys.executable, "-m", "sv_engine", "edit", str(data_dir), *prompts, *edit_flags, *source]
        cmd += ["--out", str(out), "--force"]
    if args.cuda_graphs is not None:  # both commands take it; unset, both use edit's default like the warm workers
        cmd += ["--cuda-graphs" if args.cuda_graphs else "--no-cuda-graphs"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if not args.verbose else None)
    return time.perf_counter() - t0, cmd


def single_edit(args) -> None:
    """What ``sv-engine edit`` does, for model sources it has no flag for (``--random-full``)."""
    from PIL import Image
    from sv_engine.export.compose import build_pipeline
    from sv_engine.stablevideo.video_io import write_mp4

    spec = _spec(args, Path(args.single_edit), args.seed)
    result = build_pipeline(_model(args)).pipeline.edit(args.single_edit, spec.to_params())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(out, result.frames)
    Image.fromarray(result.preview()).save(out.with_name(f"{out.stem}_preview.png"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON results file.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", action="store_true")
    src.add_argument("--random-full", action="store_true")
    src.add_argument("--weights")
    p.add_argument("--data", help="Data folder (default: the bundled demo clip, or a synthetic one if not built).")
    p.add_argument("--edits", type=int, default=5, help="Timed edits through the warm actor.")
    p.add_argument("--fresh", type=int, default=2, help="Timed fresh-process edits.")
    p.add_argument("--batch", type=int, default=8, help="Edits in the 1-vs-2-GPU throughput batch.")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, default=0.8)
    p.add_argument("--keyframes", help="Comma-separated keyframes (default: the pipeline's).")
    p.add_argument("--precision", default="fp32")
    p.add_argument(
        "--backend", default="auto", help="auto, torch, torch-compile, ort or trt (same for warm and fresh runs)."
    )
    p.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch: UNet+ControlNet steps from CUDA graphs or eager (default: as `sv-engine edit`, on with a GPU).",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--single-edit", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.single_edit:
        single_edit(args)
        return

    import ray
    import torch

    from sv_engine.service.workers import WorkerPool

    gpus = torch.cuda.device_count()
    scratch = Path(tempfile.mkdtemp(prefix="sv-service-bench-"))
    os.environ.setdefault("SV_ENGINE_CACHE", str(scratch / "cache"))  # before ray.init: workers inherit it
    data_dir = _data_dir(args.data, scratch)
    model = _model(args)
    report: dict = {
        "device": torch.cuda.get_device_name(0) if gpus else "cpu",
        "gpus": gpus,
        "model": asdict(model),
        "data": str(data_dir),
        "steps": args.steps,
        "strength": args.strength,
        "keyframes": args.keyframes,
        "torch": torch.__version__,
        "ray": ray.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every phase: a run cut off by a time limit keeps what it measured
        out.write_text(json.dumps(report, indent=2))

    ray.init(num_gpus=gpus, include_dashboard=False, log_to_driver=args.verbose)
    try:
        # 1. warm service latency
        pool = WorkerPool(model, num_workers=1)
        t0 = time.perf_counter()
        info = pool.wait_ready()
        report["warm_worker_load_s"] = round(time.perf_counter() - t0, 3)
        report["models"] = info[0]["models"]
        first, _, _ = _run_jobs(pool, args, data_dir, scratch / "warm", 1, sequential=True, offset=500)
        report["first_edit_s (maps cache cold)"] = round(first[0], 3)
        lat, inner, _ = _run_jobs(pool, args, data_dir, scratch / "warm", args.edits, sequential=True)
        report["warm"] = {
            **_stats(lat),
            "worker_edit": _stats(inner),
            "overhead_mean_s": round(statistics.fmean(lat) - statistics.fmean(inner), 3),
        }
        log.info("warm: %s", report["warm"])
        save()
        pool.shutdown()
        # 2. fresh process per edit
        fresh, cmd = [], None
        for i in range(args.fresh):
            seconds, cmd = _fresh(args, data_dir, scratch, i)
            fresh.append(seconds)
        report["fresh_process"] = {**_stats(fresh), "command": " ".join(cmd) if cmd else None}
        if fresh:
            report["warm_speedup"] = round(statistics.fmean(fresh) / statistics.fmean(lat), 2)
        log.info("fresh: %s", report["fresh_process"])
        save()
        # 3. batch throughput 1 vs 2 GPUs
        if gpus >= 2:
            batch = report["batch"] = {}
            for n in (1, 2):
                pool = WorkerPool(model, num_workers=n)
                pool.wait_ready()
                _run_jobs(
                    pool, args, data_dir, scratch / f"batch{n}-warmup", n, sequential=False, offset=900
                )  # warm every worker
                _, inner, total = _run_jobs(
                    pool, args, data_dir, scratch / f"batch{n}", args.batch, sequential=False, offset=100
                )
                batch[f"{n}_gpu"] = {
                    "edits": args.batch,
                    "wall_s": round(total, 3),
                    "edits_per_min": round(60 * args.batch / total, 2),
                    "worker_edit": _stats(inner),
                }
                pool.shutdown()
                save()
            batch["scaling"] = round(batch["2_gpu"]["edits_per_min"] / batch["1_gpu"]["edits_per_min"], 2)
            log.info("batch: %s", batch)
        else:
            report["batch"] = {"skipped": f"{gpus} GPU(s): the 1-vs-2-GPU batch needs 2"}
    finally:
        ray.shutdown()
    save()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
