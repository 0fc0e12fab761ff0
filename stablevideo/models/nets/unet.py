"""SD 1.5's denoising UNet (diffusers' ``UNet2DConditionModel``) as a plain torch module.

Built from a diffusers ``unet/config.json`` dict, with diffusers' parameter names (its checkpoints load with
``strict=True``) and construction order (the same random weights under one seed), without importing
diffusers (see the package docstring for why). Only the SD 1.x / 2.x layout is implemented: the options of
other model families are in ``FIXED`` and refused by name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from sv_engine.errors import SvEngineError

from .base import ConfiguredModel
from .blocks import (
    ACTIVATIONS,
    SD15_HINT,
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    TimestepEmbedding,
    Timesteps,
    UNetMidBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
    batch_timesteps,
    get_activation,
    per_block,
    require_supported,
)
from .conv import Conv2d
from .norms import GroupNorm, is_silu

logger = logging.getLogger(__name__)

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)


class UNet2DConditionOutput(NamedTuple):
    """The UNet's output (``.sample``; also indexable like diffusers' output, ``[0]``)."""

    sample: torch.Tensor


def transformer_layers(owner: str, value: Any, n_blocks: int) -> list[int]:
    """``transformer_layers_per_block``: one int, or one int per block (nested lists, SDXL's asymmetric
    UNets, are not implemented)."""
    layers = per_block(owner, "transformer_layers_per_block", value, n_blocks)
    if not all(isinstance(n, int) for n in layers):
        raise SvEngineError(
            f"{owner} does not implement transformer_layers_per_block={value!r} (only an int or a list of ints).",
            SD15_HINT,
        )
    return layers


def make_down_block(
    block_type: str,
    *,
    num_layers: int,
    transformer_layers_per_block: int,
    in_channels: int,
    out_channels: int,
    temb_channels: int,
    add_downsample: bool,
    resnet_eps: float,
    resnet_act_fn: str,
    resnet_groups: int,
    cross_attention_dim: int,
    num_attention_heads: int,
    downsample_padding: int,
    use_linear_projection: bool,
    upcast_attention: bool,
    dropout: float = 0.0,
) -> nn.Module:
    """diffusers' ``get_down_block`` for the two SD block types."""
    if block_type == "DownBlock2D":
        return DownBlock2D(
            num_layers=num_layers,
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=temb_channels,
            dropout=dropout,
            add_downsample=add_downsample,
            resnet_eps=resnet_eps,
            resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups,
            downsample_padding=downsample_padding,
        )
    return CrossAttnDownBlock2D(
        num_layers=num_layers,
        transformer_layers_per_block=transformer_layers_per_block,
        in_channels=in_channels,
        out_channels=out_channels,
        temb_channels=temb_channels,
        dropout=dropout,
        add_downsample=add_downsample,
        resnet_eps=resnet_eps,
        resnet_act_fn=resnet_act_fn,
        resnet_groups=resnet_groups,
        downsample_padding=downsample_padding,
        cross_attention_dim=cross_attention_dim,
        num_attention_heads=num_attention_heads,
        use_linear_projection=use_linear_projection,
        upcast_attention=upcast_attention,
    )


def make_mid_block(
    block_type: str | None,
    *,
    in_channels: int,
    temb_channels: int,
    resnet_eps: float,
    resnet_act_fn: str,
    resnet_groups: int,
    output_scale_factor: float,
    transformer_layers_per_block: int,
    num_attention_heads: int,
    cross_attention_dim: int,
    use_linear_projection: bool,
    upcast_attention: bool,
    dropout: float = 0.0,
) -> nn.Module | None:
    """diffusers' ``get_mid_block`` for the UNet's / ControlNet's middle."""
    if block_type == "UNetMidBlock2DCrossAttn":
        return UNetMidBlock2DCrossAttn(
            transformer_layers_per_block=transformer_layers_per_block,
            in_channels=in_channels,
            temb_channels=temb_channels,
            dropout=dropout,
            resnet_eps=resnet_eps,
            resnet_act_fn=resnet_act_fn,
            output_scale_factor=output_scale_factor,
            cross_attention_dim=cross_attention_dim,
            num_attention_heads=num_attention_heads,
            resnet_groups=resnet_groups,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
        )
    if block_type == "UNetMidBlock2D":
        return UNetMidBlock2D(
            in_channels=in_channels,
            temb_channels=temb_channels,
            dropout=dropout,
            num_layers=0,
            resnet_eps=resnet_eps,
            resnet_act_fn=resnet_act_fn,
            output_scale_factor=output_scale_factor,
            resnet_groups=resnet_groups,
            add_attention=False,
        )
    return None


class UNet2DConditionModel(ConfiguredModel):
    """The text-conditioned noise predictor.

    ``UNet2DConditionModel(config)`` or ``UNet2DConditionModel(**config)`` (diffusers' keyword form).
    ``forward(sample, timestep, encoder_hidden_states, down_block_additional_residuals=None,
    mid_block_additional_residual=None, return_dict=True)``: ``(noise_pred,)`` or an output with ``.sample``.
    """

    WEIGHTS_NAME: ClassVar[str] = "diffusion_pytorch_model.safetensors"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "sample_size": None,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "only_cross_attention": False,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "dropout": 0.0,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 1280,
        "transformer_layers_per_block": 1,
        "reverse_transformer_layers_per_block": None,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "attention_head_dim": 8,
        "num_attention_heads": None,
        "dual_cross_attention": False,
        "use_linear_projection": False,
        "class_embed_type": None,
        "addition_embed_type": None,
        "addition_time_embed_dim": None,
        "num_class_embeds": None,
        "upcast_attention": False,
        "resnet_time_scale_shift": "default",
        "resnet_skip_time_act": False,
        # Only diffusers' Simple*/ResnetDownsample* blocks read it: no effect on the SD block types.
        "resnet_out_scale_factor": 1.0,
        "time_embedding_type": "positional",
        "time_embedding_dim": None,
        "time_embedding_act_fn": None,
        "timestep_post_act": None,
        "time_cond_proj_dim": None,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "projection_class_embeddings_input_dim": None,
        "attention_type": "default",
        "class_embeddings_concat": False,
        # Only for UNetMidBlock2DSimpleCrossAttn / the Simple* blocks: no effect here.
        "mid_block_only_cross_attention": None,
        "cross_attention_norm": None,
        # Only with addition_embed_type="text" (refused): no effect here.
        "addition_embed_type_num_heads": 64,
    }
    FIXED: ClassVar[tuple[str, ...]] = (
        "only_cross_attention",
        "reverse_transformer_layers_per_block",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        # diffusers itself refuses it ("not possible to define the number of attention heads").
        "num_attention_heads",
        "dual_cross_attention",
        "class_embed_type",
        "addition_embed_type",
        "addition_time_embed_dim",
        "num_class_embeds",
        "resnet_time_scale_shift",
        "resnet_skip_time_act",
        "time_embedding_type",
        "time_cond_proj_dim",
        "projection_class_embeddings_input_dim",
        "attention_type",
        "class_embeddings_concat",
    )

    def __init__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__({**dict(config or {}), **kwargs})
        c = self.config
        name = type(self).__name__
        down_block_types, up_block_types = list(c.down_block_types), list(c.up_block_types)
        n = len(down_block_types)
        for block_type in down_block_types:
            require_supported(name, "down_block_types", block_type, DOWN_BLOCK_TYPES)
        for block_type in up_block_types:
            require_supported(name, "up_block_types", block_type, UP_BLOCK_TYPES)
        require_supported(name, "mid_block_type", c.mid_block_type, MID_BLOCK_TYPES)
        require_supported(name, "act_fn", c.act_fn, ACTIVATIONS)
        require_supported(name, "time_embedding_act_fn", c.time_embedding_act_fn, [None, *ACTIVATIONS])
        require_supported(name, "timestep_post_act", c.timestep_post_act, [None, *ACTIVATIONS])
        if not isinstance(c.norm_num_groups, int):
            raise SvEngineError(f"{name} does not implement norm_num_groups={c.norm_num_groups!r}.", SD15_HINT)
        if len(up_block_types) != n or len(c.block_out_channels) != n:
            raise SvEngineError(
                f"{name} config: {n} down_block_types, {len(up_block_types)} up_block_types and "
                f"{len(c.block_out_channels)} block_out_channels.",
                "Give the same number of each.",
            )
        block_out_channels = list(c.block_out_channels)
        # diffusers' naming quirk: for SD, ``attention_head_dim`` holds the number of heads.
        num_attention_heads = per_block(name, "attention_head_dim", c.attention_head_dim, n)
        cross_attention_dim = per_block(name, "cross_attention_dim", c.cross_attention_dim, n)
        layers_per_block = per_block(name, "layers_per_block", c.layers_per_block, n)
        transformer_layers_per_block = transformer_layers(name, c.transformer_layers_per_block, n)

        self.sample_size = c.sample_size
        self.conv_in = Conv2d(
            c.in_channels, block_out_channels[0], kernel_size=c.conv_in_kernel, padding=(c.conv_in_kernel - 1) // 2
        )
        time_embed_dim = c.time_embedding_dim or block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(
            block_out_channels[0], time_embed_dim, act_fn=c.act_fn, post_act_fn=c.timestep_post_act
        )
        self.encoder_hid_proj = None
        self.class_embedding = None
        self.time_embed_act = None if c.time_embedding_act_fn is None else get_activation(c.time_embedding_act_fn)

        self.down_blocks = nn.ModuleList([])
        self.up_blocks = nn.ModuleList([])

        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(
                make_down_block(
                    block_type,
                    num_layers=layers_per_block[i],
                    transformer_layers_per_block=transformer_layers_per_block[i],
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    add_downsample=i < n - 1,
                    resnet_eps=c.norm_eps,
                    resnet_act_fn=c.act_fn,
                    resnet_groups=c.norm_num_groups,
                    cross_attention_dim=cross_attention_dim[i],
                    num_attention_heads=num_attention_heads[i],
                    downsample_padding=c.downsample_padding,
                    use_linear_projection=c.use_linear_projection,
                    upcast_attention=c.upcast_attention,
                    dropout=c.dropout,
                )
            )

        self.mid_block = make_mid_block(
            c.mid_block_type,
            in_channels=block_out_channels[-1],
            temb_channels=time_embed_dim,
            resnet_eps=c.norm_eps,
            resnet_act_fn=c.act_fn,
            resnet_groups=c.norm_num_groups,
            output_scale_factor=c.mid_block_scale_factor,
            transformer_layers_per_block=transformer_layers_per_block[-1],
            num_attention_heads=num_attention_heads[-1],
            cross_attention_dim=cross_attention_dim[-1],
            use_linear_projection=c.use_linear_projection,
            upcast_attention=c.upcast_attention,
            dropout=c.dropout,
        )

        self.num_upsamplers = 0
        reversed_channels = list(reversed(block_out_channels))
        reversed_heads = list(reversed(num_attention_heads))
        reversed_layers = list(reversed(layers_per_block))
        reversed_cross_dim = list(reversed(cross_attention_dim))
        reversed_transformer_layers = list(reversed(transformer_layers_per_block))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            is_final_block = i == n - 1
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            input_channel = reversed_channels[min(i + 1, n - 1)]
            if not is_final_block:
                self.num_upsamplers += 1
            common: dict[str, Any] = {
                "num_layers": reversed_layers[i] + 1,
                "in_channels": input_channel,
                "out_channels": output_channel,
                "prev_output_channel": prev_output_channel,
                "temb_channels": time_embed_dim,
                "resolution_idx": i,
                "dropout": c.dropout,
                "add_upsample": not is_final_block,
                "resnet_eps": c.norm_eps,
                "resnet_act_fn": c.act_fn,
                "resnet_groups": c.norm_num_groups,
            }
            if block_type == "UpBlock2D":
                self.up_blocks.append(UpBlock2D(**common))
            else:
                self.up_blocks.append(
                    CrossAttnUpBlock2D(
                        **common,
                        transformer_layers_per_block=reversed_transformer_layers[i],
                        cross_attention_dim=reversed_cross_dim[i],
                        num_attention_heads=reversed_heads[i],
                        use_linear_projection=c.use_linear_projection,
                        upcast_attention=c.upcast_attention,
                    )
                )

        self.conv_norm_out = GroupNorm(c.norm_num_groups, block_out_channels[0], eps=c.norm_eps, silu=is_silu(c.act_fn))
        self.conv_act = nn.Identity() if self.conv_norm_out.silu else get_activation(c.act_fn)
        self.conv_out = Conv2d(
            block_out_channels[0], c.out_channels, kernel_size=c.conv_out_kernel, padding=(c.conv_out_kernel - 1) // 2
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Noise prediction for ``sample`` (B, C, h, w) at ``timestep`` (number, 0-d or (B,) tensor) given
        the text states (B, S, D); the ControlNet residuals (both or neither) are added to the skip
        connections and to the middle block's output."""
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            # diffusers treats down-only residuals as a T2I-Adapter's and drops mid-only ones.
            raise SvEngineError(
                "UNet2DConditionModel takes ControlNet residuals as both the down and the mid residuals.",
                "Pass down_block_additional_residuals and mid_block_additional_residual together.",
            )
        # Odd latent sizes: each upsampler then takes its skip connection's size (a shape check only).
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])

        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # The sinusoidal embedding is float32: cast to the model's dtype (fp16 models).
        t_emb = self.time_proj(batch_timesteps(timestep, sample)).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)

        sample = self.conv_in(sample)
        down_block_res_samples: tuple[torch.Tensor, ...] = (sample,)
        for down_block in self.down_blocks:
            if down_block.has_cross_attention:
                sample, res_samples = down_block(sample, emb, encoder_hidden_states)
            else:
                sample, res_samples = down_block(sample, emb)
            down_block_res_samples += res_samples

        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(down_block_res_samples):
                raise SvEngineError(
                    f"UNet2DConditionModel got {len(down_block_additional_residuals)} down residuals for "
                    f"{len(down_block_res_samples)} skip connections.",
                    "Pass the residuals of a ControlNet with this UNet's layout.",
                )
            down_block_res_samples = tuple(
                res + extra for res, extra in zip(down_block_res_samples, down_block_additional_residuals, strict=True)
            )

        if self.mid_block is not None:
            if self.mid_block.has_cross_attention:
                sample = self.mid_block(sample, emb, encoder_hidden_states)
            else:
                sample = self.mid_block(sample, emb)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        upsample_size = None
        for i, up_block in enumerate(self.up_blocks):
            n_res = len(up_block.resnets)
            res_samples = down_block_res_samples[-n_res:]
            down_block_res_samples = down_block_res_samples[:-n_res]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = down_block_res_samples[-1].shape[2:]
            if up_block.has_cross_attention:
                sample = up_block(sample, res_samples, emb, encoder_hidden_states, upsample_size)
            else:
                sample = up_block(sample, res_samples, emb, upsample_size)

        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)
