"""Batched atlas warp: sample one atlas into K keyframe crops in one launch.

``out[k, :, y, x] = grid_sample(atlas, grids[k], bilinear, padding_mode="zeros",
align_corners=False)[:, y, x]`` (RGB), and ``valid[k, y, x]`` says the grid point lies inside
[-1, 1]² (bounds included), i.e. the sample came from the atlas rather than from padding.

Keyframe crops of different sizes: pad them into one (K, h, w, 2) batch with :func:`pad_grids`
(padding is a grid value outside [-1, 1], so padded pixels come out zero and invalid) and crop each
result back to its own size.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from sv_engine.kernels import _checks
from sv_engine.kernels._atlas import check_atlas, rgba, sample_rgb
from sv_engine.kernels._nvrtc import KernelSource, launch, ptr

from sv_engine.errors import SvEngineError

SOURCE = KernelSource("warp.cu", includes=("sample.cuh",))
_THREADS = 256
# The value pad_grids() fills with: outside [-1, 1] and far enough to sample zero.
_PAD_VALUE = 4.0


def warp_atlas(atlas: torch.Tensor, grids: torch.Tensor, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``atlas`` at K keyframe grids.

    Args:
        atlas: (H_a, W_a, C) channels-last, C = 4 (fast path) or 3, float32 or float16.
        grids: (K, h, w, 2) float32 in grid_sample's convention (x then y, [-1, 1]).
        backend: ``"auto"`` | ``"cuda"`` | ``"torch"`` (see :func:`render_composite`).

    Returns:
        ``(crops, valid)``: crops (K, 3, h, w) float32 and valid (K, h, w) bool, on the inputs' device.
    """
    device = _check_inputs(atlas, grids)
    if _checks.resolve_backend(backend, device) == "torch":
        return warp_atlas_reference(atlas, grids)
    return _warp_cuda(atlas, grids)


def warp_atlas_reference(atlas: torch.Tensor, grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch implementation of :func:`warp_atlas` (same arguments and result), any device."""
    _check_inputs(atlas, grids)
    crops = sample_rgb(atlas, grids, "zeros").permute(0, 3, 1, 2).contiguous()
    valid = (grids.abs() <= 1).all(dim=-1)
    return crops, valid


def pad_grids(grids: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (h_k, w_k, 2) grids of different sizes into one (K, max h, max w, 2) batch.

    Padded points lie outside [-1, 1], so :func:`warp_atlas` returns zero and ``valid=False`` there;
    crop ``crops[k, :, :h_k, :w_k]`` to recover keyframe k.
    """
    if not grids:
        raise SvEngineError("pad_grids got no grids.", "Pass at least one (h, w, 2) grid.")
    for k, g in enumerate(grids):
        _checks.check_tensor(f"grids[{k}]", g, (torch.float32,), (None, None, 2), grids[0].device)
    h = max(g.shape[0] for g in grids)
    w = max(g.shape[1] for g in grids)
    batch = torch.full((len(grids), h, w, 2), _PAD_VALUE, dtype=torch.float32, device=grids[0].device)
    for k, g in enumerate(grids):
        batch[k, : g.shape[0], : g.shape[1]] = g
    return batch


def _check_inputs(atlas: torch.Tensor, grids: torch.Tensor) -> torch.device:
    device = check_atlas("atlas", atlas).device
    _checks.check_tensor("grids", grids, (torch.float32,), (None, None, None, 2), device)
    return device


def _warp_cuda(atlas: torch.Tensor, grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    device = grids.device
    k, h, w, _ = grids.shape
    crops = torch.empty((k, 3, h, w), dtype=torch.float32, device=device)
    valid = torch.empty((k, h, w), dtype=torch.bool, device=device)
    n = k * h * w
    if n == 0:
        return crops, valid
    atlas, grids = _checks.aligned(rgba(atlas)), _checks.aligned(grids)
    kernel = "warp_atlas_f32" if atlas.dtype == torch.float32 else "warp_atlas_f16"
    args = [
        ptr(atlas),
        ctypes.c_int(atlas.shape[0]),
        ctypes.c_int(atlas.shape[1]),
        ptr(grids),
        ctypes.c_longlong(h * w),
        ctypes.c_longlong(n),
        ptr(crops),
        ptr(valid),
    ]
    launch(SOURCE.function(device, kernel), ((n + _THREADS - 1) // _THREADS, 1, 1), (_THREADS, 1, 1), args, device)
    return crops, valid
