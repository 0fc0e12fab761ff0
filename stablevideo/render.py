"""Rendering a video from (edited) atlases, as StableVideo's ``render``.

The fg atlas (edited, cropped to ``fg_bbox``; optionally mixed with the original where the user mask
is 1) is padded back to the grid-atlas size with *replicate*, both atlases are sampled at every
frame's render grid (bilinear, align_corners False), clamped to [0, 1] and alpha-composited. The
sampling + compositing + uint8 conversion run in one fused kernel on CUDA (sv_engine.kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sv_engine.kernels import render_composite
from sv_engine.stablevideo.atlas import AtlasData

from sv_engine.errors import SvEngineError


def mix_user_mask(edited: torch.Tensor, original: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Where ``mask`` is 1 keep the ``original`` atlas (SV: ``edited·(1 − mask) + original·mask``)."""
    if mask is None:
        return edited
    if mask.shape[-2:] != edited.shape[-2:]:
        raise SvEngineError(
            f"Mask size {tuple(mask.shape[-2:])} differs from the fg atlas size {tuple(edited.shape[-2:])}.",
            "draw the mask on the exported fg atlas PNG (same width and height).",
        )
    return edited * (1 - mask) + original * mask


def pad_fg_atlas(cropped: torch.Tensor, data: AtlasData) -> torch.Tensor:
    """(3, h, w) atlas cropped to ``fg_bbox`` -> (3, H, W) grid-atlas size, padded by replicate."""
    top, left, height, width = data.fg_bbox
    if tuple(cropped.shape[-2:]) != (height, width):
        raise SvEngineError(
            f"Foreground atlas is {cropped.shape[-1]}x{cropped.shape[-2]} but this video's is {width}x{height}.",
            "edit the fg atlas exported by `sv-engine atlas export` without resizing it.",
        )
    grid_h, grid_w = data.fg_grid_atlas.shape[-2:]
    pad = (left, grid_w - (left + width), top, grid_h - (top + height))
    return F.pad(cropped[None], pad, mode="replicate")[0]


def check_bg_atlas(bg_atlas: torch.Tensor, data: AtlasData) -> None:
    if tuple(bg_atlas.shape[-2:]) != tuple(data.bg_grid_atlas.shape[-2:]):
        raise SvEngineError(
            f"Background atlas is {bg_atlas.shape[-1]}x{bg_atlas.shape[-2]} but this video's is "
            f"{data.bg_grid_atlas.shape[-1]}x{data.bg_grid_atlas.shape[-2]}.",
            "edit the bg atlas exported by `sv-engine atlas export` without resizing it.",
        )


@torch.no_grad()
def render_video(
    data: AtlasData, fg_atlas_cropped: torch.Tensor, bg_atlas: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames from a cropped fg atlas (3, h, w) and a bg atlas (3, H_bg, W_bg) in [0, 1]."""
    check_bg_atlas(bg_atlas, data)
    device = data.alpha.device
    fg = pad_fg_atlas(
        mix_user_mask(fg_atlas_cropped.to(device), data.cropped_fg_atlas, None if mask is None else mask.to(device)),
        data,
    )
    # The kernels take channels-last atlases; the padded fg atlas is sampled with zero padding like SV.
    return render_composite(
        channels_last(fg), channels_last(bg_atlas.to(device)), data.fg.render_grid, data.bg.render_grid, data.alpha
    )


def channels_last(atlas: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> contiguous (H, W, C)."""
    return atlas.permute(1, 2, 0).contiguous()
