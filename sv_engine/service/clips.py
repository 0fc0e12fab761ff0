"""The clips a service can edit (the data folders under its data root) and video uploads to fit.

``GET /clips`` lists the data folders (frames, size, whether an NLA checkpoint is there, the default
keyframes), ``GET /clips/{name}/frames/{i}`` serves one original frame, ``PUT /uploads/{filename}``
stores a video (the raw request body, at most ``max_upload_bytes``) under ``<data root>/.uploads/``
for a fit job. Every path is resolved and checked to stay inside the data root.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

UPLOADS_PATH = "/uploads/"
TOO_BIG = "Upload is larger than {} bytes (serve --max-upload)."
UPLOADS_DIR = ".uploads"
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def list_clips(data_root: Path) -> list[dict[str, Any]]:
    """Every data folder directly under ``data_root`` (those whose config.json reads)."""
    from sv_engine.stablevideo.data import read_config
    from sv_engine.stablevideo.keyframes import default_keyframes

    clips = []
    for folder in sorted(p for p in data_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "config.json").is_file() or not folder.resolve().is_relative_to(data_root):
            continue
        try:
            config = read_config(folder)
        except SvEngineError as err:
            log.warning("skipping %s: %s", folder, err.what)
            continue
        clips.append(
            {
                "name": folder.name,
                "frames": config.num_frames,
                "width": config.resx,
                "height": config.resy,
                "fitted": (folder / "checkpoint").is_file(),
                "default_keyframes": default_keyframes(config.num_frames),
            }
        )
    return clips


def upload_path(data_root: Path, name: str) -> Path:
    """The stored upload ``name`` (as ``PUT /uploads`` returned it); 404 when there is none."""
    path = data_root / UPLOADS_DIR / name
    if not SAFE_NAME.match(name) or not path.is_file():
        raise HTTPException(404, f"No upload {name!r}; PUT /uploads/{{filename}} first.")
    return path


def clips_router(data_root: Path, max_upload_bytes: int) -> APIRouter:
    router = APIRouter()

    @router.get("/clips")
    def clips() -> dict[str, Any]:
        return {"clips": list_clips(data_root), "max_upload_bytes": max_upload_bytes}

    @router.get("/clips/{name}/frames/{index}", response_class=FileResponse)
    def frame(
        name: str = PathParam(pattern=SAFE_NAME.pattern), index: int = PathParam(ge=0, le=100_000)
    ) -> FileResponse:
        from sv_engine.service.jobs import resolve_data_dir
        from sv_engine.stablevideo.data import frame_files

        files = frame_files(resolve_data_dir(data_root, name))
        if index >= len(files):
            raise HTTPException(404, f"Clip {name!r} has {len(files)} frames; no frame {index}.")
        path = files[index].resolve()
        if not path.is_relative_to(data_root):
            raise HTTPException(404, f"Frame {index} of {name!r} lies outside the data root.")
        return FileResponse(path, media_type="image/png" if path.suffix == ".png" else "image/jpeg")

    @router.put(UPLOADS_PATH + "{filename}", status_code=201)
    async def upload(request: Request, filename: str = PathParam(pattern=SAFE_NAME.pattern)) -> dict[str, Any]:
        if Path(filename).suffix.lower() not in VIDEO_SUFFIXES:
            raise HTTPException(400, f"Upload a video ({', '.join(VIDEO_SUFFIXES)}), not {filename!r}.")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise HTTPException(413, TOO_BIG.format(max_upload_bytes))
        folder = data_root / UPLOADS_DIR
        folder.mkdir(exist_ok=True)
        stored = f"{uuid.uuid4().hex[:8]}-{filename}"  # never another upload's file
        partial = folder / f".{stored}.partial"
        size = 0
        try:
            with partial.open("wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_upload_bytes:
                        raise HTTPException(413, TOO_BIG.format(max_upload_bytes))
                    fh.write(chunk)
            if size == 0:
                raise HTTPException(400, "Empty upload: send the video file as the request body.")
            partial.replace(folder / stored)
        finally:
            partial.unlink(missing_ok=True)
        log.info("upload %s (%d bytes)", stored, size)
        return {"upload": stored, "bytes": size}

    return router
