"""The render service's HTTP API (FastAPI): submit, watch, download and cancel edits.

``create_app(manager, data_root=..., token=...)`` builds the app around a running
:class:`~sv_engine.service.scheduler.JobManager` (the caller owns its lifecycle; see
``sv-engine serve``). Endpoints::

    POST   /jobs                 JobSpec JSON -> 202 {"id", "status", ...}   (422: invalid input, 429: queue full)
    POST   /jobs/atlas           AtlasSpec: export a video's original atlases
    POST   /jobs/render          RenderSpec: re-render a done edit's atlases with a keep-mask (no diffusion)
    POST   /jobs/fit             FitSpec: fit an uploaded video into a new data folder
    GET    /jobs                 every job's status
    GET    /jobs/{id}            status, kind, stage, progress (0..1), attempts, error, timings, files
    GET    /jobs/{id}/video      the edited mp4 (409 until done)
    GET    /jobs/{id}/preview    the preview contact sheet (PNG)
    GET    /jobs/{id}/files/{f}  an intermediate output (atlases, keyframe edits), also while running
    DELETE /jobs/{id}            cancel
    GET    /clips                the data folders under the data root (frames, size, default keyframes)
    GET    /clips/{name}/frames/{i}  one original frame
    PUT    /uploads/{filename}   a video to fit (raw body, ``max_upload_bytes``), kept under the data root
    GET    /ui                   the editing studio (static page on this API)
    GET    /health               liveness + queue counts (no auth)
    GET    /openapi.json, /docs  the schema

With a token, every route but /health and the studio's static files needs ``Authorization: Bearer
<token>``. Request bodies are capped (``max_body_bytes``; a render's keep-mask
``RENDER_BODY_BYTES``; uploads ``max_upload_bytes``; 413 beyond).
"""

from __future__ import annotations

import base64
import binascii
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
from sv_engine.service.clips import UPLOADS_PATH, clips_router, upload_path
from sv_engine.service.jobs import (
    ARTIFACT_NAME,
    ATLAS,
    CANCELLED,
    DONE,
    EDIT,
    FIT,
    PREVIEW_NAME,
    RENDER,
    TERMINAL,
    VIDEO_NAME,
    AtlasSpec,
    FitSpec,
    JobSpec,
    RenderSpec,
    resolve_data_dir,
)
from sv_engine.service.outputs import MASK
from sv_engine.service.scheduler import JobManager, QueueFull
from sv_engine.service.ui import mount_ui
from sv_engine.stablevideo.inputs import check_edit_inputs

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 256 * 1024 * 1024
RENDER_BODY_BYTES = 12 * 1024 * 1024  # a base64 keep-mask PNG of a large fg atlas
MAX_MASK_SIDE = 4096  # StableVideo's grid atlas is 2000 px a side
JobId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="Job id returned by POST /jobs.")]


class BodySizeLimit:
    """ASGI middleware: 413 for request bodies over ``limit`` bytes (declared or streamed).

    ``route_limits`` raise the limit for exact paths; paths under ``streamed_prefixes`` pass through
    unread (their routes stream the body to disk and enforce their own limit).
    """

    def __init__(
        self, app, limit: int, route_limits: dict[str, int] | None = None, streamed_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.limit = limit
        self.route_limits = route_limits or {}
        self.streamed_prefixes = streamed_prefixes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.streamed_prefixes):
            await self.app(scope, receive, send)
            return
        limit = self.route_limits.get(scope["path"], self.limit)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                await self._reject(send, 400, "Invalid Content-Length header.")
                return
            if too_big:
                await self._reject(send, 413, f"Request body is larger than {limit} bytes.")
                return
        # Read the whole (small) body here, counting bytes, then replay it to the app.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._reject(send, 413, f"Request body is larger than {limit} bytes.")
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
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
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
        what, fix = err.texts()
        detail = f"{err.field}: {what}" if err.field else what
        return JSONResponse({"detail": detail, "fix": fix, "field": err.field}, status_code=422)

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

    @app.post("/jobs/atlas", status_code=202, dependencies=auth)
    def submit_atlas(spec: AtlasSpec) -> dict[str, Any]:
        return manager.submit(spec, resolve_data_dir(data_root, spec.data), kind=ATLAS).public()

    @app.post("/jobs/render", status_code=202, dependencies=auth)
    def submit_render(spec: RenderSpec) -> dict[str, Any]:
        data_dir = resolve_data_dir(data_root, spec.data)
        source = job_or_404(spec.atlases_from)
        if source.kind != EDIT or source.status != DONE:
            raise HTTPException(
                409, f"Job {source.id} is a {source.status} {source.kind} job; render needs a done edit"
            )
        if source.spec.data != spec.data:
            raise HTTPException(400, f"Job {source.id} edited {source.spec.data!r}, not {spec.data!r}.")
        files = {MASK: decode_png(spec.mask_png)} if spec.mask_png else None
        job = manager.submit(spec, data_dir, kind=RENDER, inputs={"atlases": str(source.out_dir)}, files=files)
        return job.public()

    @app.post("/jobs/fit", status_code=202, dependencies=auth)
    def submit_fit(spec: FitSpec) -> dict[str, Any]:
        video = upload_path(data_root, spec.upload)
        target = data_root / spec.data
        busy = any(j.kind == FIT and j.spec.data == spec.data and j.status not in TERMINAL for j in manager.list())
        if target.exists() or busy:
            raise HTTPException(409, f"Data folder {spec.data!r} already exists (or is being fitted); pick a new name.")
        return manager.submit(spec, video, kind=FIT, inputs={"target": str(target)}).public()

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

    @app.get("/jobs/{job_id}/files/{name}", dependencies=auth, response_class=FileResponse)
    def job_file(job_id: JobId, name: str) -> FileResponse:
        job = job_or_404(job_id)
        if not ARTIFACT_NAME.match(name) or not (job.out_dir / name).is_file():
            raise HTTPException(404, f"Job {job_id} has no file {name!r} (yet); GET /jobs/{job_id} lists its files.")
        media_type = "image/png" if name.endswith(".png") else "application/json"
        return FileResponse(job.out_dir / name, media_type=media_type, headers={"Cache-Control": "no-store"})

    @app.delete("/jobs/{job_id}", dependencies=auth)
    def cancel(job_id: JobId) -> dict[str, Any]:
        job = job_or_404(job_id)
        job = manager.cancel(job_id)
        if job.status != CANCELLED:
            raise HTTPException(409, f"Job {job_id} already finished ({job.status}).")
        return job.public()

    app.include_router(clips_router(data_root, max_upload_bytes), dependencies=auth)
    mount_ui(app)
    app.add_middleware(
        BodySizeLimit,
        limit=max_body_bytes,
        route_limits={"/jobs/render": max(max_body_bytes, RENDER_BODY_BYTES)},
        streamed_prefixes=(UPLOADS_PATH,),
    )
    return app


def decode_png(encoded: str) -> bytes:
    """A client's base64 PNG (a ``data:image/png;base64,`` prefix allowed), checked to be a PNG."""
    _, _, payload = encoded.rpartition(",")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, "mask_png is not valid base64.") from None
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 24:
        raise HTTPException(400, "mask_png is not a PNG image.")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR
    if width > MAX_MASK_SIDE or height > MAX_MASK_SIDE:  # a small file may still decode to gigabytes
        raise HTTPException(400, f"mask_png is {width}x{height}; a fg atlas is at most {MAX_MASK_SIDE} px a side.")
    return data


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


def check_port_free(host: str, port: int) -> None:
    """The address can be bound now (uvicorn binds only once the workers are warm, minutes later)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise SvEngineError(f"Cannot resolve --host {host}: {err}.", "pass an IP address such as 127.0.0.1.") from err
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            raise SvEngineError(
                f"Cannot listen on {host}:{port}: {err.strerror}.",
                "pass a free --port (or stop the process holding it).",
            ) from err
