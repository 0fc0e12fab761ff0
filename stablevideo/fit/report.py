"""Fit quality: reconstruction PSNR, ``fit_report.json`` and ``fit_preview.png``."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sv_engine.stablevideo.fit.losses import Layout
from sv_engine.stablevideo.nla import NLAModel, alpha_from_output, atlas_rgb, bg_uv, fg_uv

from sv_engine.atomic_write import atomic_write_bytes


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = float((a.float() - b.float()).pow(2).mean())
    return 99.0 if mse <= 1e-10 else 10.0 * math.log10(1.0 / mse)


@torch.no_grad()
def evaluate_points(
    nla: NLAModel, xyt: torch.Tensor, chunk: int = 1 << 16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 3) normalised points -> reconstructed rgb (N, 3), alpha (N,), fg uv (N, 2), bg uv (N, 2); fp32."""
    outs: list[list[torch.Tensor]] = [[], [], [], []]
    for start in range(0, xyt.shape[0], chunk):
        p = xyt[start : start + chunk]
        uf, ub = fg_uv(nla.fg_mapping(p)), bg_uv(nla.bg_mapping(p))
        a = alpha_from_output(nla.alpha(p))[:, 0]
        cf, cb = atlas_rgb(nla.atlas(uf)), atlas_rgb(nla.atlas(ub))
        outs[0].append(a[:, None] * cf + (1 - a[:, None]) * cb)
        outs[1].append(a)
        outs[2].append(uf)
        outs[3].append(ub)
    return tuple(torch.cat(o) for o in outs)  # type: ignore[return-value]


@torch.no_grad()
def reconstruct_frames(
    nla: NLAModel, layout: Layout, frame_ids: list[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruction (len, H, W, 3), alpha (len, H, W), fg uv and bg uv (len, H, W, 2) of the given frames."""
    h, w = layout.resy, layout.resx
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    rgbs, alphas, ufs, ubs = [], [], [], []
    for t in frame_ids:
        xyt = layout.normalize(
            xs.reshape(-1).float(), ys.reshape(-1).float(), torch.full((h * w,), float(t), device=device)
        )
        rgb, a, uf, ub = evaluate_points(nla, xyt)
        rgbs.append(rgb.view(h, w, 3))
        alphas.append(a.view(h, w))
        ufs.append(uf.view(h, w, 2))
        ubs.append(ub.view(h, w, 2))
    return torch.stack(rgbs), torch.stack(alphas), torch.stack(ufs), torch.stack(ubs)


@torch.no_grad()
def video_psnr_and_coverage(
    nla: NLAModel, layout: Layout, frames: torch.Tensor, masks: torch.Tensor | None
) -> tuple[float, list[float], list[float] | None]:
    """Reconstruction PSNR over the whole video, per-frame foreground coverage (fraction of pixels with
    alpha > 0.5) and, with ``masks`` (T, H, W), the per-frame IoU of that foreground with them."""
    mse, coverage, iou = 0.0, [], []
    for t in range(frames.shape[0]):
        rgb, alpha, _, _ = reconstruct_frames(nla, layout, [t], frames.device)
        mse += float((rgb[0].clamp(0, 1) - frames[t]).pow(2).mean())
        fg = alpha[0] > 0.5
        coverage.append(round(float(fg.float().mean()), 5))
        if masks is not None:
            m = masks[t] > 0.5
            union = float((fg | m).sum())
            iou.append(round(float((fg & m).sum()) / union, 4) if union else 1.0)
    mse /= frames.shape[0]
    return (99.0 if mse <= 1e-10 else 10.0 * math.log10(1.0 / mse)), coverage, (iou if masks is not None else None)


def foreground_check(fg_coverage: list[float], mask_coverage: np.ndarray, fg_iou: list[float] | None, fix: str) -> dict:
    """The report's foreground fields: per-frame coverage of the fitted fg layer beside the masks' it
    started from, and ``collapsed`` (with a ``warning`` naming the fix) where the layer lost the object:
    under 1 % of the pixels in frames where the masks had at least 1 %, in most of those frames."""
    mask_cov = [round(float(c), 5) for c in mask_coverage]
    lost = [t for t, (f, m) in enumerate(zip(fg_coverage, mask_cov, strict=True)) if m >= 0.01 and f < 0.01]
    with_object = sum(m >= 0.01 for m in mask_cov)
    collapsed = with_object > 0 and len(lost) > 0.5 * with_object
    fg_mean, mask_mean = float(np.mean(fg_coverage)), float(np.mean(mask_cov))
    warning = None
    if collapsed:
        warning = (
            f"the foreground layer collapsed: alpha > 0.5 on {100 * fg_mean:.1f}% of the pixels where the masks had"
            f" {100 * mask_mean:.1f}% ({len(lost)} of {with_object} frames lost the object), so a foreground edit"
            f" would change nothing; {fix}"
        )
    return {
        "fg_coverage_mean": round(fg_mean, 5),
        "mask_coverage_mean": round(mask_mean, 5),
        "fg_iou_vs_masks_mean": round(float(np.mean(fg_iou)), 4) if fg_iou else None,
        "fg_coverage_per_frame": fg_coverage,
        "mask_coverage_per_frame": mask_cov,
        "fg_iou_vs_masks_per_frame": fg_iou,
        "fg_frames_lost": lost,
        "collapsed": collapsed,
        "warning": warning,
    }


@torch.no_grad()
def atlas_image(nla: NLAModel, uv_lo: torch.Tensor, uv_hi: torch.Tensor, size: int, device: torch.device) -> np.ndarray:
    """The atlas net grid-evaluated over [uv_lo, uv_hi] (its used extent), longest side ``size`` px. uint8 (h, w, 3)."""
    span = (uv_hi - uv_lo).clamp(min=1e-6)
    scale = size / float(span.max())
    w, h = max(2, int(float(span[0]) * scale)), max(2, int(float(span[1]) * scale))
    us = torch.linspace(float(uv_lo[0]), float(uv_hi[0]), w, device=device)
    vs = torch.linspace(float(uv_lo[1]), float(uv_hi[1]), h, device=device)
    vv, uu = torch.meshgrid(vs, us, indexing="ij")
    uv = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=1)
    rgb = torch.cat([atlas_rgb(nla.atlas(uv[i : i + 65536])) for i in range(0, uv.shape[0], 65536)])
    return (rgb.view(h, w, 3).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)


def _to_u8(x: torch.Tensor) -> np.ndarray:
    x = x.clamp(0, 1).cpu().numpy()
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    return (x * 255).astype(np.uint8)


def _pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.full((h, w, 3), 32, np.uint8)
    out[: img.shape[0], : img.shape[1]] = img[:h, :w]
    return out


@torch.no_grad()
def write_preview(path: Path, nla: NLAModel, layout: Layout, frames: torch.Tensor, num_rows: int = 3) -> None:
    """fit_preview.png: row 0 the fg and bg atlases over their used extent; then per sample frame
    original | reconstruction | alpha | fg layer (alpha · fg atlas colour)."""
    device = frames.device
    t_count = frames.shape[0]
    ids = sorted({0, t_count // 2, t_count - 1})[:num_rows]
    rec, alpha, uf, ub = reconstruct_frames(nla, layout, ids, device)
    fg_mask = alpha > 0.5
    fg_sel = uf[fg_mask] if fg_mask.any() else uf.reshape(-1, 2)
    h, w = layout.resy, layout.resx
    tile = max(h, w)
    atlases = [
        atlas_image(nla, fg_sel.min(0).values, fg_sel.max(0).values, tile, device),
        atlas_image(nla, ub.reshape(-1, 2).min(0).values, ub.reshape(-1, 2).max(0).values, tile, device),
    ]
    frame_rows = []
    for i, t in enumerate(ids):
        fg_layer = atlas_rgb(nla.atlas(uf[i].reshape(-1, 2))).view(h, w, 3) * alpha[i][..., None]
        frame_rows.append(
            np.concatenate([_to_u8(frames[t]), _to_u8(rec[i]), _to_u8(alpha[i]), _to_u8(fg_layer)], axis=1)
        )
    width = frame_rows[0].shape[1]
    atlas_row = np.concatenate([_pad_to(a, tile, a.shape[1]) for a in atlases], axis=1)
    atlas_row = _pad_to(atlas_row, tile, max(width, atlas_row.shape[1]))
    rows = [atlas_row] + [_pad_to(r, h, atlas_row.shape[1]) for r in frame_rows]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_report(path: Path, report: dict) -> None:
    atomic_write_bytes(path, json.dumps(report, indent=2, default=float).encode())
