"""Production rendering: a warm HTTP render service and resumable multi-GPU batch jobs on Ray.

* :mod:`.jobs` — the job schema (pydantic, validated ranges) and safe data-folder resolution.
* :mod:`.workers` — :class:`EditWorker` (one warm :class:`StableVideoPipeline`; a Ray actor per GPU)
  and :class:`WorkerPool`.
* :mod:`.scheduler` — :class:`JobManager`: bounded queue, one dispatch thread per actor, retries when a
  worker dies, cancellation, progress.
* :mod:`.app` — the FastAPI app factory (``sv-engine serve``).
* :mod:`.batch` — YAML job files -> ``results.jsonl`` (``sv-engine batch``), resumable.

Heavy libraries (ray, fastapi, torch) are imported by the submodules, not here.
"""
