"""``sv-engine serve``: the warm render service (FastAPI + uvicorn, one Ray actor per GPU)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from sv_engine.cli.app import app
from sv_engine.cli.extras import require_extra
from sv_engine.cli.options import (
    CudaGraphs,
    EditBackend,
    MaxRetries,
    Precision,
    RandomFull,
    RayAddress,
    Tiny,
    Weights,
    Workers,
    runtime_config,
)
from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Bind address; anything but loopback requires --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    data_root: Annotated[
        Path, typer.Option("--data-root", help="Folder holding the StableVideo data folders jobs may name.")
    ] = Path("data"),
    out_root: Annotated[
        Path, typer.Option("--out-root", help="Outputs go to OUT_ROOT/<job id>/ (edit.mp4, preview.png, report.json).")
    ] = Path("sv-jobs"),
    backend: EditBackend = "auto",
    cuda_graphs: CudaGraphs = None,
    weights: Weights = None,
    tiny: Tiny = False,
    random_full: RandomFull = False,
    precision: Precision = "fp32",
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="SV_ENGINE_TOKEN",
            help="Bearer token clients must send (required off loopback). Also read from $SV_ENGINE_TOKEN.",
        ),
    ] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Queued jobs beyond this get HTTP 429.")] = 16,
    max_retries: MaxRetries = 2,
    workers: Workers = None,
    ray_address: RayAddress = "local",
    max_body: Annotated[
        int, typer.Option("--max-body", min=1024, help="Largest request body in bytes (413 beyond).")
    ] = 64 * 1024,
    max_upload: Annotated[
        int, typer.Option("--max-upload", min=1024, help="Largest video upload (PUT /uploads) in bytes.")
    ] = 256 * 1024 * 1024,
) -> None:
    """Serve edits over HTTP from warm GPU workers: POST /jobs, GET /jobs/{id} (/video, /preview),
    DELETE /jobs/{id}, GET /health."""
    require_extra("serve")
    import uvicorn

    from sv_engine.service.app import check_bind, check_port_free, create_app
    from sv_engine.service.scheduler import JobManager
    from sv_engine.service.workers import WorkerPool, init_ray

    check_bind(host, token)
    check_port_free(host, port)  # before the models load, not after
    if not data_root.expanduser().is_dir():
        raise SvEngineError(
            f"Data root {data_root} is not a folder.",
            "pass --data-root with the folder that holds your StableVideo data folders.",
        )
    model = runtime_config(
        weights=weights,
        tiny=tiny,
        random_full=random_full,
        precision=precision,
        backend=backend,
        cuda_graphs=cuda_graphs,
    )
    model.check()
    started = init_ray(ray_address)
    pool = WorkerPool(model, num_workers=workers)
    manager = None
    try:
        log.info("loading models on %d worker(s)…", len(pool))
        for info in pool.wait_ready():
            log.info(
                "worker pid %s on %s warm (%s, %.1f s)",
                info["pid"],
                info["device"],
                info["models"],
                info["load_seconds"],
            )
        manager = JobManager(pool, out_root, max_queue=max_queue, max_retries=max_retries).start()
        api = create_app(
            manager, data_root=data_root, token=token, max_body_bytes=max_body, max_upload_bytes=max_upload
        )
        log.info(
            "serving on http://%s:%d (studio /ui, docs /docs, schema /openapi.json)%s",
            host,
            port,
            "" if token else " without auth (loopback only)",
        )
        uvicorn.run(api, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        if manager is not None:
            manager.stop()
        pool.shutdown()
        if started:
            import ray

            ray.shutdown()
