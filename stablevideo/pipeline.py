"""The StableVideo edit, end to end: one object that keeps its models loaded between edits.

``StableVideoPipeline.edit`` = open the video (NLA maps cached, atlases) -> foreground keyframe
propagation -> background depth edit -> render. ``sv-engine edit``, ``demo``, ``bench`` and the
render service all use this one implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sv_engine.stablevideo.background import edit_background
from sv_engine.stablevideo.foreground import ForegroundEdit, edit_foreground
from sv_engine.stablevideo.images import tensor_to_image
from sv_engine.stablevideo.keyframes import check_keyframes, default_keyframes
from sv_engine.stablevideo.models.components import SDComponents
from sv_engine.stablevideo.models.diffusion import ControlledDenoiser, resolve_seed
from sv_engine.stablevideo.params import EditParams
from sv_engine.stablevideo.render import render_video
from sv_engine.stablevideo.session import SessionCache, VideoSession
from sv_engine.stablevideo.stage_timer import StageTimer
from sv_engine.stablevideo.video_io import contact_sheet

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fg_atlas: torch.Tensor  # (3, h, w) edited fg atlas (cropped to its bbox)
    bg_atlas: torch.Tensor  # (3, H, W) edited bg atlas
    foreground: ForegroundEdit
    session: VideoSession
    seed: int
    keyframes: list[int]
    timings: dict[str, float] = field(default_factory=dict)

    def preview(self) -> np.ndarray:
        """A contact sheet: original and edited atlases, keyframe edits, sample frames."""
        atlas = self.session.atlas
        tiles = [
            ("fg atlas", tensor_to_image(atlas.cropped_fg_atlas)),
            ("fg atlas edited", tensor_to_image(self.fg_atlas)),
            ("bg atlas", tensor_to_image(atlas.bg_grid_atlas)),
            ("bg atlas edited", tensor_to_image(self.bg_atlas)),
        ]
        tiles += [(f"keyframe {k}", edit) for k, edit in zip(self.keyframes, self.foreground.keyframe_edits)]
        t = self.frames.shape[0]
        for i in sorted({0, t // 3, (2 * t) // 3, t - 1}):
            tiles += [(f"frame {i}", tensor_to_image(atlas.frames[i])), (f"frame {i} edited", self.frames[i])]
        return np.asarray(contact_sheet(tiles))


class StableVideoPipeline:
    """Models + devices for StableVideo edits; reuse one instance for many edits (models stay warm).

    An inference backend (ONNX Runtime, TensorRT, torch.compile) takes over the networks through
    ``unet_controlnet`` ({"canny"|"depth": callable}) and ``denoiser_overrides`` (text_encode,
    vae_encode, vae_decode), with :class:`ControlledDenoiser`'s contracts; absent entries run the
    torch modules.
    """

    def __init__(self, components: SDComponents, device: torch.device, unet_controlnet: dict[str, Callable] | None = None, denoiser_overrides: dict[str, Callable] | None = None) -> None:
        self.components = components.eval()
        self.device = device
        self.sessions = SessionCache(device)
        unet_controlnet = unet_controlnet or {}
        overrides = denoiser_overrides or {}
        self.fg_denoiser = ControlledDenoiser(components, "canny", unet_controlnet=unet_controlnet.get("canny"), **overrides)
        self.bg_denoiser = ControlledDenoiser(components, "depth", unet_controlnet=unet_controlnet.get("depth"), **overrides)

    def edit(self, data_dir: str | Path, params: EditParams) -> EditResult:
        params.validate()
        timer = StageTimer()
        with timer("open video (maps, atlases)"):
            session = self.sessions.open(data_dir)
        num_frames = session.video.config.num_frames
        keyframes = default_keyframes(num_frames) if params.keyframes is None else check_keyframes(params.keyframes, num_frames)
        seed = resolve_seed(params.seed)
        log.info("editing %s: keyframes %s, seed %d, %d steps, strength %.2f", session.video.name, keyframes, seed, params.steps, params.strength)
        with timer("foreground"):
            fg = edit_foreground(session.atlas, self.fg_denoiser, params, keyframes, seed, timer)
        if params.edit_background:
            with timer("background"):
                bg_atlas, _ = edit_background(session.atlas.bg_grid_atlas, self.components.depth_model, self.bg_denoiser, params, seed, timer)
        else:
            bg_atlas = session.atlas.bg_grid_atlas
        with timer("render"):
            frames = render_video(session.atlas, fg.atlas, bg_atlas).cpu().numpy()
        return EditResult(frames, fg.atlas, bg_atlas, fg, session, seed, keyframes, timer.as_dict())
