"""Attention forms of an exported graph.

``"onnx"``: standard ONNX operators only (MatMul, Softmax ...), from diffusers' classic attention
processor with QKᵀ and softmax upcast to fp32 (:func:`~sv_engine.export.spec.prepare_for_precision`).
Every runtime parses it, TensorRT included (TensorRT fuses the pattern into its own attention
kernels), but ONNX Runtime runs it as written: every fp32 score matrix is materialised (at 896×512
one self-attention layer's scores are 2×8×7168² floats, 3.3 GB).

``"ort"``: attention as ONNX Runtime's contrib operator ``com.microsoft.MultiHeadAttention``, which
runs flash / memory-efficient attention on CUDA (QKᵀ and softmax accumulate in fp32 inside the
kernel: the fp16 guard) and has CPU kernels. Only ONNX Runtime runs it. On an H200 ORT's whole
70-frame edit took 4.47 s in this form against 9.93 s in the standard one. ORT's own
transformer optimizer (``optimize_model(model_type="unet")``) fuses GroupNorm and NHWC convolutions in
these graphs but not their attention (ORT 1.32), so the export emits the operator itself: while
exporting, diffusers' attention modules run :class:`OrtAttnProcessor`, whose core is an autograd
function with an ONNX symbolic (the head count comes from the module, not from traced shapes).
"""

from __future__ import annotations

import contextlib
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


class OrtAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` for the attention modules of SD's UNet, ControlNet and VAE, with
    :class:`MultiHeadAttention` as its core; calls it does not cover (masks, q/k norms, spatial
    norm) go to ``AttnProcessor2_0`` and so export in the standard form."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.fallback = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if (
            attention_mask is not None
            or attn.spatial_norm is not None
            or getattr(attn, "norm_q", None) is not None
            or getattr(attn, "norm_k", None) is not None
        ):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_shape is not None:  # the VAE's attention runs over the pixels of a feature map
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.to_q(hidden_states)
        out = MultiHeadAttention.apply(
            query, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states), attn.heads, float(attn.scale)
        )
        out = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))
        if image_shape is not None:
            out = out.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def check_form(attention: str) -> None:
    """Raises the user-facing error for an attention form that is not one of :data:`ATTENTION_FORMS`."""
    if attention not in ATTENTION_FORMS:
        raise SvEngineError(f"Unknown attention form {attention!r}.", f"Use one of {', '.join(ATTENTION_FORMS)}.")


@contextlib.contextmanager
def attention_export(module: nn.Module, attention: str) -> Iterator[nn.Module]:
    """``module`` with its diffusers attention in the ``attention`` form while the block runs
    (``"ort"``: :class:`OrtAttnProcessor`; the module's own processors come back on exit)."""
    check_form(attention)
    if attention == "onnx":
        yield module
        return
    from diffusers.models.attention_processor import Attention

    saved = {sub: sub.processor for sub in module.modules() if isinstance(sub, Attention)}
    try:
        for sub in saved:
            sub.set_processor(OrtAttnProcessor())
        yield module
    finally:
        for sub, processor in saved.items():
            sub.set_processor(processor)
