"""A convolution's per-channel bias added in place to its channels-last output, with 16-byte vectors.

ATen runs a cuDNN convolution without its bias and then adds the bias as a broadcast ``add_``, which
its elementwise loops cannot vectorise (the (1, C, 1, 1) operand is not contiguous with the output):
on the UNet+ControlNet step that was ~150 unvectorised passes over the activations. ``bias.cu`` adds
it with 16-byte loads and stores and rounds as ATen does, so the result is the same bits.
"""

from __future__ import annotations

import ctypes

import torch
from sv_engine.kernels import _checks
from sv_engine.kernels._nvrtc import KernelSource, launch, ptr

SOURCE = KernelSource("bias.cu", includes=("half.cuh",), kernels=("channel_bias_add",))
_DTYPES = {torch.float16: 0, torch.bfloat16: 1}
_THREADS = 256


def add_channel_bias_(y: torch.Tensor, bias: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``y += bias[None, :, None, None]`` for an (N, C, H, W) ``y``; returns ``y``.

    ``backend``: ``"auto"`` (the kernel where :func:`fused_applies`, else torch), ``"cuda"`` or ``"torch"``.
    """
    _checks.check_choice("backend", backend, _checks.BACKENDS)
    applies = backend != "torch" and fused_applies(y, bias)
    if backend == "cuda" and not applies:
        from sv_engine.errors import SvEngineError

        raise SvEngineError(
            f"the channel bias kernel cannot take this output ({y.dtype}, {tuple(y.shape)}, {y.device}).",
            "Pass a channels-last fp16/bf16 CUDA tensor with C divisible by 8 and a bias of its dtype, "
            "or use backend='auto'.",
        )
    if not applies:
        return y.add_(bias.view(1, -1, 1, 1))
    vectors = y.numel() // 8
    args = [ptr(y), ptr(bias), ctypes.c_longlong(vectors), ctypes.c_int(y.shape[1]), ctypes.c_int(_DTYPES[y.dtype])]
    device = y.device
    launch(SOURCE.function(device, "channel_bias_add"), (-(-vectors // _THREADS), 1, 1), (_THREADS, 1, 1), args, device)
    return y


def fused_applies(y: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether :func:`add_channel_bias_` runs the kernel: a channels-last (and not also NCHW-contiguous)
    fp16/bf16 CUDA (N, C, H, W) tensor, C divisible by 8, a contiguous bias of its dtype, both 16-byte
    aligned, outside autocast and graph tracing."""
    if not (y.is_cuda and y.dtype in _DTYPES and y.dim() == 4 and bias.dtype == y.dtype) or _checks.tracing():
        return False
    if y.shape[1] % 8 or y.numel() == 0 or not bias.is_contiguous() or torch.is_autocast_enabled("cuda"):
        return False
    nhwc = y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    return nhwc and y.data_ptr() % 16 == 0 and bias.data_ptr() % 16 == 0
