"""The building blocks of SD 1.5's UNet, ControlNet and VAE, as plain torch modules.

They mirror diffusers 0.42.1 (``models/resnet.py``, ``attention.py``, ``attention_processor.py``,
``transformers/transformer_2d.py``, ``unets/unet_2d_blocks.py``, ``embeddings.py``) for the SD 1.5 family only:

* the same attribute names, so the ``state_dict`` keys equal diffusers' and its checkpoints load with
  ``strict=True``;
* the same construction order, so that under one ``torch.manual_seed`` the random weights equal diffusers'
  bit for bit (only ``nn.Linear`` / ``nn.Conv2d`` draw from the RNG; their order is what has to match);
* the same maths in the same order, with diffusers' default attention processor (``AttnProcessor2_0``:
  ``scaled_dot_product_attention``), so outputs match to float rounding.

The forward passes avoid host syncs and branches on tensor values (CUDA graphs, ``torch.export``,
``torch.onnx.export`` and ``torch.compile`` all see one static graph per input shape).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from sv_engine.kernels.geglu import geglu
from torch import nn

from sv_engine.errors import SvEngineError

from .conv import Conv2d
from .norms import GroupNorm, is_silu

#: The hint of every "unsupported option" error (the same as base.py's).
SD15_HINT = "Use a Stable Diffusion 1.5-family checkpoint (the configs in sv_engine/stablevideo/assets/configs)."

#: diffusers' ``ACT2CLS``: the activations a config's ``act_fn`` may name.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def get_activation(name: str) -> nn.Module:
    """The activation module diffusers builds for ``name`` (case-insensitive, as diffusers)."""
    cls = ACTIVATIONS.get(name.lower())
    if cls is None:
        raise SvEngineError(f"Unknown activation function {name!r}.", f"Use one of {', '.join(ACTIVATIONS)}.")
    return cls()


def require_supported(owner: str, key: str, value: Any, supported: Iterable[Any]) -> None:
    """Refuse a config value this module does not implement, naming the key (like base.py's ``FIXED``)."""
    allowed = list(supported)
    if value not in allowed:
        raise SvEngineError(
            f"{owner} does not implement {key}={value!r} (only {', '.join(repr(a) for a in allowed)}).", SD15_HINT
        )


def per_block(owner: str, key: str, value: Any, n_blocks: int) -> list[Any]:
    """A per-block option given as one value or one value per block (diffusers' int-or-tuple options)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_blocks:
            raise SvEngineError(
                f"{owner} config: {key} has {len(value)} entries for {n_blocks} down blocks.",
                f"Give {key} one value, or one per down block.",
            )
        return list(value)
    return [value] * n_blocks


# --------------------------------------------------------------------------------------------------
# Time embedding
# --------------------------------------------------------------------------------------------------


def get_timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1,
    scale: float = 1,
    max_period: int = 10000,
) -> torch.Tensor:
    """DDPM's sinusoidal embedding of a (N,) tensor of (possibly fractional) timesteps -> (N, embedding_dim)
    float32, exactly diffusers' ``get_timestep_embedding``."""
    half_dim = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half_dim, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half_dim - downscale_freq_shift)
    emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    if scale != 1:
        emb = scale * emb
    # diffusers concatenates [sin, cos] and then swaps the halves for flip_sin_to_cos: one cat, same values.
    emb = torch.cat([torch.cos(emb), torch.sin(emb)] if flip_sin_to_cos else [torch.sin(emb), torch.cos(emb)], dim=-1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def batch_timesteps(timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
    """``timestep`` (a number, a 0-d or a (B,) / (1,) tensor) as a (B,) tensor on the sample's device, as
    diffusers' UNet / ControlNet do (a Python float becomes float64, an int int64; ``expand`` broadcasts a
    single timestep in a way ONNX and Core ML export)."""
    if not torch.is_tensor(timestep):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        if dtype == torch.float64 and sample.device.type == "mps":  # MPS has no float64
            dtype = torch.float32
        timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
    elif timestep.ndim == 0:
        timestep = timestep[None].to(sample.device)
    return timestep.expand(sample.shape[0])


class Timesteps(nn.Module):
    """The parameter-free sinusoidal projection (diffusers' ``Timesteps``); returns float32."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return get_timestep_embedding(
            timesteps, self.num_channels, self.flip_sin_to_cos, self.downscale_freq_shift, self.scale
        )


class TimestepEmbedding(nn.Module):
    """``linear_1`` -> act -> ``linear_2`` (-> optional post act): the timestep MLP."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        act_fn: str = "silu",
        out_dim: int | None = None,
        post_act_fn: str | None = None,
    ) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim)
        self.post_act = None if post_act_fn is None else get_activation(post_act_fn)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.linear_2(self.act(self.linear_1(sample)))
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample


# --------------------------------------------------------------------------------------------------
# ResNet, down- and upsampling
# --------------------------------------------------------------------------------------------------


class ResnetBlock2D(nn.Module):
    """GroupNorm -> act -> conv1 (+ time embedding) -> GroupNorm -> act -> dropout -> conv2, plus the
    (1×1-projected when the channels change) input, ÷ ``output_scale_factor``. ``temb_channels=None``: no
    time embedding (the VAE)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        temb_channels: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        non_linearity: str = "swish",
        output_scale_factor: float = 1.0,
        use_in_shortcut: bool | None = None,
        conv_shortcut_bias: bool = True,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_scale_factor = output_scale_factor
        groups_out = groups if groups_out is None else groups_out

        fuse = is_silu(non_linearity)  # act(norm(x)) in one pass (norms.GroupNorm)
        self.norm1 = GroupNorm(groups, in_channels, eps=eps, silu=fuse)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = GroupNorm(groups_out, out_channels, eps=eps, silu=fuse)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)

        self.use_in_shortcut = in_channels != out_channels if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = None
        if self.use_in_shortcut:
            self.conv_shortcut = Conv2d(
                in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=conv_shortcut_bias
            )

    def _norm_act(self, norm: GroupNorm, x: torch.Tensor) -> torch.Tensor:
        return norm(x) if norm.silu else self.nonlinearity(norm(x))

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.conv1(self._norm_act(self.norm1, input_tensor))
        if self.time_emb_proj is not None and temb is not None:
            hidden_states = hidden_states + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        hidden_states = self._norm_act(self.norm2, hidden_states)
        hidden_states = self.conv2(self.dropout(hidden_states))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        output = input_tensor + hidden_states
        # x / 1.0 is exact: skipping it saves a kernel and changes no bit.
        if self.output_scale_factor != 1.0:
            output = output / self.output_scale_factor
        return output


class Downsample2D(nn.Module):
    """Stride-2 3×3 conv (``use_conv``) or 2×2 average pooling. ``padding=0``: the VAE's asymmetric
    zero pad (right and bottom by one) before an unpadded conv, as LDM's encoder."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        if use_conv:
            # diffusers' blocks build it with name="op": the module is registered as ``conv`` only.
            self.conv: nn.Module = Conv2d(self.channels, self.out_channels, kernel_size=3, stride=2, padding=padding)
        else:
            if self.channels != self.out_channels:
                raise SvEngineError("Downsample2D by pooling cannot change the channel count.", SD15_HINT)
            self.conv = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.use_conv and self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Nearest ×2 (or to ``output_size``: the UNet's odd latent sizes) then a 3×3 conv (``use_conv``)."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.conv = Conv2d(self.channels, self.out_channels, kernel_size=3, padding=1) if use_conv else None

    def forward(self, hidden_states: torch.Tensor, output_size: Any = None) -> torch.Tensor:
        # Shape-only conditions, as diffusers: upsample_nearest2d fails for batches >= 64 on non-contiguous
        # input and for outputs of more than 2**31 elements.
        if hidden_states.shape[0] >= 64:
            hidden_states = hidden_states.contiguous()
        scale_factor = (
            2 if output_size is None else max(f / s for f, s in zip(output_size, hidden_states.shape[-2:], strict=True))
        )
        if hidden_states.numel() * scale_factor > 2**31:
            hidden_states = hidden_states.contiguous()
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        if self.conv is not None:
            hidden_states = self.conv(hidden_states)
        return hidden_states


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names (``to_q``, ``to_k``, ``to_v``, ``to_out``).

    ``forward`` projects q (from ``hidden_states``) and k, v (from ``encoder_hidden_states``, or
    ``hidden_states`` for self-attention), calls :meth:`attend` on (B, S, heads·dim) tensors and projects the
    result with ``to_out``. :meth:`attend` is the exporters' seam: they replace it per instance (reading
    ``heads`` and ``scale``), or set ``upcast = True`` for fp32 QKᵀ and softmax (the fp16 guard of the
    standard ONNX export).

    ``norm_num_groups`` given: the VAE's spatial self-attention, over (B, C, H, W) input: GroupNorm, the
    H·W pixels as tokens, ``+ input`` when ``residual_connection``, ÷ ``rescale_output_factor``.
    ``upcast_attention`` / ``upcast_softmax`` are recorded like diffusers' but, as with diffusers' default
    processor (SDPA), do not change the computation: ``upcast`` does.
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        out_bias: bool = True,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
        residual_connection: bool = False,
    ) -> None:
        super().__init__()
        self.inner_dim = dim_head * heads
        self.query_dim = query_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.upcast = False
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection

        self.group_norm = GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups is not None else None
        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_v = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, query_dim, bias=out_bias), nn.Dropout(dropout)])

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """softmax(q·kᵀ·scale)·v over ``heads`` heads: (B, Sq, H·D), (B, Sk, H·D), (B, Sk, H·D) -> (B, Sq, H·D)."""
        batch = query.shape[0]
        q = query.view(batch, -1, self.heads, self.dim_head).transpose(1, 2)
        k = key.view(batch, -1, self.heads, self.dim_head).transpose(1, 2)
        v = value.view(batch, -1, self.heads, self.dim_head).transpose(1, 2)
        if self.upcast:
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.scale
            probs = scores.softmax(dim=-1).to(v.dtype)
            out = torch.matmul(probs, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False, scale=self.scale)
        return out.transpose(1, 2).reshape(batch, -1, self.heads * self.dim_head)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
        if self.group_norm is not None:
            # GroupNorm of the (B, C, H, W) map equals diffusers' GroupNorm of the (B, C, H·W) tokens.
            hidden_states = self.group_norm(hidden_states)
        if spatial:
            # A view for both NCHW and channels_last input (then the tokens are already contiguous).
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = self.attend(self.to_q(hidden_states), self.to_k(context), self.to_v(context))
        out = self.to_out[1](self.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if self.residual_connection:
            out = out + residual
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out


class GEGLU(nn.Module):
    """``proj`` to 2×inner, then value · GELU(gate) (one fused pass on fp16/bf16 CUDA: kernels.geglu;
    ``backend`` as :class:`.norms.GroupNorm`'s)."""

    backend: str = "auto"

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return geglu(self.proj(hidden_states), backend=self.backend)


class FeedForward(nn.Module):
    """``net`` = [GEGLU, Dropout, Linear]: the transformer block's MLP (inner width 4·dim)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = nn.ModuleList(
            [GEGLU(dim, inner_dim, bias=bias), nn.Dropout(dropout), nn.Linear(inner_dim, dim_out or dim, bias=bias)]
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention (when ``cross_attention_dim``) and GEGLU MLP, each
    with a residual."""

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn1 = Attention(
            query_dim=dim,
            heads=num_attention_heads,
            dim_head=attention_head_dim,
            dropout=dropout,
            bias=attention_bias,
            upcast_attention=upcast_attention,
        )
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
            self.attn2 = Attention(
                query_dim=dim,
                cross_attention_dim=cross_attention_dim,
                heads=num_attention_heads,
                dim_head=attention_head_dim,
                dropout=dropout,
                bias=attention_bias,
                upcast_attention=upcast_attention,
            )
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.attn1(self.norm1(hidden_states)) + hidden_states
        if self.attn2 is not None:
            hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states) + hidden_states
        return self.ff(self.norm3(hidden_states)) + hidden_states


def _as_layout_of(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``tensor`` made contiguous in ``reference``'s memory format: diffusers makes it NCHW-contiguous; for a
    channels_last model the permuted tokens already are channels_last, so no copy is made at all."""
    if reference.dim() == 4 and reference.is_contiguous(memory_format=torch.channels_last):
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor.contiguous()


class Transformer2DModel(nn.Module):
    """GroupNorm -> ``proj_in`` (1×1 conv, or linear over tokens when ``use_linear_projection``) -> the
    transformer blocks over the H·W tokens -> ``proj_out`` -> + input (diffusers' continuous-input case)."""

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int | None = None,
        out_channels: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if in_channels is None:
            raise SvEngineError(
                "Transformer2DModel needs in_channels (only continuous input is implemented).", SD15_HINT
            )
        self.use_linear_projection = use_linear_projection
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels

        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in: nn.Module = nn.Linear(in_channels, self.inner_dim)
        else:
            self.proj_in = Conv2d(in_channels, self.inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    self.inner_dim,
                    num_attention_heads,
                    attention_head_dim,
                    dropout=dropout,
                    cross_attention_dim=cross_attention_dim,
                    attention_bias=attention_bias,
                    upcast_attention=upcast_attention,
                    norm_elementwise_affine=norm_elementwise_affine,
                    norm_eps=norm_eps,
                )
                for _ in range(num_layers)
            ]
        )
        if use_linear_projection:
            self.proj_out: nn.Module = nn.Linear(self.inner_dim, self.out_channels)
        else:
            self.proj_out = Conv2d(self.inner_dim, self.out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        batch, _, height, width = hidden_states.shape
        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        if not self.use_linear_projection:
            hidden_states = self.proj_in(hidden_states)
            inner_dim = hidden_states.shape[1]
            hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, inner_dim)
        else:
            inner_dim = hidden_states.shape[1]
            hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, inner_dim)
            hidden_states = self.proj_in(hidden_states)

        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, encoder_hidden_states)

        if not self.use_linear_projection:
            hidden_states = hidden_states.reshape(batch, height, width, self.inner_dim).permute(0, 3, 1, 2)
            hidden_states = self.proj_out(_as_layout_of(hidden_states, residual))
        else:
            hidden_states = self.proj_out(hidden_states)
            hidden_states = hidden_states.reshape(batch, height, width, self.out_channels).permute(0, 3, 1, 2)
            hidden_states = _as_layout_of(hidden_states, residual)
        return hidden_states + residual


# --------------------------------------------------------------------------------------------------
# UNet / ControlNet blocks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResnetSettings:
    """What the ResNets of one block share (diffusers' per-block ``resnet_*`` arguments)."""

    temb_channels: int | None
    eps: float
    groups: int
    dropout: float
    act: str
    output_scale_factor: float

    def block(self, in_channels: int, out_channels: int, groups_out: int | None = None) -> ResnetBlock2D:
        return ResnetBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=self.temb_channels,
            eps=self.eps,
            groups=self.groups,
            groups_out=groups_out,
            dropout=self.dropout,
            non_linearity=self.act,
            output_scale_factor=self.output_scale_factor,
        )


@dataclass(frozen=True)
class CrossAttentionSettings:
    """What the Transformer2DModels of one block share."""

    heads: int
    cross_attention_dim: int
    groups: int
    use_linear_projection: bool
    upcast_attention: bool

    def block(self, channels: int, num_layers: int) -> Transformer2DModel:
        return Transformer2DModel(
            self.heads,
            channels // self.heads,
            in_channels=channels,
            num_layers=num_layers,
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.groups,
            use_linear_projection=self.use_linear_projection,
            upcast_attention=self.upcast_attention,
        )


def _up_in_channels(i: int, num_layers: int, in_channels: int, prev_output_channel: int, out_channels: int) -> int:
    """An up block's ResNet ``i`` input: the previous layer's output (the block before's for the first)
    concatenated with its skip connection (the down block's input for the last)."""
    return (prev_output_channel if i == 0 else out_channels) + (in_channels if i == num_layers - 1 else out_channels)


def per_layer(value: int | list[int], num_layers: int) -> list[int]:
    """``transformer_layers_per_block``: one count for every layer, or one per layer."""
    return [value] * num_layers if isinstance(value, int) else list(value)


class CrossAttnDownBlock2D(nn.Module):
    """``num_layers`` × (ResNet, Transformer2DModel), then an optional stride-2 conv; returns the output and
    every layer's output (the UNet's skip connections / the ControlNet's residuals)."""

    has_cross_attention = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: int | list[int] = 1,
        resnet_eps: float = 1e-6,
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        output_scale_factor: float = 1.0,
        downsample_padding: int = 1,
        add_downsample: bool = True,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
    ) -> None:
        super().__init__()
        self.num_attention_heads = num_attention_heads
        layers = per_layer(transformer_layers_per_block, num_layers)
        resnet = ResnetSettings(temb_channels, resnet_eps, resnet_groups, dropout, resnet_act_fn, output_scale_factor)
        attention = CrossAttentionSettings(
            num_attention_heads, cross_attention_dim, resnet_groups, use_linear_projection, upcast_attention
        )
        resnets, attentions = [], []
        for i in range(num_layers):  # construction order = diffusers' (RNG parity): resnet i, then attention i
            resnets.append(resnet.block(in_channels if i == 0 else out_channels, out_channels))
            attentions.append(attention.block(out_channels, layers[i]))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.downsamplers = (
            nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding)]
            )
            if add_downsample
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        output_states: tuple[torch.Tensor, ...] = ()
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            hidden_states = attn(resnet(hidden_states, temb), encoder_hidden_states)
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class DownBlock2D(nn.Module):
    """``num_layers`` ResNets, then an optional stride-2 conv; returns the output and every layer's output."""

    has_cross_attention = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        resnet = ResnetSettings(temb_channels, resnet_eps, resnet_groups, dropout, resnet_act_fn, output_scale_factor)
        self.resnets = nn.ModuleList(
            [resnet.block(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.downsamplers = (
            nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding)]
            )
            if add_downsample
            else None
        )

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        output_states: tuple[torch.Tensor, ...] = ()
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class UNetMidBlock2DCrossAttn(nn.Module):
    """ResNet, then ``num_layers`` × (Transformer2DModel, ResNet): the UNet's / ControlNet's middle."""

    has_cross_attention = True

    def __init__(
        self,
        in_channels: int,
        temb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: int | list[int] = 1,
        resnet_eps: float = 1e-6,
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_groups_out: int | None = None,
        num_attention_heads: int = 1,
        output_scale_factor: float = 1.0,
        cross_attention_dim: int = 1280,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_attention_heads = num_attention_heads
        layers = per_layer(transformer_layers_per_block, num_layers)
        resnet_groups_out = resnet_groups_out or resnet_groups
        resnet = ResnetSettings(
            temb_channels, resnet_eps, resnet_groups_out, dropout, resnet_act_fn, output_scale_factor
        )
        first = replace(resnet, groups=resnet_groups).block(in_channels, out_channels, groups_out=resnet_groups_out)
        attention = CrossAttentionSettings(
            num_attention_heads, cross_attention_dim, resnet_groups_out, use_linear_projection, upcast_attention
        )
        resnets, attentions = [first], []
        for i in range(num_layers):
            attentions.append(attention.block(out_channels, layers[i]))
            resnets.append(resnet.block(out_channels, out_channels))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            hidden_states = resnet(attn(hidden_states, encoder_hidden_states), temb)
        return hidden_states


class CrossAttnUpBlock2D(nn.Module):
    """``num_layers`` × (concat a skip connection, ResNet, Transformer2DModel), then an optional upsampler."""

    has_cross_attention = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        temb_channels: int,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: int | list[int] = 1,
        resnet_eps: float = 1e-6,
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
    ) -> None:
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.resolution_idx = resolution_idx
        layers = per_layer(transformer_layers_per_block, num_layers)
        resnet = ResnetSettings(temb_channels, resnet_eps, resnet_groups, dropout, resnet_act_fn, output_scale_factor)
        attention = CrossAttentionSettings(
            num_attention_heads, cross_attention_dim, resnet_groups, use_linear_projection, upcast_attention
        )
        resnets, attentions = [], []
        for i in range(num_layers):
            resnets.append(
                resnet.block(
                    _up_in_channels(i, num_layers, in_channels, prev_output_channel, out_channels), out_channels
                )
            )
            attentions.append(attention.block(out_channels, layers[i]))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
            if add_upsample
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        upsample_size: Any = None,
    ) -> torch.Tensor:
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = torch.cat([hidden_states, res_hidden_states], dim=1)
            hidden_states = attn(resnet(hidden_states, temb), encoder_hidden_states)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


class UpBlock2D(nn.Module):
    """``num_layers`` × (concat a skip connection, ResNet), then an optional upsampler."""

    has_cross_attention = False

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
    ) -> None:
        super().__init__()
        self.resolution_idx = resolution_idx
        resnet = ResnetSettings(temb_channels, resnet_eps, resnet_groups, dropout, resnet_act_fn, output_scale_factor)
        self.resnets = nn.ModuleList(
            [
                resnet.block(
                    _up_in_channels(i, num_layers, in_channels, prev_output_channel, out_channels), out_channels
                )
                for i in range(num_layers)
            ]
        )
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
            if add_upsample
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        upsample_size: Any = None,
    ) -> torch.Tensor:
        for resnet in self.resnets:
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = resnet(torch.cat([hidden_states, res_hidden_states], dim=1), temb)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


# --------------------------------------------------------------------------------------------------
# VAE blocks
# --------------------------------------------------------------------------------------------------


class UNetMidBlock2D(nn.Module):
    """ResNet, then ``num_layers`` × (optional spatial self-attention, ResNet): the VAE's middle (and the
    UNet's ``mid_block_type="UNetMidBlock2D"``, with ``num_layers=0``)."""

    has_cross_attention = False

    def __init__(
        self,
        in_channels: int,
        temb_channels: int | None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        attn_groups: int | None = None,
        add_attention: bool = True,
        attention_head_dim: int | None = 1,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        self.add_attention = add_attention
        attn_groups = resnet_groups if attn_groups is None else attn_groups
        if attention_head_dim is None:
            attention_head_dim = in_channels

        resnet = ResnetSettings(temb_channels, resnet_eps, resnet_groups, dropout, resnet_act_fn, output_scale_factor)
        resnets = [resnet.block(in_channels, in_channels)]
        attentions: list[nn.Module | None] = []
        for _ in range(num_layers):
            if add_attention:
                attentions.append(
                    Attention(
                        in_channels,
                        heads=in_channels // attention_head_dim,
                        dim_head=attention_head_dim,
                        rescale_output_factor=output_scale_factor,
                        eps=resnet_eps,
                        norm_num_groups=attn_groups,
                        residual_connection=True,
                        bias=True,
                        upcast_softmax=True,
                    )
                )
            else:
                attentions.append(None)
            resnets.append(resnet.block(in_channels, in_channels))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            if attn is not None:
                hidden_states = attn(hidden_states)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class DownEncoderBlock2D(nn.Module):
    """``num_layers`` ResNets without time embedding, then an optional downsampler (the VAE encoder)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        resnet = ResnetSettings(None, resnet_eps, resnet_groups, dropout, resnet_act_fn, output_scale_factor)
        self.resnets = nn.ModuleList(
            [resnet.block(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.downsamplers = (
            nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding)]
            )
            if add_downsample
            else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, None)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Module):
    """``num_layers`` ResNets without time embedding, then an optional upsampler (the VAE decoder)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        temb_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.resolution_idx = resolution_idx
        resnet = ResnetSettings(temb_channels, resnet_eps, resnet_groups, dropout, resnet_act_fn, output_scale_factor)
        self.resnets = nn.ModuleList(
            [resnet.block(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
            if add_upsample
            else None
        )

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states)
        return hidden_states
