"""Opening a video for editing: data folder -> NLA maps (cached) -> atlas data, on one device."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from sv_engine.stablevideo.atlas import AtlasData, build_atlas_data
from sv_engine.stablevideo.data import GRID_ATLAS_RESOLUTION, VideoData, load_video_data
from sv_engine.stablevideo.maps import FieldFn, VideoMaps, load_or_compute_maps

log = logging.getLogger(__name__)


@dataclass
class VideoSession:
    video: VideoData
    maps: VideoMaps
    atlas: AtlasData
    device: torch.device


def open_video(data_dir: str | Path, device: torch.device, field: FieldFn | None = None, use_cache: bool = True, resolution: int = GRID_ATLAS_RESOLUTION) -> VideoSession:
    video = load_video_data(data_dir)
    maps = load_or_compute_maps(video, device, field=field, use_cache=use_cache)
    atlas = build_atlas_data(video, maps, device, resolution)
    return VideoSession(video, maps, atlas, device)
