"""Atlas-space bookkeeping of a video, faithful to StableVideo's ``AtlasData``.

* layer uv -> grid pixels: ``(uv + shift)·R`` (shift 0 fg, 1 bg), minus the integer min over the whole
  video; the extent is the ceil of the max after that shift;
* the grid atlas image: the atlas net over the R×R grid, cropped to ``[min, min + extent)`` (we only
  evaluate the crop: identical result, a fraction of the work);
* mask boundaries per frame (alpha ≥ 0.99 bbox, +30 px border, grown to ≥ 129 px);
* the foreground atlas bounding box used to crop edited atlases for display/editing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from sv_engine.stablevideo.data import (
    GRID_ATLAS_RESOLUTION,
    MASK_ALPHA_THRESHOLD,
    MASK_BORDER,
    MIN_CROP_SIZE,
    VideoData,
)
from sv_engine.stablevideo.maps import VideoMaps
from sv_engine.stablevideo.nla import IMLP, atlas_rgb
from tqdm import tqdm

log = logging.getLogger(__name__)

FG_SHIFT = 0
BG_SHIFT = 1


@dataclass
class LayerUV:
    """One layer's per-pixel atlas positions in grid pixels, shifted so the video's minimum is 0."""

    uv_pix: torch.Tensor  # (T, H, W, 2) float (u, v)
    min_u: int
    min_v: int
    max_u: int  # extent (width) of the grid atlas crop
    max_v: int  # extent (height)

    @property
    def render_grid(self) -> torch.Tensor:
        """(T, H, W, 2) grid_sample coordinates in [-1, 1] over the grid atlas crop."""
        extent = torch.tensor([self.max_u, self.max_v], dtype=self.uv_pix.dtype, device=self.uv_pix.device)
        return self.uv_pix / extent * 2 - 1


def preprocess_uv(uv: torch.Tensor, resolution: int, shift: int) -> LayerUV:
    uv_pix = (uv + shift) * resolution
    lo, hi = torch.aminmax(uv_pix.reshape(-1, 2), dim=0)  # one pass over every pixel's UV, not two
    # `.long()` truncates toward zero, as in the original (not floor).
    min_u, min_v = (int(v) for v in lo.long())
    offset = torch.tensor([min_u, min_v], dtype=uv_pix.dtype, device=uv_pix.device)
    uv_pix = uv_pix - offset
    # The original's max of the shifted UVs: max(uv - m) is max(uv) - m exactly (a rounded difference
    # is monotonic in its first term).
    max_u, max_v = (int(v) for v in (hi - offset).ceil().long())
    return LayerUV(uv_pix, min_u, min_v, max_u, max_v)


@torch.no_grad()
def evaluate_grid_atlas(
    atlas: IMLP, layer: LayerUV, resolution: int, shift: int, device: torch.device | str, chunk_size: int = 1 << 16
) -> torch.Tensor:
    """(3, max_v, max_u) atlas image: grid point (row y, col x) = rgb(atlas(x/R − shift, y/R − shift)).

    Grid points of the crop outside [0, R)² are zero, like torchvision's crop of the full R×R image.
    """
    out = torch.zeros(3, layer.max_v, layer.max_u, device=device)
    y0, y1 = max(layer.min_v, 0), min(layer.min_v + layer.max_v, resolution)
    x0, x1 = max(layer.min_u, 0), min(layer.min_u + layer.max_u, resolution)
    if y1 <= y0 or x1 <= x0:
        return out
    ys, xs = torch.meshgrid(torch.arange(y0, y1, device=device), torch.arange(x0, x1, device=device), indexing="ij")
    points = torch.stack([xs.reshape(-1) / resolution - shift, ys.reshape(-1) / resolution - shift], dim=-1).float()
    rgb = torch.empty(points.shape[0], 3, device=device)
    for start in tqdm(
        range(0, points.shape[0], chunk_size), desc="grid atlas", leave=False, disable=points.shape[0] < 8 * chunk_size
    ):
        rgb[start : start + chunk_size] = atlas_rgb(atlas(points[start : start + chunk_size]))
    out[:, y0 - layer.min_v : y1 - layer.min_v, x0 - layer.min_u : x1 - layer.min_u] = rgb.T.reshape(
        3, y1 - y0, x1 - x0
    )
    return out


def mask_boundaries(
    alpha: torch.Tensor,
    border: int = MASK_BORDER,
    threshold: float = MASK_ALPHA_THRESHOLD,
    min_size: int = MIN_CROP_SIZE,
) -> torch.Tensor:
    """(T, 4) long [y, x, h, w]: per frame bbox of alpha ≥ threshold, grown by ``border``, at least ``min_size``.

    A frame with no foreground pixel gets the whole frame (the original crashes there).
    """
    t, resy, resx = alpha.shape
    out = torch.zeros(t, 4, dtype=torch.long)
    for i in range(t):
        ones = (alpha[i] >= threshold).nonzero()
        if ones.numel() == 0:
            out[i] = torch.tensor([0, 0, resy, resx])
            continue
        min_y, min_x = (max(int(v) - border, 0) for v in ones.amin(dim=0))
        max_y, max_x = (int(v) + border for v in ones.amax(dim=0))
        max_y, max_x = min(max_y, resy), min(max_x, resx)
        if max_y - min_y < min_size:
            pad = min_size - (max_y - min_y)
            if max_y + pad > resy:
                min_y -= pad
            else:
                max_y += pad
        if max_x - min_x < min_size:
            pad = min_size - (max_x - min_x)
            if max_x + pad > resx:
                min_x -= pad
            else:
                max_x += pad
        out[i] = torch.tensor([min_y, min_x, max_y - min_y, max_x - min_x])
    return out


def foreground_atlas_bbox(
    boundaries: torch.Tensor, grid_atlas_hw: tuple[int, int], fg_uv_pix: torch.Tensor
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the fg atlas region seen inside the mask boundaries.

    Faithful quirk: the running minimum starts at the grid atlas (height, width) although it is
    compared against (u, v); harmless unless the atlas is far from square.
    """
    # On the UVs' device, so a GPU video does not copy every frame's UVs to the host first (185 MB for 70
    # frames at 768x432); the per-frame reductions are queued without waiting between frames.
    min_uv = torch.tensor(grid_atlas_hw, dtype=torch.float32, device=fg_uv_pix.device)
    max_uv = torch.zeros(2, device=fg_uv_pix.device)
    for (y, x, h, w), uv in zip(boundaries.tolist(), fg_uv_pix, strict=False):
        crop = uv[max(y, 0) : y + h, max(x, 0) : x + w].reshape(-1, 2)
        min_uv = torch.minimum(crop.amin(dim=0), min_uv).floor()
        max_uv = torch.maximum(crop.amax(dim=0), max_uv).ceil()
    hw = (max_uv - min_uv).long().tolist()
    min_uv = min_uv.long().tolist()
    return min_uv[1], min_uv[0], hw[1], hw[0]


def crop_image(image: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """torchvision ``crop`` semantics on (..., H, W): regions outside the image are zero-filled."""
    out = image.new_zeros(*image.shape[:-2], height, width)
    h, w = image.shape[-2:]
    y0, y1 = max(top, 0), min(top + height, h)
    x0, x1 = max(left, 0), min(left + width, w)
    if y1 > y0 and x1 > x0:
        out[..., y0 - top : y1 - top, x0 - left : x1 - left] = image[..., y0:y1, x0:x1]
    return out


@dataclass
class AtlasData:
    """Everything about a video's atlases the edit and render steps need."""

    frames: torch.Tensor  # (T, 3, H, W) float [0, 1]
    alpha: torch.Tensor  # (T, H, W)
    fg: LayerUV
    bg: LayerUV
    fg_grid_atlas: torch.Tensor  # (3, fg.max_v, fg.max_u)
    bg_grid_atlas: torch.Tensor  # (3, bg.max_v, bg.max_u)
    boundaries: torch.Tensor  # (T, 4) [y, x, h, w]
    fg_bbox: tuple[int, int, int, int]  # (top, left, height, width) inside the fg grid atlas
    resolution: int

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def cropped_fg_atlas(self) -> torch.Tensor:
        """The foreground atlas as StableVideo shows it for editing: the grid atlas cropped to ``fg_bbox``."""
        return crop_image(self.fg_grid_atlas, *self.fg_bbox)

    def fg_reconstruction(self, t: int) -> torch.Tensor:
        """SV's foreground layer for keyframe crops: the original frame times alpha (not the atlas net)."""
        return self.frames[t] * self.alpha[t]


def build_atlas_data(
    video: VideoData, maps: VideoMaps, device: torch.device | str = "cpu", resolution: int = GRID_ATLAS_RESOLUTION
) -> AtlasData:
    maps = maps.to(device)
    fg = preprocess_uv(maps.fg_uv, resolution, FG_SHIFT)
    bg = preprocess_uv(maps.bg_uv, resolution, BG_SHIFT)
    atlas = video.nla.atlas.to(device)
    fg_grid = evaluate_grid_atlas(atlas, fg, resolution, FG_SHIFT, device)
    bg_grid = evaluate_grid_atlas(atlas, bg, resolution, BG_SHIFT, device)
    boundaries = mask_boundaries(maps.alpha.cpu())
    bbox = foreground_atlas_bbox(boundaries, tuple(fg_grid.shape[-2:]), fg.uv_pix)
    log.info("atlases: fg %dx%d (bbox %s), bg %dx%d", fg.max_u, fg.max_v, bbox, bg.max_u, bg.max_v)
    return AtlasData(video.frames.to(device), maps.alpha, fg, bg, fg_grid, bg_grid, boundaries, bbox, resolution)
