"""Fused render + composite: two atlases, per-frame UV grids and alpha -> uint8 RGB frames.

Semantics (the torch reference below is the specification; the CUDA kernel in ``render.cu``
reproduces it):

1. ``fg = clamp(grid_sample(fg_atlas, fg_grid, bilinear, fg_padding, align_corners=False), 0, 1)``
   and the same for ``bg``; only the first 3 atlas channels (RGB) are used.
2. ``v = alpha * fg + (1 - alpha) * bg``.
3. ``frame = floor(255 * clamp(v, 0, 1))`` as uint8: truncation, exactly StableVideo's
   ``(255 * video).to(torch.uint8)``.

Padding: grid_sample's ``"zeros"`` or ``"border"``, chosen per atlas. StableVideo pads its cropped
foreground atlas back to full size by *replicate* and then samples with zero padding; a pipeline
that keeps the cropped atlas can pass ``fg_padding="border"`` to get the replicate behaviour for
samples that fall off the crop.
"""

from __future__ import annotations

import ctypes

import torch
from sv_engine.kernels import _checks
from sv_engine.kernels._atlas import check_atlas, rgba, sample_rgb
from sv_engine.kernels._nvrtc import KernelSource, launch, ptr

SOURCE = KernelSource("render.cu", includes=("sample.cuh",))
_THREADS = 256
# The CPU reference samples this many frames at a time to bound its fp32 temporaries.
_REFERENCE_FRAMES_PER_CHUNK = 8


class _SvAtlas(ctypes.Structure):
    """Mirror of ``struct SvAtlas`` in render.cu (passed to the kernel by value)."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("height", ctypes.c_int),
        ("width", ctypes.c_int),
        ("padding", ctypes.c_int),
    ]


def render_composite(
    fg_atlas: torch.Tensor,
    bg_atlas: torch.Tensor,
    fg_grid: torch.Tensor,
    bg_grid: torch.Tensor,
    alpha: torch.Tensor,
    *,
    fg_padding: str = "zeros",
    bg_padding: str = "zeros",
    backend: str = "auto",
) -> torch.Tensor:
    """Render T composited frames from a foreground and a background atlas in one launch.

    Args:
        fg_atlas, bg_atlas: (H_a, W_a, C) channels-last atlases, C = 4 (RGBA-padded, the fast path:
            one 16-byte fp32 / 8-byte fp16 load per texel) or C = 3 (padded to 4 with one copy per
            call), values nominally in [0, 1]; float32 or float16, both the same dtype. The two
            atlases may differ in size.
        fg_grid, bg_grid: (T, H, W, 2) float32 sampling positions in grid_sample's convention
            (x then y, [-1, 1] spans the atlas, align_corners=False). fp16 grids are refused: 10
            mantissa bits cannot address a 2048-texel atlas to sub-texel precision.
        alpha: (T, H, W) float32 foreground opacity.
        fg_padding, bg_padding: ``"zeros"`` or ``"border"`` (grid_sample's padding_mode).
        backend: ``"auto"`` (CUDA kernel for CUDA tensors, torch reference on CPU), ``"cuda"`` or
            ``"torch"``.

    Returns:
        (T, H, W, 3) uint8 frames on the inputs' device.
    """
    device = _check_inputs(fg_atlas, bg_atlas, fg_grid, bg_grid, alpha, fg_padding, bg_padding)
    if _checks.resolve_backend(backend, device) == "torch":
        return render_composite_reference(
            fg_atlas, bg_atlas, fg_grid, bg_grid, alpha, fg_padding=fg_padding, bg_padding=bg_padding
        )
    return _render_cuda(fg_atlas, bg_atlas, fg_grid, bg_grid, alpha, fg_padding, bg_padding)


def render_composite_reference(
    fg_atlas: torch.Tensor,
    bg_atlas: torch.Tensor,
    fg_grid: torch.Tensor,
    bg_grid: torch.Tensor,
    alpha: torch.Tensor,
    *,
    fg_padding: str = "zeros",
    bg_padding: str = "zeros",
) -> torch.Tensor:
    """The torch implementation of :func:`render_composite` (same arguments and result).

    It is the specification the CUDA kernel is tested against and the CPU path. Runs on any device,
    ``_REFERENCE_FRAMES_PER_CHUNK`` frames at a time.
    """
    _check_inputs(fg_atlas, bg_atlas, fg_grid, bg_grid, alpha, fg_padding, bg_padding)
    frames = []
    for t0 in range(0, fg_grid.shape[0], _REFERENCE_FRAMES_PER_CHUNK):
        chunk = slice(t0, t0 + _REFERENCE_FRAMES_PER_CHUNK)
        fg = sample_rgb(fg_atlas, fg_grid[chunk], fg_padding).clamp(0, 1)
        bg = sample_rgb(bg_atlas, bg_grid[chunk], bg_padding).clamp(0, 1)
        a = alpha[chunk].unsqueeze(-1)
        v = a * fg + (1 - a) * bg
        frames.append(torch.floor(v.clamp(0, 1) * 255).to(torch.uint8))
    return torch.cat(frames)


def _check_inputs(fg_atlas, bg_atlas, fg_grid, bg_grid, alpha, fg_padding, bg_padding) -> torch.device:
    _checks.check_choice("fg_padding", fg_padding, _checks.PADDING_MODES)
    _checks.check_choice("bg_padding", bg_padding, _checks.PADDING_MODES)
    device = check_atlas("fg_atlas", fg_atlas).device
    check_atlas("bg_atlas", bg_atlas, device, fg_atlas.dtype)
    _checks.check_tensor("fg_grid", fg_grid, (torch.float32,), (None, None, None, 2), device)
    _checks.check_tensor("bg_grid", bg_grid, (torch.float32,), (None, None, None, 2), device)
    _checks.check_tensor("alpha", alpha, (torch.float32,), (None, None, None), device)
    sizes = {"fg_grid": fg_grid.shape[:3], "bg_grid": bg_grid.shape[:3], "alpha": alpha.shape}
    _checks.check_same_size("(T, H, W)", sizes)
    return device


def _render_cuda(fg_atlas, bg_atlas, fg_grid, bg_grid, alpha, fg_padding, bg_padding) -> torch.Tensor:
    device = fg_grid.device
    t, h, w, _ = fg_grid.shape
    out = torch.empty((t, h, w, 3), dtype=torch.uint8, device=device)
    n = t * h * w
    if n == 0:
        return out
    fg_atlas, bg_atlas = _checks.aligned(rgba(fg_atlas)), _checks.aligned(rgba(bg_atlas))
    fg_grid, bg_grid, alpha = (_checks.aligned(x) for x in (fg_grid, bg_grid, alpha))
    padding = {"zeros": 0, "border": 1}
    atlases = [
        _SvAtlas(a.data_ptr(), a.shape[0], a.shape[1], padding[p])
        for a, p in ((fg_atlas, fg_padding), (bg_atlas, bg_padding))
    ]
    kernel = "render_composite_f32" if fg_atlas.dtype == torch.float32 else "render_composite_f16"
    func = SOURCE.function(device, kernel)
    threads_needed = (n + 3) // 4  # each thread shades 4 pixels
    args = [*atlases, ptr(fg_grid), ptr(bg_grid), ptr(alpha), ptr(out), ctypes.c_longlong(n)]
    launch(func, ((threads_needed + _THREADS - 1) // _THREADS, 1, 1), (_THREADS, 1, 1), args, device)
    return out
