"""Attention forms of an exported graph.

``"onnx"``: standard ONNX operators only (MatMul, Softmax ...), from the attention's explicit form
with QKᵀ and softmax upcast to fp32 (:func:`~sv_engine.export.spec.prepare_for_precision`).
Every runtime parses it, TensorRT included (TensorRT fuses the pattern into its own attention
kernels), but ONNX Runtime runs it as written: every fp32 score matrix is materialised (at 896×512
one self-attention layer's scores are 2×8×7168² floats, 3.3 GB).

``"ort"``: attention as ONNX Runtime's contrib operator ``com.microsoft.MultiHeadAttention``, which
runs flash / memory-efficient attention on CUDA (QKᵀ and softmax accumulate in fp32 inside the
kernel: the fp16 guard) and has CPU kernels. Only ONNX Runtime runs it. On an H200 ORT's whole
70-frame edit took 4.47 s in this form against 9.93 s in the standard one. ORT's own
transformer optimizer (``optimize_model(model_type="unet")``) fuses GroupNorm and NHWC convolutions in
these graphs but not their attention (ORT 1.32), so the export emits the operator itself: while
exporting, the attention modules' core (``Attention.attend``) is :class:`MultiHeadAttention`, an autograd
function with an ONNX symbolic (the head count comes from the module, not from traced shapes).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sv_engine.errors import SvEngineError

ATTENTION_FORMS = ("onnx", "ort")


class MultiHeadAttention(torch.autograd.Function):
    """``(B, S, N·H) q, (B, L, N·H) k, v -> (B, S, N·H)``: SDPA in torch, one MultiHeadAttention node in ONNX."""

    @staticmethod
    def forward(
        ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int, scale: float
    ) -> torch.Tensor:
        def split(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value), scale=scale)
        return out.transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(g, query, key, value, heads: int, scale: float):
        out = g.op("com.microsoft::MultiHeadAttention", query, key, value, num_heads_i=heads, scale_f=scale)
        out.setType(query.type())  # the contrib op has no shape inference in torch: (B, S, N·H) as the query
        return out


def ort_attend(attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """An :class:`~sv_engine.stablevideo.models.nets.blocks.Attention`'s core as :class:`MultiHeadAttention`
    (the head count and scale come from the module, so the graph does not depend on traced shapes)."""
    return MultiHeadAttention.apply(query, key, value, attn.heads, float(attn.scale))


def check_form(attention: str) -> None:
    """Raises the user-facing error for an attention form that is not one of :data:`ATTENTION_FORMS`."""
    if attention not in ATTENTION_FORMS:
        raise SvEngineError(f"Unknown attention form {attention!r}.", f"Use one of {', '.join(ATTENTION_FORMS)}.")


@contextlib.contextmanager
def attention_export(module: nn.Module, attention: str) -> Iterator[nn.Module]:
    """``module`` with its attention in the ``attention`` form while the block runs (``"ort"``: every
    attention module's core is :func:`ort_attend`; the modules' own core comes back on exit)."""
    check_form(attention)
    if attention == "onnx":
        yield module
        return
    from sv_engine.stablevideo.models.nets.blocks import Attention

    swapped = [sub for sub in module.modules() if isinstance(sub, Attention)]
    try:
        for sub in swapped:
            sub.attend = functools.partial(ort_attend, sub)  # an instance attribute shadows the method
        yield module
    finally:
        for sub in swapped:
            del sub.attend
