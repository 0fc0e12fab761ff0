"""Warm workers: one :class:`StableVideoPipeline` per GPU, kept loaded between edits.

:class:`EditWorker` is a plain class (usable in-process) that Ray runs as an actor, one per GPU
(one on a CPU-only cluster). The models are loaded once in ``__init__``; every ``edit`` call reuses
them, runs the pipeline and writes ``edit.mp4``, ``preview.png`` and ``report.json`` into the job's
own output folder (written under temporary names, then renamed: a retried job never leaves a
half-written file). :class:`WorkerPool` starts the actors with ``max_restarts`` so a dead worker
comes back (the scheduler resubmits its job).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sv_engine.atomic_write import atomic_write_bytes
from sv_engine.errors import SvEngineError
from sv_engine.export.compose import RuntimeConfig
from sv_engine.service.jobs import PREVIEW_NAME, REPORT_NAME, VIDEO_NAME

log = logging.getLogger(__name__)


class EditWorker:
    """Holds one warm :class:`StableVideoPipeline`; ``edit`` runs one job and writes its outputs."""

    def __init__(self, model: RuntimeConfig) -> None:
        from sv_engine.export.compose import build_pipeline

        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        start = time.perf_counter()
        self.config = model
        runtime = build_pipeline(model)
        self.device, self.components, self.pipeline = runtime.device, runtime.components, runtime.pipeline
        self.accelerated = runtime.accelerated
        self.load_seconds = time.perf_counter() - start
        self.edits = 0
        log.info(
            "worker %d ready on %s (%s backend) in %.1f s (%s)",
            os.getpid(),
            self.device,
            self.accelerated.backend,
            self.load_seconds,
            self.components.description,
        )

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "device": str(self.device),
            "edits": self.edits,
            "load_seconds": round(self.load_seconds, 3),
            "backend": self.accelerated.backend,
            "models": self.components.description,
            "random_weights": self.components.is_random,
            "config": asdict(self.config),
        }

    def pid(self) -> int:
        return os.getpid()

    def edit(self, job_id: str, spec: dict[str, Any], data_dir: str, out_dir: str) -> dict[str, Any]:
        """Runs one edit with the warm pipeline; returns a JSON-safe summary (outputs are on disk)."""
        from PIL import Image

        from sv_engine.service.jobs import JobSpec
        from sv_engine.service.outputs import BG_EDITED, FG_EDITED, EditProgress, write_atlas
        from sv_engine.stablevideo.video_io import write_mp4

        start = time.perf_counter()
        params = JobSpec.model_validate(spec).to_params()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result = self.pipeline.edit(data_dir, params, EditProgress(out, params.edit_background))
        # The atlases a keep-mask re-render starts from (the bg one is the original without a bg edit).
        write_atlas(out / FG_EDITED, result.fg_atlas)
        write_atlas(out / BG_EDITED, result.bg_atlas)
        write_mp4(out / VIDEO_NAME, result.frames)
        preview = io.BytesIO()
        Image.fromarray(result.preview()).save(preview, format="PNG")
        atomic_write_bytes(out / PREVIEW_NAME, preview.getvalue())
        seconds = time.perf_counter() - start
        self.edits += 1
        summary = {
            "job": job_id,
            "seed": result.seed,
            "keyframes": result.keyframes,
            "frames": int(result.frames.shape[0]),
            "seconds": round(seconds, 3),
            "timings": result.timings,
            "pid": os.getpid(),
            "device": str(self.device),
            "backend": self.accelerated.backend,
            "models": self.components.description,
            "random_weights": self.components.is_random,
        }
        # Written last: its presence marks the job's outputs complete.
        atomic_write_bytes(out / REPORT_NAME, json.dumps(summary, indent=2).encode())
        return summary

    def atlas(self, job_id: str, spec: dict[str, Any], data_dir: str, out_dir: str) -> dict[str, Any]:
        """Exports the video's original atlases (the video stays open for the edits that follow)."""
        from sv_engine.service.outputs import export_atlases

        return self._timed(job_id, lambda: export_atlases(self.pipeline.sessions, data_dir, Path(out_dir)))

    def render(self, job_id: str, spec: dict[str, Any], data_dir: str, out_dir: str, atlases: str) -> dict[str, Any]:
        """Renders the edit whose folder is ``atlases`` again with the job's keep-mask, without diffusion."""
        from sv_engine.service.outputs import render_with_mask
        from sv_engine.stablevideo.video_io import DEFAULT_FPS

        def run() -> dict[str, Any]:
            session = self.pipeline.sessions.open(data_dir)
            return render_with_mask(session, Path(atlases), Path(out_dir), fps=DEFAULT_FPS)

        return self._timed(job_id, run)

    def fit(self, job_id: str, spec: dict[str, Any], data_dir: str, out_dir: str, target: str) -> dict[str, Any]:
        """Fits the uploaded video ``data_dir`` into the new data folder ``target``."""
        from sv_engine.service.outputs import fit_upload

        device = str(self.device)
        return self._timed(job_id, lambda: fit_upload(Path(data_dir), Path(target), spec, Path(out_dir), device))

    def _timed(self, job_id: str, run) -> dict[str, Any]:
        start = time.perf_counter()
        summary = {"job": job_id, **run()}
        summary["seconds"] = round(time.perf_counter() - start, 3)
        return summary


class WorkerPool:
    """One Ray actor per GPU (one on a CPU-only cluster), each an :class:`EditWorker`."""

    def __init__(
        self, model: RuntimeConfig, num_workers: int | None = None, max_restarts: int = 3, cpus_per_worker: float = 1.0
    ) -> None:
        import ray

        model.check()
        if not ray.is_initialized():
            raise SvEngineError(
                "Ray is not initialised.", "call ray.init() (or sv_engine.service.workers.init_ray) first."
            )
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.num_gpus = gpus
        if num_workers is None:
            num_workers = max(1, gpus)
        if num_workers < 1:
            raise SvEngineError(f"{num_workers} workers requested.", "pass --workers 1 or more.")
        if gpus and num_workers > gpus:
            raise SvEngineError(
                f"{num_workers} workers requested but the Ray cluster has {gpus} GPU(s).",
                f"pass --workers {gpus} or fewer (one warm pipeline per GPU).",
            )
        options: dict[str, Any] = {"num_cpus": cpus_per_worker, "max_restarts": max_restarts, "max_task_retries": 0}
        if gpus:
            options["num_gpus"] = 1
        actor_cls = ray.remote(EditWorker).options(**options)
        self.model = model
        self.actors = [actor_cls.remote(model)]
        if num_workers > 1 and model.backend != "torch":
            # The first worker exports/builds the ONNX and engine caches; the others then only load them.
            self.wait_ready(actors=self.actors)
        self.actors += [actor_cls.remote(model) for _ in range(num_workers - 1)]
        self.alive = [True] * num_workers

    def __len__(self) -> int:
        return len(self.actors)

    def wait_ready(self, timeout: float | None = None, actors: list | None = None) -> list[dict[str, Any]]:
        """Blocks until every worker has loaded its models; returns their :meth:`EditWorker.info`."""
        import ray

        try:
            return ray.get([a.info.remote() for a in (actors or self.actors)], timeout=timeout)
        except ray.exceptions.GetTimeoutError as err:
            raise SvEngineError(
                f"Workers did not load their models within {timeout:.0f} s.",
                "check the worker logs (ray logs) and the --weights folder.",
            ) from err
        except ray.exceptions.RayActorError as err:
            raise SvEngineError(
                f"A worker failed to start: {_cause(err)}", "check --weights / --tiny and the worker logs."
            ) from err

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.alive = [False] * len(self.actors)


def _cause(err: BaseException) -> str:
    """The user-facing message of an error raised inside a Ray worker."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        return str(cause) or type(cause).__name__
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def init_ray(address: str = "local", num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Starts (``local``) or joins (``auto`` / ``ray://…`` / host:port) a Ray cluster; returns True if this call
    started it."""
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address=address, include_dashboard=False)
    return True
