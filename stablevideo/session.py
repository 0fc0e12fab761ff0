"""Opening a video for editing: data folder -> NLA maps (cached on disk) -> atlas data, on one device."""

from __future__ import annotations

import logging
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sv_engine.stablevideo.atlas import AtlasData, build_atlas_data
from sv_engine.stablevideo.data import VideoData, folder_stamp, load_video_data
from sv_engine.stablevideo.maps import VideoMaps, load_or_compute_maps

log = logging.getLogger(__name__)


@dataclass
class VideoSession:
    video: VideoData
    maps: VideoMaps
    atlas: AtlasData
    device: torch.device
    #: The bg atlas's depth control per detect resolution: a function of the video alone, so the first
    #: edit that needs it computes it and the video's later edits reuse it.
    bg_depth: dict[int | None, np.ndarray] = field(default_factory=dict)


def atlas_placement(session: VideoSession) -> dict:
    """Where the exported atlas images sit in StableVideo's grid atlas (``atlas.json`` of ``atlas export``)."""
    atlas = session.atlas
    return {
        "video": session.video.name,
        "checkpoint_sha256": session.video.checkpoint_sha256,
        "grid_atlas_resolution": atlas.resolution,
        "fg": {
            "grid_size": [atlas.fg.max_u, atlas.fg.max_v],
            "grid_offset": [atlas.fg.min_u, atlas.fg.min_v],
            "bbox": dict(zip(("top", "left", "height", "width"), atlas.fg_bbox, strict=True)),
        },
        "bg": {"grid_size": [atlas.bg.max_u, atlas.bg.max_v], "grid_offset": [atlas.bg.min_u, atlas.bg.min_v]},
    }


def open_video(data_dir: str | Path, device: torch.device) -> VideoSession:
    return session_for(load_video_data(data_dir), device)


def session_for(video: VideoData, device: torch.device) -> VideoSession:
    """The maps (from the on-disk cache when the checkpoint matches) and atlas data of a loaded video."""
    maps = load_or_compute_maps(video, device)
    return VideoSession(video, maps, build_atlas_data(video, maps, device), device)


class SessionCache:
    """Keeps the last few opened videos of a warm pipeline, so repeated edits skip loading, maps and atlases.

    A video is reused while its folder's :func:`~sv_engine.stablevideo.data.folder_stamp` (size, mtime
    and inode of config.json, the checkpoint and every frame) is unchanged, so a repeated edit does no
    per-edit work for the video; any change to the folder loads it again (and the maps cache then
    checks the checkpoint's sha256).
    """

    def __init__(self, device: torch.device, capacity: int = 2) -> None:
        self.device = device
        self.capacity = capacity
        self._sessions: dict[str, tuple[tuple, VideoSession]] = {}
        self._opening: dict[str, tuple[tuple, Future]] = {}

    @staticmethod
    def _root(data_dir: str | Path) -> str:
        return str(Path(data_dir).expanduser().resolve())

    def open_in_background(self, data_dir: str | Path, executor: Executor) -> None:
        """Starts opening ``data_dir`` on ``executor`` (a cold start opens the video while the models
        load); the next :meth:`open` of it takes the result if the folder is unchanged meanwhile. A
        failure is not raised here: that :meth:`open` opens the video again and raises it."""
        root = self._root(data_dir)
        self._opening[root] = (
            folder_stamp(root),
            executor.submit(lambda: session_for(load_video_data(root), self.device)),
        )

    def open(self, data_dir: str | Path) -> VideoSession:
        root = self._root(data_dir)
        stamp = folder_stamp(root)  # taken before loading: a change made meanwhile shows at the next open
        self._take_background_open(root)
        cached = self._sessions.pop(root, None)
        if cached is not None and cached[0] == stamp:
            log.info("video %s: reused from this session (folder unchanged)", Path(root).name)
            self._sessions[root] = cached  # most recently used last
            return cached[1]
        session = session_for(load_video_data(root), self.device)
        self._keep(root, stamp, session)
        return session

    def _take_background_open(self, root: str) -> None:
        opening = self._opening.pop(root, None)
        if opening is None:
            return
        stamp, future = opening
        try:
            session = future.result()
        except Exception as exc:  # noqa: BLE001 - opened again by the caller, which raises it
            log.info("video %s: opening it in the background failed (%s); opening it again", Path(root).name, exc)
            return
        self._keep(root, stamp, session)

    def _keep(self, root: str, stamp: tuple, session: VideoSession) -> None:
        self._sessions[root] = (stamp, session)
        while len(self._sessions) > self.capacity:
            self._sessions.pop(next(iter(self._sessions)))
