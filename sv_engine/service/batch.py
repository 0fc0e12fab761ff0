"""Batch edits from a YAML file across every GPU, resumable: ``sv-engine batch JOBS.yaml --out DIR``.

JOBS.yaml::

    defaults:               # optional, merged into every job
      steps: 20
      bg_prompt: a snowy mountain
    jobs:
      - name: car-red       # optional; letters, digits, . _ - (default: a hash of the job)
        data: car-turn      # data folder, relative to --data-root (default: the YAML file's folder)
        fg_prompt: a red car
      - {data: blackswan, fg_prompt: a white duck, keyframes: [0, 35, 69]}

(A top-level list of jobs is accepted too.) Each job writes ``DIR/<name>/edit.mp4``,
``preview.png`` and ``report.json``; every finished job appends one line to ``DIR/results.jsonl``
(status done / failed, attempts, error, seconds). Re-running skips the jobs whose last line is
``done`` for the same spec and whose video is still there; failed jobs run again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sv_engine.errors import SvEngineError
from sv_engine.service.jobs import (
    DONE,
    FAILED,
    PREVIEW_NAME,
    REPORT_NAME,
    VIDEO_NAME,
    JobRecord,
    JobSpec,
    resolve_data_dir,
)
from sv_engine.stablevideo.inputs import check_edit_inputs

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class BatchJob:
    name: str
    spec: JobSpec | None  # None: invalid (error says why)
    data_dir: Path | None = None
    error: str | None = None


@dataclass
class BatchSummary:
    total: int = 0
    skipped: int = 0
    done: int = 0
    invalid: int = 0  # rejected by validation, never run
    failed: int = 0  # ran and failed
    seconds: float = 0.0
    results: Path | None = None
    failures: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "done": self.done,
            "invalid": self.invalid,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "results": str(self.results),
            "failures": self.failures,
        }


def _validation_message(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in err.errors())


def load_jobs(jobs_file: str | Path, data_root: str | Path | None = None) -> list[BatchJob]:
    """Parses and validates every job; invalid ones come back with ``error`` set (recorded, not run)."""
    import yaml

    path = Path(jobs_file).expanduser()
    if not path.is_file():
        raise SvEngineError(
            f"Jobs file {path} does not exist.", "pass a YAML file with a `jobs:` list (see `sv-engine batch --help`)."
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SvEngineError(f"Jobs file {path} is not valid YAML: {err}", "fix the YAML syntax.") from None
    defaults: dict[str, Any] = {}
    if isinstance(doc, dict):
        defaults = doc.get("defaults") or {}
        entries = doc.get("jobs")
        unknown = set(doc) - {"defaults", "jobs"}
        if unknown:
            raise SvEngineError(
                f"Jobs file {path} has unknown top-level keys {sorted(unknown)}.", "use `defaults:` and `jobs:` only."
            )
    else:
        entries = doc
    if not isinstance(entries, list) or not entries or not isinstance(defaults, dict):
        raise SvEngineError(
            f"Jobs file {path} has no job list.",
            "write `jobs:` followed by a list of jobs (data, fg_prompt, bg_prompt, ...).",
        )
    root = Path(data_root).expanduser() if data_root is not None else path.resolve().parent
    jobs: list[BatchJob] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            jobs.append(BatchJob(f"job{i:04d}-invalid", None, error=f"job #{i} is not a mapping"))
            continue
        raw = {**defaults, **entry}
        name = raw.pop("name", None)
        try:
            spec = JobSpec.model_validate(raw)
        except ValidationError as err:
            jobs.append(
                BatchJob(
                    str(name) if name and NAME_RE.match(str(name)) else f"job{i:04d}-invalid",
                    None,
                    error=_validation_message(err),
                )
            )
            continue
        name = str(name) if name is not None else f"job-{spec.fingerprint()}"
        if not NAME_RE.match(name):
            jobs.append(
                BatchJob(
                    f"job{i:04d}-invalid",
                    None,
                    error=f"job name {name!r} must be letters, digits, '.', '_' or '-' (at most 100)",
                )
            )
            continue
        if name in seen:
            raise SvEngineError(
                f"Job name {name!r} appears twice in {path}.",
                "give every job a unique name (outputs go to OUT/<name>/).",
            )
        seen.add(name)
        try:  # the checks `edit` and the service run: before any worker loads a model
            data_dir = resolve_data_dir(root, spec.data)
            check_edit_inputs(data_dir, spec.to_params())
            jobs.append(BatchJob(name, spec, data_dir))
        except SvEngineError as err:
            jobs.append(BatchJob(name, spec, error=str(err)))
    return jobs


def read_results(results: Path) -> dict[str, dict[str, Any]]:
    """The last line per job name (a torn last line from a crash is ignored)."""
    last: dict[str, dict[str, Any]] = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "name" in row:
                last[row["name"]] = row
    return last


def is_done(row: dict[str, Any] | None, job: BatchJob, out: Path) -> bool:
    return bool(
        row
        and job.spec
        and row.get("status") == DONE
        and row.get("fingerprint") == job.spec.fingerprint()
        and (out / job.name / VIDEO_NAME).is_file()
        and (out / job.name / REPORT_NAME).is_file()
    )


class ResultsWriter:
    """Appends one JSON line per finished job (flushed at once, so a crash loses nothing finished)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True)
        with self.lock, self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()


def run_batch(
    jobs_file: str | Path,
    out: str | Path,
    *,
    model=None,
    pool=None,
    data_root: str | Path | None = None,
    ray_address: str = "local",
    workers: int | None = None,
    max_retries: int = 2,
    num_cpus: int | None = None,
) -> BatchSummary:
    """Runs the jobs not done yet on a :class:`WorkerPool` (``pool``, or one started from ``model``)."""
    start = time.perf_counter()
    out = Path(out).expanduser().resolve()
    jobs = load_jobs(jobs_file, data_root)  # a bad jobs file stops here, before OUT is created
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS_NAME
    writer = ResultsWriter(results)
    previous = read_results(results)
    summary = BatchSummary(total=len(jobs), results=results)
    todo = []
    for job in jobs:
        if is_done(previous.get(job.name), job, out):
            summary.skipped += 1
        elif job.spec is None or job.data_dir is None:
            writer.write(
                {
                    "name": job.name,
                    "status": FAILED,
                    "attempts": 0,
                    "error": job.error,
                    "finished": time.time(),
                    "fingerprint": job.spec.fingerprint() if job.spec else None,
                }
            )
            summary.invalid += 1
            summary.failures[job.name] = job.error or "invalid"
        else:
            todo.append(job)
    log.info(
        "batch: %d jobs, %d already done, %d invalid, %d to run", len(jobs), summary.skipped, summary.invalid, len(todo)
    )
    if not todo:
        summary.seconds = time.perf_counter() - start
        return summary

    from sv_engine.service.scheduler import JobManager
    from sv_engine.service.workers import WorkerPool, init_ray

    started_ray = own_pool = False
    if pool is None:
        if model is None:
            raise SvEngineError("No model source for the batch workers.", "pass --weights DIR or --tiny.")
        model.check()
        started_ray = init_ray(ray_address, num_cpus=num_cpus)
        pool = WorkerPool(model, num_workers=workers)
        own_pool = True
    by_name = {job.name: job for job in todo}

    def on_finish(record: JobRecord) -> None:
        job = by_name[record.name]
        row = {
            "name": job.name,
            "status": record.status,
            "attempts": record.attempts,
            "error": record.error,
            "fingerprint": job.spec.fingerprint(),
            "data": job.spec.data,
            "worker": record.worker,
            "finished": record.finished,
        }
        if record.status == DONE and record.result:
            row.update(
                {
                    "seconds": record.result.get("seconds"),
                    "seed": record.result.get("seed"),
                    "keyframes": record.result.get("keyframes"),
                    "video": str(record.out_dir / VIDEO_NAME),
                    "preview": str(record.out_dir / PREVIEW_NAME),
                    "report": str(record.out_dir / REPORT_NAME),
                }
            )
        writer.write(row)

    manager = JobManager(pool, out, max_queue=None, max_retries=max_retries, on_finish=on_finish)
    try:
        manager.start()
        for job in todo:
            manager.submit(job.spec, job.data_dir, name=job.name, out_dir=out / job.name)
        manager.wait()
        for record in manager.list():
            if record.status == DONE:
                summary.done += 1
            else:
                summary.failed += 1
                summary.failures[record.name] = record.error or record.status
    finally:
        manager.stop()
        if own_pool:
            pool.shutdown()
        if started_ray:
            import ray

            ray.shutdown()
    summary.seconds = time.perf_counter() - start
    return summary
