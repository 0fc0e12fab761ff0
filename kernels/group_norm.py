"""GroupNorm, optionally followed by SiLU, over channels-last activations in one fused pass.

``group_norm(x, groups, weight, bias, eps, silu=...)`` is ``F.group_norm`` (then ``F.silu``). On a
channels-last fp16/bf16 CUDA tensor it runs ``group_norm.cu``: PyTorch's CUDA GroupNorm reads NCHW
only, so every channels-last GroupNorm of the UNet copied its input to NCHW and the next
convolution copied the result back, with SiLU one more pass over the tensor. The kernel reads the
tensor twice (statistics, then normalise + SiLU) and writes it once, in channels-last.

Statistics are float32 (shifted sums per thread, Chan's merge across threads and tiles, in a fixed
order: the same bits on every run); the output is ``x * (rstd * gamma) + (beta - mean * rstd *
gamma)`` rounded once, as ATen computes it. Where the kernel does not apply (CPU, fp32, NCHW,
odd channel counts, autocast, or a graph being traced for torch.compile, torch.export or ONNX) the
call is ``F.group_norm`` itself, so exported graphs keep the standard operators.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F
from sv_engine.kernels import _checks
from sv_engine.kernels._nvrtc import KernelSource, launch, ptr

SOURCE = KernelSource(
    "group_norm.cu",
    includes=("half.cuh",),
    kernels=("group_norm_nhwc_stats", "group_norm_nhwc_finalize", "group_norm_nhwc_apply"),
)
_DTYPES = {torch.float16: 0, torch.bfloat16: 1}
_MAX_THREADS = 256
_APPLY_THREADS = 256
#: Stats blocks aimed at per launch: enough to fill an H100/H200 (132 SMs) several times over.
_TARGET_BLOCKS = 1024


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    silu: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """``F.group_norm(x, num_groups, weight, bias, eps)``, then ``F.silu`` when ``silu``.

    Args:
        x: (N, C, H, W).
        backend: ``"auto"`` (the fused kernel where it applies: :func:`fused_applies`, else torch),
            ``"cuda"`` (the kernel; an input it cannot take is an error) or ``"torch"``.
    """
    _checks.check_choice("backend", backend, _checks.BACKENDS)
    applies = backend != "torch" and fused_applies(x, num_groups, weight, bias)
    if backend == "cuda" and not applies:
        from sv_engine.errors import SvEngineError

        raise SvEngineError(
            f"the fused group norm cannot take this input ({x.dtype}, {tuple(x.shape)}, {x.device}).",
            "Pass a channels-last fp16/bf16 CUDA tensor with weight and bias of its dtype, C divisible "
            "by 8 and by 2 * num_groups, or use backend='auto'.",
        )
    if not applies:
        return group_norm_reference(x, num_groups, weight, bias, eps, silu=silu)
    return _group_norm_cuda(x, num_groups, weight, bias, eps, silu)


def group_norm_reference(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    silu: bool = False,
) -> torch.Tensor:
    """The torch implementation of :func:`group_norm` (any device, dtype and layout)."""
    out = F.group_norm(x, num_groups, weight, bias, eps)
    return F.silu(out) if silu else out


def fused_applies(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    """Whether :func:`group_norm` runs the kernel on ``x``: a channels-last fp16/bf16 CUDA (N, C, H, W)
    tensor, affine weights of its dtype, C divisible by 8 and by 2 * groups (at most 512 channels per
    group), outside autocast and graph tracing."""
    if not (x.is_cuda and x.dtype in _DTYPES and x.dim() == 4) or _checks.tracing():
        return False
    n, c, h, w = x.shape
    if weight is None or bias is None or weight.dtype != x.dtype or bias.dtype != x.dtype:
        return False
    if c % 8 or c % num_groups or (c // num_groups) % 2 or c // num_groups > 2 * _MAX_THREADS or n * h * w == 0:
        return False
    if torch.is_autocast_enabled("cuda"):
        return False
    # Channels-last memory, and not also NCHW-contiguous (a 1x1 map is both: torch's path is as fast).
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() and x.data_ptr() % 16 == 0


@functools.cache
def _launch_shape(channels: int, groups: int, pixels: int, batch: int) -> tuple[int, int, int, int]:
    """(channel pairs per block, pixel lanes, tiles, pixels per tile) of the stats launch."""
    pairs, pairs_per_group = channels // 2, channels // groups // 2
    per_block = max(d for d in range(pairs_per_group, min(pairs, _MAX_THREADS) + 1, pairs_per_group) if pairs % d == 0)
    lanes = max(1, _MAX_THREADS // per_block)
    blocks_per_tile = (pairs // per_block) * batch
    tiles = min(pixels, max(1, -(-_TARGET_BLOCKS // blocks_per_tile)))
    pixels_per_tile = -(-pixels // tiles)
    tiles = -(-pixels // pixels_per_tile)
    return per_block, lanes, tiles, pixels_per_tile


def _finalize_threads(tiles: int) -> int:
    """A power of two from 32 to 256, one thread per tile where it can (the finalize's fixed tree)."""
    return min(_MAX_THREADS, max(32, 1 << (tiles - 1).bit_length()))


def _group_norm_cuda(
    x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float, silu: bool
) -> torch.Tensor:
    device = x.device
    n, c, h, w = x.shape
    pixels = h * w
    bf16 = ctypes.c_int(_DTYPES[x.dtype])
    per_block, lanes, tiles, pixels_per_tile = _launch_shape(c, groups, pixels, n)
    partial = torch.empty((n, tiles, groups, 3), dtype=torch.float32, device=device)
    launch(
        SOURCE.function(device, "group_norm_nhwc_stats"),
        (c // 2 // per_block, tiles, n),
        (per_block, lanes, 1),
        [ptr(x), ctypes.c_int(c), ctypes.c_int(pixels), ctypes.c_int(c // groups), ctypes.c_int(pixels_per_tile),
         bf16, ptr(partial)],
        device,
    )  # fmt: skip
    scale = torch.empty((n, c), dtype=torch.float32, device=device)
    shift = torch.empty((n, c), dtype=torch.float32, device=device)
    weight, bias = weight.contiguous(), bias.contiguous()
    launch(
        SOURCE.function(device, "group_norm_nhwc_finalize"),
        (groups, n, 1),
        (_finalize_threads(tiles), 1, 1),
        [ptr(partial), ctypes.c_int(tiles), ctypes.c_int(c), ctypes.c_int(c // groups), ptr(weight), ptr(bias),
         ctypes.c_float(eps), bf16, ptr(scale), ptr(shift)],
        device,
    )  # fmt: skip
    y = torch.empty_like(x, memory_format=torch.channels_last)
    vectors = x.numel() // 8
    launch(
        SOURCE.function(device, "group_norm_nhwc_apply"),
        (-(-vectors // _APPLY_THREADS), 1, 1),
        (_APPLY_THREADS, 1, 1),
        [ptr(x), ptr(scale), ptr(shift), ctypes.c_longlong(vectors), ctypes.c_int(c), ctypes.c_longlong(pixels * c),
         ctypes.c_int(int(silu)), bf16, ptr(y)],
        device,
    )  # fmt: skip
    return y
