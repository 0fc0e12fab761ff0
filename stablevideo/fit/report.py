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
def video_psnr(nla: NLAModel, layout: Layout, frames: torch.Tensor, frame_ids: list[int] | None = None) -> float:
    """PSNR of the layered reconstruction against the input frames (T, H, W, 3) in [0, 1]."""
    ids = list(range(frames.shape[0])) if frame_ids is None else frame_ids
    mse = 0.0
    for t in ids:
        rgb = reconstruct_frames(nla, layout, [t], frames.device)[0][0]
        mse += float((rgb.clamp(0, 1) - frames[t]).pow(2).mean())
    mse /= len(ids)
    return 99.0 if mse <= 1e-10 else 10.0 * math.log10(1.0 / mse)


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
