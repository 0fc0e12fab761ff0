"""Keyframe selection, keyframe crops and their control images, as StableVideo makes them."""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from sv_engine.stablevideo.atlas import AtlasData

from sv_engine.errors import SvEngineError

CROP_MIN_COVER = 0.95


def default_keyframes(num_frames: int, count: int = 3) -> list[int]:
    """Evenly spaced keyframes at round(T·k/(count + ½)): SV's "20, 40, 60" for its 70-frame clips."""
    return sorted({min(num_frames - 1, round(num_frames * k / (count + 0.5))) for k in range(1, count + 1)})


def parse_keyframes(text: str | None, num_frames: int) -> list[int]:
    """ "20,40,60" -> [20, 40, 60] (checked against the video); empty -> :func:`default_keyframes`."""
    if not text:
        return default_keyframes(num_frames)
    return check_keyframes(keyframe_indices(text), num_frames)


def keyframe_indices(text: str) -> list[int]:
    """ "20,40,60" -> [20, 40, 60] (not yet checked against a video)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise SvEngineError(
            f"must be comma-separated integers, got {text!r}.", "pass e.g. 20,40,60.", field="keyframes"
        ) from err


def check_keyframes(frames: list[int], num_frames: int) -> list[int]:
    """``frames`` if every index is a frame of the video, else a clear error."""
    bad = [f for f in frames if not 0 <= f < num_frames]
    if not frames or bad:
        raise SvEngineError(
            f"Keyframe(s) {bad or frames} out of range for a {num_frames}-frame video.",
            f"use frame indices in 0..{num_frames - 1}.",
            field="keyframes",
        )
    return frames


@dataclass
class KeyframeCrop:
    """A random crop of one keyframe's foreground region (pixel box ``y, x, h, w`` in the frame)."""

    frame: int
    y: int
    x: int
    h: int
    w: int
    uv_pix: torch.Tensor  # (h, w, 2) fg atlas grid pixels (shifted like AtlasData.fg.uv_pix)
    alpha: torch.Tensor  # (h, w)
    image: torch.Tensor  # (3, h, w) original frame × alpha, float [0, 1]


def sample_keyframe_crops(
    data: AtlasData, keyframes: list[int], rng: random.Random, generator: torch.Generator
) -> list[KeyframeCrop]:
    """Per keyframe, a 95–100 % random crop (at least 129 px) of its mask boundary."""
    crops = []
    min_size = 2**7 + 1
    frame_h, frame_w = data.alpha.shape[-2:]
    for t in keyframes:
        y0, x0, bh, bw = data.boundaries[t].tolist()
        th = max(rng.randint(round(CROP_MIN_COVER * bh), bh), min_size)
        tw = max(rng.randint(round(CROP_MIN_COVER * bw), bw), min_size)
        dy = int(torch.randint(0, max(bh - th, 0) + 1, (1,), generator=generator))
        dx = int(torch.randint(0, max(bw - tw, 0) + 1, (1,), generator=generator))
        # Frames smaller than the 129 px minimum crash the original; we keep the crop inside the frame.
        th, tw = min(th, frame_h), min(tw, frame_w)
        y, x = min(max(y0 + dy, 0), frame_h - th), min(max(x0 + dx, 0), frame_w - tw)
        sl = (slice(y, y + th), slice(x, x + tw))
        crops.append(
            KeyframeCrop(
                t, y, x, th, tw, data.fg.uv_pix[t][sl], data.alpha[t][sl], data.fg_reconstruction(t)[:, sl[0], sl[1]]
            )
        )
    return crops


def crop_uv_range(crops: list[KeyframeCrop], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The atlas span the crops' uvs are normalised over: [min(0, uv_min), max(R, uv_max)] per axis."""
    lo = torch.zeros(2, dtype=torch.long)
    hi = torch.full((2,), resolution, dtype=torch.long)
    for crop in crops:
        lo = torch.minimum(lo, crop.uv_pix.reshape(-1, 2).amin(dim=0).long().cpu())
        hi = torch.maximum(hi, crop.uv_pix.reshape(-1, 2).amax(dim=0).ceil().long().cpu())
    return lo, hi


def normalized_grid(crop: KeyframeCrop, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(h, w, 2) grid_sample coordinates of the crop over the atlas span [lo, hi] -> [-1, 1]."""
    lo, hi = lo.to(crop.uv_pix), hi.to(crop.uv_pix)
    return 2 * (crop.uv_pix - lo) / (hi - lo) - 1


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """SV's annotator resize: short side to ``resolution``, each side rounded to a multiple of 64."""
    h, w = image.shape[:2]
    k = float(resolution) / min(h, w)
    new_h, new_w = int(np.round(h * k / 64.0)) * 64, int(np.round(w * k / 64.0)) * 64
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def canny_control(image: np.ndarray, low: int = 100, high: int = 200) -> torch.Tensor:
    """(1, 3, H, W) float control image in [0, 1] from the Canny edges of a uint8 RGB image."""
    edges = cv2.Canny(image, low, high)
    return torch.from_numpy(np.repeat(edges[None], 3, axis=0)).float()[None] / 255.0
