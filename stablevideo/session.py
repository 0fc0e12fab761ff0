"""Opening a video for editing: data folder -> NLA maps (cached on disk) -> atlas data, on one device."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from sv_engine.stablevideo.atlas import AtlasData, build_atlas_data
from sv_engine.stablevideo.data import VideoData, load_video_data
from sv_engine.stablevideo.maps import VideoMaps, load_or_compute_maps

log = logging.getLogger(__name__)


@dataclass
class VideoSession:
    video: VideoData
    maps: VideoMaps
    atlas: AtlasData
    device: torch.device


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
    """Keeps the last few opened videos of a warm pipeline, so repeated edits skip maps and atlases.

    A video is reused only while its checkpoint (sha256), config and frames (the decoded pixels
    themselves) are unchanged: loading the folder again is cheap, the maps and grid atlases are not.
    """

    def __init__(self, device: torch.device, capacity: int = 2) -> None:
        self.device = device
        self.capacity = capacity
        self._sessions: dict[tuple, VideoSession] = {}

    def open(self, data_dir: str | Path) -> VideoSession:
        video = load_video_data(data_dir)
        key = (str(video.root), video.checkpoint_sha256, video.config)
        cached = self._sessions.pop(key, None)
        if cached is not None and torch.equal(cached.video.frames, video.frames):
            log.info("video %s: maps and atlases reused from this session", video.name)
            self._sessions[key] = cached  # most recently used last
            return cached
        session = session_for(video, self.device)
        self._sessions[key] = session
        while len(self._sessions) > self.capacity:
            self._sessions.pop(next(iter(self._sessions)))
        return session
