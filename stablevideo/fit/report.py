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


def _label(img: np.ndarray, text: str, scale: float, warn: bool = False) -> np.ndarray:
    """``text`` on a dark strip at the tile's top left (red when ``warn``)."""
    import cv2

    out = np.ascontiguousarray(img)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    pad = max(2, th // 3)
    cv2.rectangle(out, (0, 0), (min(out.shape[1] - 1, tw + 2 * pad), th + base + 2 * pad), (0, 0, 0), -1)
    colour = (255, 80, 80) if warn else (255, 255, 255)
    cv2.putText(out, text, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return out


def _fit(img: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    interp = cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_NEAREST
    return cv2.resize(img, (w, h), interpolation=interp)


@torch.no_grad()
def write_preview(path: Path, nla: NLAModel, layout: Layout, frames: torch.Tensor, num_rows: int = 3) -> None:
    """fit_preview.png, a labelled contact sheet without empty area: per sample frame (first, middle, last)
    input | reconstruction (PSNR) | alpha matte (fg coverage) | fg layer (alpha · fg atlas colour); below,
    the fg and bg atlases over their used extent, scaled to share one row of the sheet's width."""
    device = frames.device
    t_count = frames.shape[0]
    ids = sorted({0, t_count // 2, t_count - 1})[:num_rows]
    rec, alpha, uf, ub = reconstruct_frames(nla, layout, ids, device)
    fg_mask = alpha > 0.5
    h, w = layout.resy, layout.resx
    tw = int(np.clip(w, 320, 384))  # tiles legible for tiny clips, the sheet small for big ones
    th = max(2, int(round(h * tw / w)))
    scale = tw / 700
    rows = []
    for i, t in enumerate(ids):
        fg_layer = atlas_rgb(nla.atlas(uf[i].reshape(-1, 2))).view(h, w, 3) * alpha[i][..., None]
        cover = float(fg_mask[i].float().mean())
        tiles = [
            _label(_fit(_to_u8(frames[t]), tw, th), f"frame {t}: input", scale),
            _label(_fit(_to_u8(rec[i]), tw, th), f"reconstruction {psnr(rec[i].clamp(0, 1), frames[t]):.1f} dB", scale),
            _label(_fit(_to_u8(alpha[i]), tw, th), f"alpha>0.5: {100 * cover:.1f}%", scale, warn=cover < 0.01),
            _label(_fit(_to_u8(fg_layer), tw, th), "fg layer", scale),
        ]
        rows.append(np.concatenate(tiles, axis=1))
    width = rows[0].shape[1]
    empty = not bool(fg_mask.any())
    fg_sel = uf.reshape(-1, 2) if empty else uf[fg_mask]
    bg_sel = ub.reshape(-1, 2)
    atlases = [
        atlas_image(nla, fg_sel.min(0).values, fg_sel.max(0).values, 512, device),
        atlas_image(nla, bg_sel.min(0).values, bg_sel.max(0).values, 512, device),
    ]
    aspects = [a.shape[1] / a.shape[0] for a in atlases]
    row_h = max(2, int(round(width / sum(aspects))))
    w_fg = int(round(row_h * aspects[0]))
    fg_text = "fg atlas: EMPTY, the foreground layer holds nothing" if empty else "fg atlas (used extent)"
    atlas_row = np.concatenate(
        [
            _label(_fit(atlases[0], w_fg, row_h), fg_text, scale, warn=empty),
            _label(_fit(atlases[1], width - w_fg, row_h), "bg atlas (used extent)", scale),
        ],
        axis=1,
    )
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(rows + [atlas_row], axis=0)).save(buf, format="PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())


def write_report(path: Path, report: dict) -> None:
    atomic_write_bytes(path, json.dumps(report, indent=2, default=float).encode())
