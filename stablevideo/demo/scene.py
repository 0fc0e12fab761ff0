"""The analytic scene behind the bundled demo clip ("skicat").

A cat face (cut from ``skimage.data.chelsea()`` with a soft elliptical mask) moves, rotates slightly
and grows over a panning background (``skimage.data.rocket()``). Everything is analytic: the
per-pixel fg/bg atlas coordinates, alpha, and the two textures, so the frames are rendered FROM the
atlases and the fitted NLA checkpoint can be checked against ground truth.

Conventions are StableVideo's (see ``sv_engine.stablevideo.nla``): atlas grid R = 2000; fg uv in
[0, 1]² with atlas pixel ``uv·R``; bg uv in [−1, 0]² with atlas pixel ``(uv + 1)·R``; one atlas
pixel is about one video pixel. The textures are images on the atlas pixel grid: ``image[j, i]`` is
the colour at atlas pixel ``(origin_i + i, origin_j + j)``, i.e. at atlas coordinate
``(origin + (i, j)) / R − shift``, sampled bilinearly in between (edge-clamped outside).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RESX, RESY, NUM_FRAMES = 384, 216, 30
ATLAS_RES = 2000  # StableVideo's grid atlas resolution R

# Background: camera pan (video px) over the whole clip; texture origin in the bg atlas (atlas px).
PAN_X, PAN_Y = 64.0, 8.0
BG_MARGIN = 4
BG_ORIGIN = (200, 200)
BG_SCALE = 0.75  # rocket() is 640x427 -> 480x320
BG_CROP_TOP = 70  # rows of the rescaled rocket image above the crop
BG_SIZE = (RESX + int(PAN_X) + 2 * BG_MARGIN, RESY + int(PAN_Y) + 2 * BG_MARGIN)  # (w, h) = (456, 232)

# Foreground: the cat face, centred at FG_CENTER in the fg atlas (atlas px), ellipse semi-axes in atlas px.
FG_SCALE = 0.33  # chelsea() is 451x300 -> 149x99; the face is ~100 px
FG_FACE = (240.0, 150.0)  # face centre in chelsea() pixels
FG_CENTER = (1000.0, 1000.0)
ELLIPSE_AXES = (48.0, 42.0)
ALPHA_LOGIT_MAX = 5.0  # pre-tanh alpha inside/outside: alpha = 0.99·(tanh(z)+1)/2 + 0.001 ∈ [0.001, 0.991]
ALPHA_EDGE = 6.0  # soft-edge width (atlas px) of the logit profile
FG_FIT_HALF = 96  # the fg atlas is fitted (and meaningful) on FG_CENTER ± this (covers SV's mask boundaries)


@dataclass(frozen=True)
class Texture:
    """An RGB texture on the atlas pixel grid; ``shift`` 0 for fg, 1 for bg (uv_pix = (uv + shift)·R)."""

    image: torch.Tensor  # (h, w, 3) float32 in [0, 1]
    origin: tuple[int, int]  # atlas pixel (i, j) of image[0, 0]
    shift: float

    def sample(self, uv: torch.Tensor) -> torch.Tensor:
        """Bilinear colour at atlas coordinates uv (..., 2) -> (..., 3), edge-clamped."""
        h, w, _ = self.image.shape
        pix = (uv.reshape(-1, 2).float() + self.shift) * ATLAS_RES
        gx = (pix[:, 0] - self.origin[0]) / (w - 1) * 2 - 1
        gy = (pix[:, 1] - self.origin[1]) / (h - 1) * 2 - 1
        grid = torch.stack([gx, gy], dim=-1)[None, None]  # (1, 1, N, 2)
        img = self.image.permute(2, 0, 1)[None]
        out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out[0, :, 0].T.reshape(*uv.shape[:-1], 3)

    def grid_uv(self, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Atlas coordinates of the integer atlas pixels in box = (i0, j0, i1, j1) (end-exclusive) -> (h, w, 2)."""
        h, w, _ = self.image.shape
        i0, j0, i1, j1 = box or (self.origin[0], self.origin[1], self.origin[0] + w, self.origin[1] + h)
        jj, ii = torch.meshgrid(torch.arange(j0, j1), torch.arange(i0, i1), indexing="ij")
        return torch.stack([ii, jj], dim=-1).float() / ATLAS_RES - self.shift


def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)


@functools.lru_cache(maxsize=1)
def analytic_textures() -> tuple[Texture, Texture]:
    """(fg, bg) textures, built deterministically from scikit-image's bundled photos."""
    from skimage import data
    from skimage.transform import rescale

    cat = rescale(_to_float(data.chelsea()), FG_SCALE, channel_axis=-1, anti_aliasing=True, order=1)
    face_i, face_j = FG_FACE[0] * FG_SCALE, FG_FACE[1] * FG_SCALE
    # Place the image so the face centre lands on FG_CENTER (integer origin; the offset is absorbed in the centre).
    fg_origin = (int(round(FG_CENTER[0] - face_i)), int(round(FG_CENTER[1] - face_j)))
    fg = Texture(torch.from_numpy(np.clip(cat, 0, 1).astype(np.float32)), fg_origin, 0.0)

    rocket = rescale(_to_float(data.rocket()), BG_SCALE, channel_axis=-1, anti_aliasing=True, order=1)
    w, h = BG_SIZE
    left = (rocket.shape[1] - w) // 2
    crop = rocket[BG_CROP_TOP : BG_CROP_TOP + h, left : left + w]
    assert crop.shape[:2] == (h, w), crop.shape
    bg = Texture(torch.from_numpy(np.ascontiguousarray(np.clip(crop, 0, 1)).astype(np.float32)), BG_ORIGIN, 1.0)
    return fg, bg


def camera_pan(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Background offset (video px) at (fractional) frame t: ease-in-out to the right, a small vertical bob."""
    tau = t / (NUM_FRAMES - 1)
    return PAN_X * (0.5 - 0.5 * torch.cos(math.pi * tau)), PAN_Y * (0.5 - 0.5 * torch.cos(2 * math.pi * tau))


def object_pose(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Foreground centre (cx, cy) in video px, scale s (video px per atlas px) and rotation theta (rad)."""
    tau = t / (NUM_FRAMES - 1)
    cx = 100.0 + 190.0 * tau
    cy = 120.0 - 20.0 * torch.sin(math.pi * tau)
    s = 0.9 + 0.2 * tau
    theta = 0.12 * torch.sin(math.pi * tau)
    return cx, cy, s, theta


def analytic_fields(xyt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel coordinates (N, 3) = (x, y, t) -> fg uv (N, 2), bg uv (N, 2), alpha pre-tanh logit z (N,).

    alpha = 0.99·(tanh(z) + 1)/2 + 0.001 (StableVideo's alpha formula applied to out = tanh(z)).
    """
    xyt = xyt.double()
    x, y, t = xyt[:, 0], xyt[:, 1], xyt[:, 2]
    cx, cy, s, theta = object_pose(t)
    dx, dy = (x - cx) / s, (y - cy) / s
    c, sn = torch.cos(theta), torch.sin(theta)
    du, dv = c * dx + sn * dy, -sn * dx + c * dy  # rotate by -theta into the object's frame
    fg = torch.stack([FG_CENTER[0] + du, FG_CENTER[1] + dv], dim=-1) / ATLAS_RES
    px, py = camera_pan(t)
    bg_pix = torch.stack([x + px + BG_ORIGIN[0] + BG_MARGIN, y + py + BG_ORIGIN[1] + BG_MARGIN], dim=-1)
    bg = bg_pix / ATLAS_RES - 1.0
    a, b = ELLIPSE_AXES
    q = torch.sqrt((du / a) ** 2 + (dv / b) ** 2)
    dist = (q - 1.0) * (0.5 * (a + b))  # ≈ signed distance to the ellipse, atlas px (negative inside)
    z = -ALPHA_LOGIT_MAX * torch.tanh(dist / ALPHA_EDGE)
    return fg.float(), bg.float(), z.float()


def alpha_from_logit(z: torch.Tensor) -> torch.Tensor:
    return 0.99 * (torch.tanh(z) + 1.0) * 0.5 + 0.001


def pixel_coords(t: float, resx: int = RESX, resy: int = RESY) -> torch.Tensor:
    """(H·W, 3) integer pixel coordinates (x, y, t) of frame t, row-major (same as maps.pixel_grid)."""
    ys, xs = torch.meshgrid(torch.arange(resy), torch.arange(resx), indexing="ij")
    return torch.stack([xs, ys, torch.full_like(xs, 0) + t], dim=-1).reshape(-1, 3).double()


@dataclass
class AnalyticMaps:
    """Ground truth for one frame, StableVideo conventions: fg_uv, bg_uv (H, W, 2); alpha (H, W)."""

    fg_uv: torch.Tensor
    bg_uv: torch.Tensor
    alpha: torch.Tensor


def analytic_maps(t: float) -> AnalyticMaps:
    """The exact fg uv, bg uv and alpha of frame t (cheap: a few ms)."""
    fg, bg, z = analytic_fields(pixel_coords(t))
    return AnalyticMaps(fg.view(RESY, RESX, 2), bg.view(RESY, RESX, 2), alpha_from_logit(z).view(RESY, RESX))


def render_frame(t: float) -> torch.Tensor:
    """Frame t as float (H, W, 3) in [0, 1]: alpha·fg_tex(fg_uv) + (1 − alpha)·bg_tex(bg_uv)."""
    fg_tex, bg_tex = analytic_textures()
    maps = analytic_maps(t)
    a = maps.alpha[..., None]
    return (a * fg_tex.sample(maps.fg_uv) + (1 - a) * bg_tex.sample(maps.bg_uv)).clamp(0, 1)


def render_frames_uint8() -> np.ndarray:
    """The whole clip (T, H, W, 3) uint8, as written to the data folder."""
    return np.stack([(render_frame(t).numpy() * 255.0 + 0.5).astype(np.uint8) for t in range(NUM_FRAMES)])


def fg_fit_box() -> tuple[int, int, int, int]:
    """The fg atlas region (atlas px, (i0, j0, i1, j1) end-exclusive) where the fg texture is fitted."""
    ci, cj = int(FG_CENTER[0]), int(FG_CENTER[1])
    return ci - FG_FIT_HALF, cj - FG_FIT_HALF, ci + FG_FIT_HALF + 1, cj + FG_FIT_HALF + 1


def bg_fit_box() -> tuple[int, int, int, int]:
    w, h = BG_SIZE
    return BG_ORIGIN[0], BG_ORIGIN[1], BG_ORIGIN[0] + w, BG_ORIGIN[1] + h
