"""CLIP's text tower (SD 1.5's text encoder) as a plain torch module, with the parameter names of
``transformers.CLIPTextModel``, so its ``text_encoder/`` checkpoints load unchanged.

Kept equal to transformers' maths (pre-LN transformer, causal self-attention, final layer norm, EOS
pooling) and to its random init (same construction order and draws, so a seeded tiny model matches
transformers' bit for bit). Attention runs through ``scaled_dot_product_attention(is_causal=True)``: no mask
tensor, no host syncs, so the module captures in a CUDA graph and exports with ``torch.export`` / ONNX.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sv_engine.errors import SvEngineError

from .base import _SD15_FIX, TRANSFORMERS_METADATA, ConfiguredModel, ModelConfig

#: transformers' legacy ``eos_token_id`` (before transformers PR #24773): pool at the argmax of the ids.
_LEGACY_EOS_TOKEN_ID = 2
#: The children of ``text_model``, the top level of transformers 5's own state dict.
_TOWER_CHILDREN = ("embeddings", "encoder", "final_layer_norm")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


#: The ``hidden_act`` values implemented, with transformers' ``ACT2FN`` maths.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": _quick_gelu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class CLIPTextModelOutput(NamedTuple):
    """``[0]`` / ``.last_hidden_state`` (B, S, D) after the final layer norm, ``[1]`` / ``.pooler_output``
    (B, D) at each sequence's EOS token; ``.hidden_states`` (embeddings + every layer's output, before the
    final layer norm) only when asked for. A tuple, so ``torch.export`` / ONNX flatten it as they would
    transformers' ``return_dict=False`` output."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        # No ``position_ids`` buffer: transformers' is non-persistent (not in its state dict), and a buffer
        # would stay on the meta device when the loaders build on meta and load with ``assign=True``.

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[-1], device=input_ids.device).unsqueeze(0)
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written by transformers < 4.31 (SD 1.5's text_encoder among them) carry the buffer.
        state_dict.pop(prefix + "position_ids", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CLIPAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = float(config.attention_dropout or 0.0)
        # transformers' order (k, v, q, out): the default init draws follow it.
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, _ = hidden_states.shape
        shape = (b, s, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None,
            scale=self.scale,
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, s, self.embed_dim))


class CLIPMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.activation_fn = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), attn_mask)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])


class CLIPTextTransformer(nn.Module):
    """transformers' ``CLIPTextModel.text_model`` (the ``text_model.`` prefix of the state dict)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class CLIPTextModel(ConfiguredModel):
    """``transformers.CLIPTextModel`` (CLIP's text tower) from its ``config.json`` dict.

    ``forward(input_ids=ids)`` gives a :class:`CLIPTextModelOutput` (``[0]`` = last hidden state);
    ``return_dict=False`` a plain tuple, as transformers does.
    """

    WEIGHTS_NAME: ClassVar[str] = "model.safetensors"
    #: transformers 5.24's ``CLIPTextConfig`` fields and defaults, plus the forward defaults of its base config.
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "projection_dim": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "pad_token_id": 1,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "return_dict": True,
        "output_hidden_states": False,
        "output_attentions": False,
        "pruned_heads": {},
    }
    #: Attention weights are never materialized (SDPA) and heads are never pruned.
    FIXED: ClassVar[tuple[str, ...]] = ("output_attentions", "pruned_heads")
    #: transformers' shared metadata, and ``dropout``, an old CLIPTextConfig field transformers' maths
    #: never read, and two loading options.
    IGNORED: ClassVar[tuple[str, ...]] = (*TRANSFORMERS_METADATA, "dropout", "gradient_checkpointing", "use_cache")

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.text_model = CLIPTextTransformer(self.config)
        self.eos_token_id = int(self.config.eos_token_id)
        self._init_weights()

    @classmethod
    def resolve_config(cls, config: Mapping[str, Any]) -> ModelConfig:
        """The base checks, plus the values this module needs to be of a kind it implements."""
        resolved = super().resolve_config(config)
        if resolved.hidden_act not in ACTIVATIONS:
            _refuse(f"hidden_act={resolved.hidden_act!r} (only {', '.join(ACTIVATIONS)})")
        if isinstance(resolved.eos_token_id, bool) or not isinstance(resolved.eos_token_id, int):
            _refuse(f"eos_token_id={resolved.eos_token_id!r} (only a single token id)")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "max_position_embeddings"):
            if isinstance(resolved[key], bool) or not isinstance(resolved[key], int) or resolved[key] < 1:
                _refuse(f"{key}={resolved[key]!r} (only a positive integer)")
        if not isinstance(resolved.num_hidden_layers, int) or resolved.num_hidden_layers < 0:
            _refuse(f"num_hidden_layers={resolved.num_hidden_layers!r} (only a non-negative integer)")
        if resolved.hidden_size % resolved.num_attention_heads:
            _refuse(
                f"hidden_size={resolved.hidden_size} with num_attention_heads={resolved.num_attention_heads} "
                "(hidden_size must be a multiple of num_attention_heads)"
            )
        if not isinstance(resolved.layer_norm_eps, (int, float)) or isinstance(resolved.layer_norm_eps, bool):
            _refuse(f"layer_norm_eps={resolved.layer_norm_eps!r} (only a number)")
        return resolved

    @torch.no_grad()
    def _init_weights(self) -> None:
        """transformers' ``CLIPPreTrainedModel._init_weights`` as its ``initialize_weights`` applies it: modules
        in post-order (children before parents), each tensor redrawn as many times as transformers redraws it
        (the generic Linear / Embedding init, then CLIP's own), so the RNG stream and the values are the same.

        Skipped on the meta device, as transformers does (nothing to draw)."""
        if self.text_model.final_layer_norm.weight.is_meta:
            return
        cfg = self.config
        factor = cfg.initializer_factor
        generic_std = cfg.initializer_range or 0.02
        dim, layers = cfg.hidden_size, cfg.num_hidden_layers

        def linear(module: nn.Linear) -> None:
            nn.init.normal_(module.weight, mean=0.0, std=generic_std)
            nn.init.zeros_(module.bias)

        def norm(module: nn.LayerNorm) -> None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

        emb = self.text_model.embeddings
        for table in (emb.token_embedding, emb.position_embedding):
            nn.init.normal_(table.weight, mean=0.0, std=generic_std)
        for table in (emb.token_embedding, emb.position_embedding):
            nn.init.normal_(table.weight, std=factor * 0.02)
        for layer in self.text_model.encoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for proj in (attn.k_proj, attn.v_proj, attn.q_proj, attn.out_proj):
                linear(proj)
            in_proj_std = (dim**-0.5) * ((2 * layers) ** -0.5) * factor
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                nn.init.normal_(proj.weight, std=in_proj_std)
            nn.init.normal_(attn.out_proj.weight, std=(dim**-0.5) * factor)
            norm(layer.layer_norm1)
            linear(mlp.fc1)
            linear(mlp.fc2)
            nn.init.normal_(mlp.fc1.weight, std=(2 * dim) ** -0.5 * factor)
            nn.init.normal_(mlp.fc2.weight, std=in_proj_std)
            norm(layer.layer_norm2)
        norm(self.text_model.final_layer_norm)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # transformers >= 5 names the tower's tensors without the ``text_model.`` level that SD 1.5's
        # checkpoints (and transformers < 5) use: accept both layouts, strictly.
        for key in [k for k in state_dict if k.startswith(prefix)]:
            if key[len(prefix) :].split(".", 1)[0] in _TOWER_CHILDREN:
                state_dict[f"{prefix}text_model.{key[len(prefix) :]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CLIPTextModelOutput | tuple[torch.Tensor, ...]:
        """``input_ids`` (B, S) int, S ≤ ``max_position_embeddings``; ``attention_mask`` (B, S), 1 = token,
        0 = padding (combined with the causal mask, as transformers does; SD never passes one)."""
        # A shape check: a guard under torch.export, skipped by the ONNX tracer (which would only warn).
        if not torch.jit.is_tracing() and input_ids.shape[-1] > self.config.max_position_embeddings:
            raise SvEngineError(
                f"CLIPTextModel got {input_ids.shape[-1]} tokens, more than max_position_embeddings="
                f"{self.config.max_position_embeddings}.",
                "Tokenize with truncation=True and max_length=77.",
            )
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])
        text = self.text_model
        hidden = text.embeddings(input_ids, position_ids)
        attn_mask = None if attention_mask is None else _causal_padding_mask(attention_mask, hidden.dtype)
        want_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        states: list[torch.Tensor] = [hidden]
        for layer in text.encoder.layers:
            hidden = layer(hidden, attn_mask)
            states.append(hidden)
        last = text.final_layer_norm(hidden)
        ids = input_ids.to(device=last.device, dtype=torch.int)
        # torch.int: ONNX's ArgMax (opset 14) rejects int64 inputs, as transformers' comment notes.
        if self.eos_token_id == _LEGACY_EOS_TOKEN_ID:
            eos_pos = ids.argmax(dim=-1)  # EOS is the largest id in CLIP's original vocabulary
        else:
            eos_pos = (ids == self.eos_token_id).int().argmax(dim=-1)  # the first EOS (padding may be EOS too)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_pos]
        hidden_states = tuple(states) if want_states else None
        if not (self.config.return_dict if return_dict is None else return_dict):
            return (last, pooled) if hidden_states is None else (last, pooled, hidden_states)
        return CLIPTextModelOutput(last, pooled, hidden_states)


def _causal_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, S, S) additive mask: causal and padded keys get the dtype's minimum, as transformers' masks."""
    s = attention_mask.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None, None] & attention_mask.to(torch.bool)[:, None, None, :]
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _refuse(what: str) -> None:
    raise SvEngineError(f"CLIPTextModel does not implement {what}.", _SD15_FIX)


__all__ = ["ACTIVATIONS", "CLIPTextModel", "CLIPTextModelOutput"]
