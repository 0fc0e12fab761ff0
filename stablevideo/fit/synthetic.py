"""Synthetic clips with known ground truth: a textured square moving over a textured, panning
background (tests and ``benchmarks/fit_bench.py``)."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_texture(h: int, w: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float in [0.1, 0.9]: blurred colour noise, contrast-stretched."""
    noise = rng.random((h, w, 3)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), sigma)
    lo, hi = tex.min(axis=(0, 1)), tex.max(axis=(0, 1))
    return 0.1 + 0.8 * (tex - lo) / np.maximum(hi - lo, 1e-6)


def make_clip(
    num_frames: int = 12,
    width: int = 64,
    height: int = 48,
    seed: int = 0,
    pan_px: float | None = None,
    detail: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """frames (T, H, W, 3) uint8 and masks (T, H, W) bool of a moving textured square over a panning
    background. ``detail`` > 1 makes finer textures; the motion is integer-free (sub-pixel)."""
    rng = np.random.default_rng(seed)
    m = max(width, height)
    pan = pan_px if pan_px is not None else 0.02 * m  # background pixels per frame
    bg_w = int(width + abs(pan) * num_frames + 4)
    bg = smooth_texture(height, bg_w, max(1.0, m / 24 / detail), rng)
    side = max(6, int(round(m * 0.28)))
    fg = smooth_texture(side, side, max(1.0, m / 40 / detail), rng)
    fg = np.clip(fg[..., ::-1] * 1.1, 0, 1)  # different colour statistics from the background
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    masks = np.zeros((num_frames, height, width), bool)
    x0, y0 = 0.15 * width, 0.25 * height
    vx, vy = 0.5 * width / num_frames, 0.25 * height / num_frames
    for t in range(num_frames):
        shift = np.float32([[1, 0, -pan * t], [0, 1, 0]])
        img = cv2.warpAffine(bg, shift, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        fx, fy = x0 + vx * t, y0 + vy * t
        place = np.float32([[1, 0, fx], [0, 1, fy]])
        fg_img = cv2.warpAffine(fg, place, (width, height), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(np.ones((side, side), np.float32), place, (width, height), flags=cv2.INTER_LINEAR)
        img = alpha[..., None] * fg_img + (1 - alpha[..., None]) * img
        frames[t] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        masks[t] = alpha > 0.5
    return frames, masks


def make_blob_clip(
    num_frames: int = 24, width: int = 96, height: int = 64, seed: int = 0, pan_px: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """frames and exact masks of a textured, non-rigid blob that moves *in place* (it sways, stretches
    and rotates around a nearly fixed centre, covering most of its pixels in most frames: the case
    where a temporal median takes the object for the background) over a textured background that
    pans ``pan_px`` pixels per frame."""
    rng = np.random.default_rng(seed)
    m = max(width, height)
    bg_w = int(width + abs(pan_px) * num_frames + 4)
    bg = smooth_texture(height, bg_w, max(1.0, m / 30), rng)
    tex = np.clip(smooth_texture(height, width, max(1.0, m / 40), rng)[..., ::-1] * 1.15, 0, 1)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    masks = np.zeros((num_frames, height, width), bool)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for t in range(num_frames):
        phase = 2 * np.pi * t / num_frames
        shift = np.float32([[1, 0, -pan_px * t], [0, 1, 0]])
        img = cv2.warpAffine(bg, shift, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        cx = 0.45 * width + 0.06 * width * np.sin(phase)
        cy = 0.5 * height + 0.04 * height * np.cos(phase)
        ax = 0.2 * m * (1 + 0.15 * np.sin(2 * phase))
        ay = 0.3 * height * (1 - 0.1 * np.sin(2 * phase))
        ang = 0.3 * np.sin(phase)
        dx, dy = xs - cx, ys - cy
        u = (np.cos(ang) * dx + np.sin(ang) * dy) / ax
        v = (-np.sin(ang) * dx + np.cos(ang) * dy) / ay
        r = np.sqrt(u * u + v * v) - 0.12 * np.sin(3 * np.arctan2(v, u) + phase)  # wobbly outline
        alpha = np.clip((1.0 - r) * m / 6, 0, 1)[..., None]
        # the texture rides with the blob (rotation + shift), so the flow inside it is the object's motion
        rot = cv2.getRotationMatrix2D((float(cx), float(cy)), float(np.degrees(ang)), 1.0)
        rot[:, 2] += [cx - 0.45 * width, cy - 0.5 * height]
        obj = cv2.warpAffine(tex, rot, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        img = alpha * obj + (1 - alpha) * img
        frames[t] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        masks[t] = alpha[..., 0] > 0.5
    return frames, masks
