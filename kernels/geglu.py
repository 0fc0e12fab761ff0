"""GEGLU in one pass: ``value * F.gelu(gate)`` where ``value, gate = projected.chunk(2, dim=-1)``.

The transformer blocks' feed-forward projects each token to twice the inner width and gates one half
with the other. Unfused, torch reads both halves as strided views with its generic elementwise loops
and writes and re-reads ``F.gelu(gate)``; ``geglu.cu`` reads each half once with 16-byte loads and
writes the product once, computed in float and rounded once. Where it does not apply (CPU, fp32, an
inner width not divisible by 8, autocast, or a graph being traced for torch.compile, torch.export or
ONNX) the call is the torch expression itself.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from sv_engine.kernels import _checks
from sv_engine.kernels._nvrtc import KernelSource, launch, ptr

SOURCE = KernelSource("geglu.cu", includes=("half.cuh",), kernels=("geglu",))
_DTYPES = {torch.float16: 0, torch.bfloat16: 1}
_THREADS = 256


def geglu(projected: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``value * F.gelu(gate)`` of ``value, gate = projected.chunk(2, dim=-1)``.

    Args:
        projected: (..., 2 * inner).
        backend: ``"auto"`` (the kernel where :func:`fused_applies`, else torch), ``"cuda"`` or ``"torch"``.
    """
    _checks.check_choice("backend", backend, _checks.BACKENDS)
    applies = backend != "torch" and fused_applies(projected)
    if backend == "cuda" and not applies:
        from sv_engine.errors import SvEngineError

        raise SvEngineError(
            f"the fused GEGLU cannot take this input "
            f"({projected.dtype}, {tuple(projected.shape)}, {projected.device}).",
            "Pass a contiguous fp16/bf16 CUDA tensor whose last size is a multiple of 16, or use backend='auto'.",
        )
    return _geglu_cuda(projected) if applies else geglu_reference(projected)


def geglu_reference(projected: torch.Tensor) -> torch.Tensor:
    """The torch implementation of :func:`geglu` (diffusers' ``GEGLU.forward`` after its projection)."""
    value, gate = projected.chunk(2, dim=-1)
    return value * F.gelu(gate)


def fused_applies(projected: torch.Tensor) -> bool:
    """Whether :func:`geglu` runs the kernel: a contiguous fp16/bf16 CUDA tensor with a last size
    divisible by 16, 16-byte aligned, outside autocast and graph tracing."""
    if not (projected.is_cuda and projected.dtype in _DTYPES and projected.dim() >= 1):
        return False
    if _checks.tracing():
        return False
    if projected.shape[-1] % 16 or projected.numel() == 0 or torch.is_autocast_enabled("cuda"):
        return False
    return projected.is_contiguous() and projected.data_ptr() % 16 == 0


def _geglu_cuda(projected: torch.Tensor) -> torch.Tensor:
    inner = projected.shape[-1] // 2
    out = torch.empty((*projected.shape[:-1], inner), dtype=projected.dtype, device=projected.device)
    vectors = out.numel() // 8
    args = [
        ptr(projected),
        ctypes.c_longlong(vectors),
        ctypes.c_int(inner),
        ctypes.c_int(_DTYPES[projected.dtype]),
        ptr(out),
    ]
    launch(
        SOURCE.function(projected.device, "geglu"),
        (-(-vectors // _THREADS), 1, 1),
        (_THREADS, 1, 1),
        args,
        projected.device,
    )
    return out
