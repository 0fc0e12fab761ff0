"""The job scheduler shared by ``serve`` and ``batch``: a bounded queue and one dispatch thread per worker.

Each dispatch thread takes the oldest queued job, sends it to its warm actor and waits. When the
actor dies mid-job (killed, OOM, segfault) Ray restarts it (``max_restarts``) and the job goes back
to the front of the queue, up to ``max_retries`` times; an error raised by the edit itself (bad
keyframes for that video, ...) fails the job at once. A queued job is cancelled immediately; a
running one finishes on the GPU and its outputs are discarded.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel

from sv_engine.atomic_write import atomic_write_bytes
from sv_engine.errors import SvEngineError
from sv_engine.service.jobs import CANCELLED, DONE, EDIT, FAILED, QUEUED, RUNNING, JobRecord, new_job_id
from sv_engine.service.workers import _cause

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More than ``max_queue`` jobs waiting: the client should retry later (HTTP 429)."""


class JobManager:
    def __init__(
        self,
        pool,
        out_root: str | Path,
        *,
        max_queue: int | None = None,
        max_retries: int = 2,
        on_finish: Callable[[JobRecord], None] | None = None,
        poll_seconds: float = 0.1,
        restart_timeout: float = 600.0,
        keep_finished: int = 10_000,
    ) -> None:
        self.pool = pool
        self.out_root = Path(out_root).expanduser().resolve()
        self.out_root.mkdir(parents=True, exist_ok=True)
        self.max_queue = max_queue
        self.max_retries = max_retries
        self.on_finish = on_finish
        self.poll_seconds = poll_seconds
        self.restart_timeout = restart_timeout
        self.keep_finished = keep_finished
        self.jobs: dict[str, JobRecord] = {}
        self.queue: deque[str] = deque()
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.recent_seconds: list[float | None] = [None] * len(pool)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> JobManager:
        for i in range(len(self.pool)):
            thread = threading.Thread(target=self._dispatch, args=(i,), name=f"sv-dispatch-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        for thread in self.threads:
            thread.join(timeout)

    # ---- client side ---------------------------------------------------------------------------
    def submit(
        self,
        spec: BaseModel,
        data_dir: Path,
        *,
        name: str | None = None,
        out_dir: Path | None = None,
        kind: str = EDIT,
        inputs: dict[str, str] | None = None,
        files: dict[str, bytes] | None = None,
    ) -> JobRecord:
        """Queues one job; raises :class:`QueueFull` when ``max_queue`` jobs already wait.

        ``kind`` names the worker method that runs it (``edit``, ``atlas``, ``render``, ``fit``) with
        ``inputs`` as its keyword arguments; ``files`` are written into the job's folder before it queues.
        """
        with self.cond:
            if self.stopping.is_set():
                raise SvEngineError("The scheduler is shutting down.", "retry once the service is back.")
            if not any(self.pool.alive):
                raise SvEngineError("No live render workers.", "restart the service; check the worker logs.")
            if self.max_queue is not None and len(self.queue) >= self.max_queue:
                raise QueueFull(f"{len(self.queue)} jobs are already queued (limit {self.max_queue}).")
            job_id = new_job_id()
            if out_dir is None:
                out_dir = self.out_root / job_id
                out_dir.mkdir(parents=True, exist_ok=False)  # a fresh folder per job: never another job's outputs
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
            for file_name, content in (files or {}).items():
                atomic_write_bytes(out_dir / file_name, content)
            inputs = dict(inputs or {})
            job = JobRecord(job_id, spec, Path(data_dir), Path(out_dir), name=name, kind=kind, inputs=inputs)
            self.jobs[job_id] = job
            self.queue.append(job_id)
            self._trim()
            self.cond.notify()
        log.info("%s job %s queued (%s)", kind, job_id, name or getattr(spec, "data", ""))
        return job

    def get(self, job_id: str) -> JobRecord | None:
        with self.cond:
            return self.jobs.get(job_id)

    def list(self) -> list[JobRecord]:
        with self.cond:
            return sorted(self.jobs.values(), key=lambda j: j.created)

    def counts(self) -> dict[str, int]:
        with self.cond:
            out = {s: 0 for s in (QUEUED, RUNNING, DONE, FAILED, CANCELLED)}
            for job in self.jobs.values():
                out[job.status] += 1
            return out

    def cancel(self, job_id: str) -> JobRecord | None:
        """Queued: removed now. Running: marked cancelled; the edit finishes and its outputs are discarded."""
        finished = None
        with self.cond:
            job = self.jobs.get(job_id)
            if job is None or job.terminal:
                return job
            if job.status == QUEUED:
                try:
                    self.queue.remove(job_id)
                except ValueError:
                    pass
                finished = job
            job.status = CANCELLED
            job.finished = time.time()
            job.error = "cancelled by the client"
            self.cond.notify_all()
        if finished is not None:
            shutil.rmtree(job.out_dir, ignore_errors=True)
            self._finished(finished)
        return job

    def wait(self, job_ids: Iterable[str] | None = None, timeout: float | None = None) -> bool:
        """Blocks until the given (default: all) jobs are terminal; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                ids = list(self.jobs) if job_ids is None else list(job_ids)
                if all(self.jobs[i].terminal for i in ids if i in self.jobs):
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cond.wait(0.5 if left is None else min(0.5, left))

    # ---- worker side ---------------------------------------------------------------------------
    def _trim(self) -> None:
        """Forgets the oldest finished jobs beyond ``keep_finished`` (their files stay on disk)."""
        if len(self.jobs) <= self.keep_finished:
            return
        for job in sorted((j for j in self.jobs.values() if j.terminal), key=lambda j: j.created)[
            : len(self.jobs) - self.keep_finished
        ]:
            del self.jobs[job.id]

    def _finished(self, job: JobRecord) -> None:
        with self.cond:
            self.cond.notify_all()
        if self.on_finish is not None:
            try:
                self.on_finish(job)
            except Exception:
                log.exception("on_finish callback failed for job %s", job.id)

    def _next(self, worker: int) -> JobRecord | None:
        with self.cond:
            while not self.queue and not self.stopping.is_set():
                self.cond.wait(0.5)
            if self.stopping.is_set():
                return None
            job = self.jobs[self.queue.popleft()]
            job.status = RUNNING
            job.attempts += 1
            job.worker = worker
            job.started = time.time()
            job.expected_seconds = self.recent_seconds[worker] if job.kind == EDIT else None
            return job

    def _dispatch(self, worker: int) -> None:
        import ray

        actor = self.pool.actors[worker]
        while not self.stopping.is_set():
            job = self._next(worker)
            if job is None:
                return
            log.info("%s job %s -> worker %d (attempt %d)", job.kind, job.id, worker, job.attempts)
            method = getattr(actor, job.kind)
            ref = method.remote(
                job.id, job.spec.model_dump(mode="json"), str(job.data_dir), str(job.out_dir), **job.inputs
            )
            while not self.stopping.is_set():
                ready, _ = ray.wait([ref], timeout=self.poll_seconds)
                if ready:
                    break
            if self.stopping.is_set():
                return
            worker_died = False
            try:
                result = ray.get(ref)
                error = None
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError,
            ) as err:
                result, error, worker_died = None, f"worker {worker} died: {_cause(err)}", True
            except ray.exceptions.RayTaskError as err:
                result, error = None, _cause(err)
            except Exception as err:  # noqa: BLE001 — report, keep serving
                result, error = None, f"{type(err).__name__}: {err}"
            finished = None
            with self.cond:
                if job.status == CANCELLED:
                    finished = None  # already reported by cancel(); discard outputs below
                elif result is not None:
                    job.status, job.result, job.finished = DONE, result, time.time()
                    if job.kind == EDIT:
                        self.recent_seconds[worker] = result.get("seconds")
                    finished = job
                elif worker_died and job.attempts <= self.max_retries:
                    log.warning(
                        "job %s: %s; retrying (attempt %d of %d)", job.id, error, job.attempts + 1, self.max_retries + 1
                    )
                    job.status, job.error, job.worker, job.started = QUEUED, error, None, None
                    self.queue.appendleft(job.id)
                    self.cond.notify_all()
                else:
                    job.status, job.error, job.finished = FAILED, error, time.time()
                    finished = job
            if job.status == CANCELLED:
                shutil.rmtree(job.out_dir, ignore_errors=True)
            if finished is not None:
                log.info("job %s %s%s", job.id, job.status, f": {job.error}" if job.status == FAILED else "")
                self._finished(finished)
            if worker_died and not self._wait_restart(worker):
                return

    def _wait_restart(self, worker: int) -> bool:
        """After a crash: waits for Ray to restart the actor. False (and this thread ends) if it stays dead."""
        import ray

        unavailable = getattr(ray.exceptions, "ActorUnavailableError", ())
        deadline = time.monotonic() + self.restart_timeout
        reason = "stopping"
        while not self.stopping.is_set():
            try:
                ray.get(self.pool.actors[worker].pid.remote(), timeout=max(1.0, deadline - time.monotonic()))
                log.info("worker %d is back", worker)
                return True
            except unavailable as err:  # still restarting: ask again until the deadline
                reason = _cause(err)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            except Exception as err:  # noqa: BLE001 — dead for good (restarts used up) or timed out
                reason = _cause(err)
                break
        log.error("worker %d did not come back (%s); it takes no more jobs", worker, reason)
        failed: list[JobRecord] = []
        with self.cond:
            self.pool.alive[worker] = False
            if not any(self.pool.alive):  # nobody left to run the queue
                while self.queue:
                    job = self.jobs[self.queue.popleft()]
                    job.status, job.error, job.finished = FAILED, "no live render workers", time.time()
                    failed.append(job)
        for job in failed:
            self._finished(job)
        return False
