"""Per-pixel NLA maps of a whole video: fg uv, bg uv and alpha for every (x, y, t).

Computed once per video in chunks and cached on disk; the cache file is keyed by the checkpoint's
sha256 and the video shape, so a new checkpoint never reuses stale maps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sv_engine.stablevideo.data import VideoConfig, VideoData
from sv_engine.stablevideo.nla import NLAField, NLAModel, normalize_xyt
from tqdm import tqdm

from sv_engine.atomic_write import atomic_torch_save
from sv_engine.paths import cache_root

log = logging.getLogger(__name__)

# (N, 3) normalised points -> (fg_uv, bg_uv, alpha); an ONNX/TensorRT engine can stand in for NLAField.
FieldFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class VideoMaps:
    """fg_uv, bg_uv: (T, H, W, 2) as (u, v); alpha: (T, H, W); all float32, SV conventions."""

    fg_uv: torch.Tensor
    bg_uv: torch.Tensor
    alpha: torch.Tensor

    def to(self, device: torch.device | str) -> VideoMaps:
        return VideoMaps(self.fg_uv.to(device), self.bg_uv.to(device), self.alpha.to(device))

    def save_npz(self, path: str | Path) -> None:
        np.savez_compressed(
            path, fg_uv=self.fg_uv.cpu().numpy(), bg_uv=self.bg_uv.cpu().numpy(), alpha=self.alpha.cpu().numpy()
        )


def pixel_grid(resx: int, resy: int, t: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H·W, 3) pixel coordinates (x, y, t) of frame t, row-major over (y, x)."""
    ys, xs = torch.meshgrid(torch.arange(resy, device=device), torch.arange(resx, device=device), indexing="ij")
    ts = torch.full_like(xs, t)
    return torch.stack([xs, ys, ts], dim=-1).reshape(-1, 3).float()


@torch.no_grad()
def compute_maps(
    field: FieldFn,
    config: VideoConfig,
    device: torch.device | str = "cpu",
    chunk_size: int = 1 << 18,
    progress: bool = True,
) -> VideoMaps:
    """Evaluates the NLA field on every pixel of every frame, ``chunk_size`` points at a time."""
    t, h, w = config.num_frames, config.resy, config.resx
    fg = torch.empty(t, h * w, 2, device=device)
    bg = torch.empty(t, h * w, 2, device=device)
    alpha = torch.empty(t, h * w, device=device)
    for frame in tqdm(range(t), desc="NLA maps", disable=not progress, leave=False):
        points = normalize_xyt(pixel_grid(w, h, frame, device), w, h, t)
        for start in range(0, points.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            fg[frame, sl], bg[frame, sl], alpha[frame, sl] = (o.float() for o in field(points[sl]))
    return VideoMaps(fg.view(t, h, w, 2), bg.view(t, h, w, 2), alpha.view(t, h, w))


def cache_dir() -> Path:
    return cache_root() / "maps"


def load_or_compute_maps(
    video: VideoData, device: torch.device | str = "cpu", field: FieldFn | None = None, use_cache: bool = True
) -> VideoMaps:
    """The video's maps from the cache when the checkpoint hash and shape match, else computed (and cached).

    On a GPU the NLA networks run as :class:`~sv_engine.stablevideo.fast_maps.FastMaps` (fp16 GEMMs,
    fp32 output layers): 70 frames 768x432 in 227 ms against 1160 ms in fp32, largest uv error 1e-4
    and alpha error 0.008 on the bundled clip's fitted NLA (H200, benchmarks/results/engines-*.json). Each form
    caches under its own name."""
    c = video.config
    device = torch.device(device)
    fast = field is None and device.type == "cuda" and isinstance(video.nla, NLAModel)  # fused fp16 MLPs
    form = "-fp16" if fast else ""
    path = cache_dir() / f"{video.checkpoint_sha256[:24]}-{c.resx}x{c.resy}x{c.num_frames}{form}.pt"
    if use_cache and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("checkpoint_sha256") == video.checkpoint_sha256:
                log.info("NLA maps from cache %s", path)
                return VideoMaps(blob["fg_uv"], blob["bg_uv"], blob["alpha"]).to(device)
        except Exception as err:  # a truncated cache file is rebuilt, never trusted
            log.warning("ignoring unreadable maps cache %s (%s); recomputing", path, err)
    if fast:
        from sv_engine.stablevideo.fast_maps import FastMaps

        maps = VideoMaps(*FastMaps(NLAField(video.nla).to(device).eval())(c))
    else:
        maps = compute_maps(field or NLAField(video.nla).to(device).eval(), c, device)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(
            {
                "checkpoint_sha256": video.checkpoint_sha256,
                "fg_uv": maps.fg_uv.cpu(),
                "bg_uv": maps.bg_uv.cpu(),
                "alpha": maps.alpha.cpu(),
            },
            path,
        )
    return maps
