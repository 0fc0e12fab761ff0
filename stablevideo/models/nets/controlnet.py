"""ControlNet 1.0 for SD 1.5 (diffusers' ``ControlNetModel``) as a plain torch module.

The UNet's encoder half (same parameter names as diffusers, so ``lllyasviel/sd-controlnet-*`` checkpoints
load with ``strict=True``), the hint encoder ``controlnet_cond_embedding`` and the zero-initialised 1×1
convolutions that turn every skip connection and the middle block's output into a residual for the UNet.
Built without importing diffusers (see the package docstring for why).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sv_engine.errors import SvEngineError

from .base import ConfiguredModel
from .blocks import (
    ACTIVATIONS,
    SD15_HINT,
    TimestepEmbedding,
    Timesteps,
    batch_timesteps,
    per_block,
    require_supported,
)
from .conv import Conv2d
from .unet import DOWN_BLOCK_TYPES, make_down_block, make_mid_block, transformer_layers

logger = logging.getLogger(__name__)


class ControlNetOutput(NamedTuple):
    """The ControlNet's residuals (also indexable: ``[0]`` the down list, ``[1]`` the mid tensor)."""

    down_block_res_samples: list[torch.Tensor]
    mid_block_res_sample: torch.Tensor


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter (after the default init has drawn from the RNG, as diffusers)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ControlNetConditioningEmbedding(nn.Module):
    """The hint encoder: conv_in, pairs of (3×3 conv, stride-2 3×3 conv) with SiLU, then a zero conv to the
    UNet's first width (an 8× smaller map, the latent's size)."""

    def __init__(
        self,
        conditioning_embedding_channels: int,
        conditioning_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        self.conv_in = Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList([])
        for i in range(len(block_out_channels) - 1):
            channel_in, channel_out = block_out_channels[i], block_out_channels[i + 1]
            self.blocks.append(Conv2d(channel_in, channel_in, kernel_size=3, padding=1))
            self.blocks.append(Conv2d(channel_in, channel_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = zero_module(
            Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        )

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        embedding = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            embedding = F.silu(block(embedding))
        return self.conv_out(embedding)


class ControlNetModel(ConfiguredModel):
    """ControlNet: ``forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
    return_dict=True)`` -> ``(down residuals list, mid residual)`` (or an output with
    ``down_block_res_samples`` / ``mid_block_res_sample``), every residual × ``conditioning_scale``.

    ``ControlNetModel(config)`` / ``ControlNetModel(**config)``; :meth:`from_unet` derives one from a UNet.
    """

    WEIGHTS_NAME: ClassVar[str] = "diffusion_pytorch_model.safetensors"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "in_channels": 4,
        "conditioning_channels": 3,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "only_cross_attention": False,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 1280,
        "transformer_layers_per_block": 1,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "attention_head_dim": 8,
        "num_attention_heads": None,
        "use_linear_projection": False,
        "class_embed_type": None,
        "addition_embed_type": None,
        "addition_time_embed_dim": None,
        "num_class_embeds": None,
        "upcast_attention": False,
        "resnet_time_scale_shift": "default",
        "projection_class_embeddings_input_dim": None,
        "controlnet_conditioning_channel_order": "rgb",
        "conditioning_embedding_out_channels": (16, 32, 96, 256),
        "global_pool_conditions": False,
        # Only with addition_embed_type="text" (refused): no effect here.
        "addition_embed_type_num_heads": 64,
    }
    FIXED: ClassVar[tuple[str, ...]] = (
        "only_cross_attention",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "class_embed_type",
        "addition_embed_type",
        "addition_time_embed_dim",
        "num_class_embeds",
        "resnet_time_scale_shift",
        "projection_class_embeddings_input_dim",
    )

    def __init__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__({**dict(config or {}), **kwargs})
        c = self.config
        name = type(self).__name__
        down_block_types = list(c.down_block_types)
        n = len(down_block_types)
        for block_type in down_block_types:
            require_supported(name, "down_block_types", block_type, DOWN_BLOCK_TYPES)
        require_supported(name, "mid_block_type", c.mid_block_type, ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"))
        require_supported(name, "act_fn", c.act_fn, ACTIVATIONS)
        require_supported(
            name, "controlnet_conditioning_channel_order", c.controlnet_conditioning_channel_order, ("rgb", "bgr")
        )
        # diffusers' ControlNet takes one value for these (a list breaks its constructor).
        for key in ("layers_per_block", "cross_attention_dim", "norm_num_groups"):
            if not isinstance(c[key], int):
                raise SvEngineError(f"{name} does not implement {key}={c[key]!r} (only an int).", SD15_HINT)
        if len(c.block_out_channels) != n:
            raise SvEngineError(
                f"{name} config: {len(c.block_out_channels)} block_out_channels for {n} down_block_types.",
                "Give the same number of each.",
            )
        block_out_channels = list(c.block_out_channels)
        # diffusers' naming quirk: ``attention_head_dim`` is the number of heads unless num_attention_heads is set.
        num_attention_heads = per_block(name, "num_attention_heads", c.num_attention_heads or c.attention_head_dim, n)
        transformer_layers_per_block = transformer_layers(name, c.transformer_layers_per_block, n)

        self.conv_in = Conv2d(c.in_channels, block_out_channels[0], kernel_size=3, padding=1)
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=c.act_fn)
        self.encoder_hid_proj = None
        self.class_embedding = None
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=block_out_channels[0],
            block_out_channels=list(c.conditioning_embedding_out_channels),
            conditioning_channels=c.conditioning_channels,
        )

        self.down_blocks = nn.ModuleList([])
        self.controlnet_down_blocks = nn.ModuleList([])

        def zero_conv(channels: int) -> nn.Module:
            return zero_module(Conv2d(channels, channels, kernel_size=1))

        output_channel = block_out_channels[0]
        self.controlnet_down_blocks.append(zero_conv(output_channel))
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            is_final_block = i == n - 1
            self.down_blocks.append(
                make_down_block(
                    block_type,
                    num_layers=c.layers_per_block,
                    transformer_layers_per_block=transformer_layers_per_block[i],
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    add_downsample=not is_final_block,
                    resnet_eps=c.norm_eps,
                    resnet_act_fn=c.act_fn,
                    resnet_groups=c.norm_num_groups,
                    cross_attention_dim=c.cross_attention_dim,
                    num_attention_heads=num_attention_heads[i],
                    downsample_padding=c.downsample_padding,
                    use_linear_projection=c.use_linear_projection,
                    upcast_attention=c.upcast_attention,
                )
            )
            for _ in range(c.layers_per_block):
                self.controlnet_down_blocks.append(zero_conv(output_channel))
            if not is_final_block:
                self.controlnet_down_blocks.append(zero_conv(output_channel))

        self.controlnet_mid_block = zero_conv(block_out_channels[-1])
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
            cross_attention_dim=c.cross_attention_dim,
            use_linear_projection=c.use_linear_projection,
            upcast_attention=c.upcast_attention,
        )

    @classmethod
    def from_unet(
        cls,
        unet: nn.Module,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: Sequence[int] | None = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        conditioning_channels: int = 3,
    ) -> ControlNetModel:
        """A ControlNet with ``unet``'s layout (its config's shared options), and with its conv_in, time
        embedding, down blocks and middle block weights when ``load_weights_from_unet`` (diffusers'
        ``from_unet``)."""
        ucfg = unet.config
        keys = (
            "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type",
            "addition_time_embed_dim", "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types",
            "only_cross_attention", "block_out_channels", "layers_per_block", "downsample_padding",
            "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
            "attention_head_dim", "num_attention_heads", "use_linear_projection", "class_embed_type",
            "num_class_embeds", "upcast_attention", "resnet_time_scale_shift", "projection_class_embeddings_input_dim",
            "mid_block_type",
        )  # fmt: skip
        config = {key: ucfg[key] for key in keys if key in ucfg}
        controlnet = cls(
            config,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=conditioning_channels,
        )
        if load_weights_from_unet:
            controlnet.conv_in.load_state_dict(unet.conv_in.state_dict())
            controlnet.time_embedding.load_state_dict(unet.time_embedding.state_dict())
            controlnet.down_blocks.load_state_dict(unet.down_blocks.state_dict())
            controlnet.mid_block.load_state_dict(unet.mid_block.state_dict())
        return controlnet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float | torch.Tensor = 1.0,
        return_dict: bool = True,
    ) -> ControlNetOutput | tuple[list[torch.Tensor], torch.Tensor]:
        """The residuals for the UNet: ``sample`` (B, C, h, w), ``timestep`` (number, 0-d or (B,) tensor),
        ``encoder_hidden_states`` (B, S, D), ``controlnet_cond`` (B, 3, 8h, 8w) hint image."""
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])

        # The sinusoidal embedding is float32: cast to the model's dtype (fp16 models).
        t_emb = self.time_proj(batch_timesteps(timestep, sample)).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb)

        sample = self.conv_in(sample)
        sample = sample + self.controlnet_cond_embedding(controlnet_cond)

        down_block_res_samples: tuple[torch.Tensor, ...] = (sample,)
        for down_block in self.down_blocks:
            if down_block.has_cross_attention:
                sample, res_samples = down_block(sample, emb, encoder_hidden_states)
            else:
                sample, res_samples = down_block(sample, emb)
            down_block_res_samples += res_samples

        if self.mid_block.has_cross_attention:
            sample = self.mid_block(sample, emb, encoder_hidden_states)
        else:
            sample = self.mid_block(sample, emb)

        down = [block(res) for res, block in zip(down_block_res_samples, self.controlnet_down_blocks, strict=True)]
        mid = self.controlnet_mid_block(sample)

        # x * 1.0 is exact: the common unscaled call skips 13 multiplications and changes no bit.
        if not (isinstance(conditioning_scale, (int, float)) and conditioning_scale == 1.0):
            down = [res * conditioning_scale for res in down]
            mid = mid * conditioning_scale
        if self.config.global_pool_conditions:
            down = [torch.mean(res, dim=(2, 3), keepdim=True) for res in down]
            mid = torch.mean(mid, dim=(2, 3), keepdim=True)

        if not return_dict:
            return (down, mid)
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
