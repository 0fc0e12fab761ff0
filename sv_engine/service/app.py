"""The render service's HTTP API (FastAPI): submit, watch, download and cancel edits.

``create_app(manager, data_root=..., token=...)`` builds the app around a running
:class:`~sv_engine.service.scheduler.JobManager` (the caller owns its lifecycle; see
``sv-engine serve``). Endpoints::

    POST   /jobs                 JobSpec JSON -> 202 {"id", "status", ...}   (422: invalid input, 429: queue full)
    GET    /jobs                 every job's status
    GET    /jobs/{id}            status, progress (0..1), attempts, error, timings
    GET    /jobs/{id}/video      the edited mp4 (409 until done)
    GET    /jobs/{id}/preview    the preview contact sheet (PNG)
    DELETE /jobs/{id}            cancel
    GET    /health               liveness + queue counts (no auth)
    GET    /openapi.json, /docs  the schema

With a token, every /jobs route needs ``Authorization: Bearer <token>``. Request bodies are capped
(``max_body_bytes``, 413 beyond it).
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from sv_engine.errors import SvEngineError
from sv_engine.service.jobs import CANCELLED, DONE, PREVIEW_NAME, VIDEO_NAME, JobSpec, resolve_data_dir
from sv_engine.service.scheduler import JobManager, QueueFull
from sv_engine.stablevideo.inputs import check_edit_inputs

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024
JobId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="Job id returned by POST /jobs.")]


class BodySizeLimit:
    """ASGI middleware: 413 for request bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                await self._reject(send, 400, "Invalid Content-Length header.")
                return
            if too_big:
                await self._reject(send, 413, f"Request body is larger than {self.limit} bytes.")
                return
        # Read the whole (small) body here, counting bytes, then replay it to the app.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._reject(send, 413, f"Request body is larger than {self.limit} bytes.")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replay_receive():
            nonlocal sent
            if not sent:
                sent = True
                return replay
            return await receive()

        await self.app(scope, replay_receive, send)

    @staticmethod
    async def _reject(send, code: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app(
    manager: JobManager,
    *,
    data_root: str | Path,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    data_root = Path(data_root).expanduser().resolve()
    if not data_root.is_dir():
        raise SvEngineError(
            f"Data root {data_root} is not a folder.",
            "pass --data-root with the folder that holds your StableVideo data folders.",
        )
    app = FastAPI(
        title="sv-engine render service",
        version="0.1.0",
        description="StableVideo text-driven video edits on warm GPU workers (one Ray actor per GPU).",
    )
    app.state.manager = manager
    app.state.data_root = data_root

    def require_token(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "Missing or wrong bearer token: send 'Authorization: Bearer <token>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    auth = [Depends(require_token)]

    @app.exception_handler(SvEngineError)  # a job's inputs failed check_edit_inputs (as `edit` and `batch` check them)
    async def _sv_error(request: Request, err: SvEngineError) -> JSONResponse:
        detail = f"{err.field}: {err.what}" if err.field else err.what
        return JSONResponse({"detail": detail, "fix": err.fix, "field": err.field}, status_code=422)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": f"Queue full: {err}", "fix": "retry later."}, status_code=429, headers={"Retry-After": "5"}
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(err.errors(), custom_encoder={Exception: str})
        for e in errors:  # never echo (possibly huge or hostile) input back
            e.pop("input", None)
            e.pop("ctx", None)
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: {e.get('msg')}" for e in errors
        )
        return JSONResponse({"detail": f"Invalid request: {summary}", "errors": errors}, status_code=422)

    def job_or_404(job_id: str):
        job = manager.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job {job_id}.")
        return job

    @app.get("/health")
    def health() -> dict[str, Any]:
        alive = sum(manager.pool.alive)
        return {
            "status": "ok" if alive else "degraded",
            "workers": len(manager.pool),
            "workers_alive": alive,
            "jobs": manager.counts(),
            "max_queue": manager.max_queue,
        }

    @app.post("/jobs", status_code=202, dependencies=auth)
    def submit(spec: JobSpec) -> dict[str, Any]:
        data_dir = resolve_data_dir(data_root, spec.data)
        check_edit_inputs(data_dir, spec.to_params())
        job = manager.submit(spec, data_dir)
        return job.public()

    @app.get("/jobs", dependencies=auth)
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [j.public() for j in manager.list()]}

    @app.get("/jobs/{job_id}", dependencies=auth)
    def get_job(job_id: JobId) -> dict[str, Any]:
        return job_or_404(job_id).public()

    def output(job_id: str, name: str, media_type: str) -> FileResponse:
        job = job_or_404(job_id)
        if job.status != DONE:
            raise HTTPException(409, f"Job {job_id} is {job.status}; outputs exist only once it is done.")
        path = job.out_dir / name
        if not path.is_file():
            raise HTTPException(404, f"Job {job_id} has no {name} (outputs were removed).")
        return FileResponse(path, media_type=media_type, filename=f"{job_id}_{name}")

    @app.get("/jobs/{job_id}/video", dependencies=auth, response_class=FileResponse)
    def video(job_id: JobId) -> FileResponse:
        return output(job_id, VIDEO_NAME, "video/mp4")

    @app.get("/jobs/{job_id}/preview", dependencies=auth, response_class=FileResponse)
    def preview(job_id: JobId) -> FileResponse:
        return output(job_id, PREVIEW_NAME, "image/png")

    @app.delete("/jobs/{job_id}", dependencies=auth)
    def cancel(job_id: JobId) -> dict[str, Any]:
        job = job_or_404(job_id)
        job = manager.cancel(job_id)
        if job.status != CANCELLED:
            raise HTTPException(409, f"Job {job_id} already finished ({job.status}).")
        return job.public()

    app.add_middleware(BodySizeLimit, limit=max_body_bytes)
    return app


LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


def check_bind(host: str, token: str | None) -> None:
    """Loopback needs no token; any other bind address requires one."""
    if host not in LOOPBACK_HOSTS and not token:
        raise SvEngineError(
            f"Refusing to bind {host} without authentication: the service would be open to the network.",
            "pass --token TOKEN (clients send 'Authorization: Bearer TOKEN'), or bind --host 127.0.0.1.",
        )
    if token is not None and len(token) < 16:
        raise SvEngineError(
            "The --token is shorter than 16 characters.",
            "use a long random token, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`.",
        )
