"""Optical flow without downloaded weights (OpenCV DIS), forward-backward consistency and the dominant
(background) homography motion (the foreground masks built from them: :mod:`separation`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class Flows:
    """forward[t]: flow t -> t+1, backward[t]: flow t+1 -> t, both (T-1, H, W, 2) float32 (dx, dy) in
    pixels; *_valid: (T-1, H, W) bool, forward-backward consistent and landing inside the frame."""

    forward: np.ndarray
    backward: np.ndarray
    forward_valid: np.ndarray
    backward_valid: np.ndarray


def dis_flow(a: np.ndarray, b: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> np.ndarray:
    """DIS optical flow from RGB uint8 frame ``a`` to ``b`` -> (H, W, 2) float32."""
    dis = cv2.DISOpticalFlow_create(preset)
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    return dis.calc(ga, gb, None).astype(np.float32)


def warp_by_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Samples ``image`` (H, W, C) at x + flow(x) (bilinear, border replicate)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def consistency_mask(
    flow_ab: np.ndarray, flow_ba: np.ndarray, threshold: float = 1.0, relative: float = 0.05
) -> np.ndarray:
    """Forward-backward check: x -> x + f_ab(x) -> back by f_ba must return within
    ``threshold + relative·|f_ab|`` pixels, and x + f_ab(x) must land inside the frame. (H, W) bool."""
    h, w = flow_ab.shape[:2]
    back = warp_by_flow(flow_ba, flow_ab)
    err = np.linalg.norm(flow_ab + back, axis=2)
    mag = np.linalg.norm(flow_ab, axis=2)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    tx, ty = gx + flow_ab[..., 0], gy + flow_ab[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return (err < threshold + relative * mag) & inside


def compute_flows(frames: np.ndarray, progress: bool = True) -> Flows:
    """Forward and backward DIS flow between consecutive frames with consistency masks."""
    n = len(frames) - 1
    h, w = frames.shape[1:3]
    fw = np.empty((n, h, w, 2), np.float32)
    bw = np.empty((n, h, w, 2), np.float32)
    fwv = np.empty((n, h, w), bool)
    bwv = np.empty((n, h, w), bool)
    for t in tqdm(range(n), desc="optical flow (DIS)", disable=not progress, leave=False):
        fw[t] = dis_flow(frames[t], frames[t + 1])
        bw[t] = dis_flow(frames[t + 1], frames[t])
        fwv[t] = consistency_mask(fw[t], bw[t])
        bwv[t] = consistency_mask(bw[t], fw[t])
    log.info("optical flow: %.1f%% forward / %.1f%% backward pixels consistent", 100 * fwv.mean(), 100 * bwv.mean())
    return Flows(fw, bw, fwv, bwv)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def flow_homography(
    flow: np.ndarray, valid: np.ndarray, exclude: np.ndarray | None = None, step: int = 2
) -> np.ndarray:
    """The dominant (background) motion of a flow field as a 3x3 homography (RANSAC on a pixel subsample)."""
    h, w = flow.shape[:2]
    gx, gy = _grid(h, w)
    keep = valid.copy()
    if exclude is not None:
        keep &= ~exclude
    sub = np.zeros_like(keep)
    sub[::step, ::step] = True
    keep &= sub
    if keep.sum() < 16:
        keep = sub
    src = np.stack([gx[keep], gy[keep]], axis=1)
    dst = src + flow[keep]
    if len(src) > 20000:
        pick = np.random.default_rng(0).choice(len(src), 20000, replace=False)
        src, dst = src[pick], dst[pick]
    H, _ = cv2.findHomography(src, dst, cv2.RANSAC, 1.0)
    if H is None:
        H, _ = cv2.findHomography(src, dst, 0)
    return np.eye(3) if H is None else H


def apply_homography(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(..., 2) points through a 3x3 homography."""
    p = xy @ H[:2, :2].T + H[:2, 2]
    z = xy @ H[2, :2] + H[2, 2]
    return p / z[..., None]


def residual_motion(flow: np.ndarray, H: np.ndarray) -> np.ndarray:
    """|flow − the flow the homography predicts| per pixel, (H, W)."""
    h, w = flow.shape[:2]
    gx, gy = _grid(h, w)
    xy = np.stack([gx, gy], axis=-1)
    return np.linalg.norm(xy + flow - apply_homography(H, xy), axis=2)


def background_trajectory(flows: Flows, masks: np.ndarray | None) -> list[np.ndarray]:
    """Homographies H_t mapping frame-t pixels into frame-0 coordinates (chained from the backward
    flows' dominant motion, foreground excluded): the background layer's flow-initialised layout."""
    hs = [np.eye(3)]
    for t in range(len(flows.backward)):
        exclude = masks[t + 1] if masks is not None else None
        h_next_to_prev = flow_homography(flows.backward[t], flows.backward_valid[t], exclude)  # t+1 -> t
        hs.append(hs[-1] @ h_next_to_prev)
    return [h / h[2, 2] for h in hs]


def foreground_trajectory(masks: np.ndarray) -> np.ndarray:
    """Per-frame foreground centroid (T, 2) (x, y), interpolated over frames with empty masks."""
    t_count = len(masks)
    cents = np.full((t_count, 2), np.nan)
    for t in range(t_count):
        ys, xs = np.nonzero(masks[t])
        if len(xs):
            cents[t] = xs.mean(), ys.mean()
    ok = ~np.isnan(cents[:, 0])
    if not ok.any():
        h, w = masks.shape[1:]
        return np.tile([(w - 1) / 2, (h - 1) / 2], (t_count, 1))
    idx = np.arange(t_count)
    return np.stack([np.interp(idx, idx[ok], cents[ok, d]) for d in range(2)], axis=1)
