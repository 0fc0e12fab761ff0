"""SD 1.5's KL autoencoder (diffusers' ``AutoencoderKL``) as a plain torch module.

Encoder (image -> mean ‖ logvar of the latent Gaussian) and decoder (latent -> image), with diffusers'
parameter names (``vae/config.json`` + ``diffusion_pytorch_model.safetensors`` load with ``strict=True``) and
construction order, built without importing diffusers (see the package docstring for why). Tiling and
slicing are not implemented: the engine encodes and decodes whole keyframes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from sv_engine.errors import SvEngineError

from .base import ConfiguredModel
from .blocks import (
    ACTIVATIONS,
    SD15_HINT,
    DownEncoderBlock2D,
    UNetMidBlock2D,
    UpDecoderBlock2D,
    require_supported,
)
from .conv import Conv2d
from .norms import GroupNorm

logger = logging.getLogger(__name__)


class DiagonalGaussianDistribution:
    """The encoder's posterior: ``parameters`` (B, 2C, h, w) = mean ‖ logvar, logvar clamped to [-30, 20]
    (diffusers' class, same attributes)."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False) -> None:
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if self.deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std · ε, ε drawn on the generator's device (a CPU generator: the same values whatever the
        model's device, as diffusers' ``randn_tensor``) and moved to the parameters' device."""
        device = self.parameters.device
        rand_device = generator.device if generator is not None else device
        noise = torch.randn(self.mean.shape, generator=generator, device=rand_device, dtype=self.parameters.dtype)
        return self.mean + self.std * noise.to(device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        if self.deterministic:
            return torch.zeros(1)
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=[1, 2, 3],
        )

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        if self.deterministic:
            return torch.zeros(1)
        return 0.5 * torch.sum(
            math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims)
        )


class AutoencoderKLOutput(NamedTuple):
    latent_dist: DiagonalGaussianDistribution


class DecoderOutput(NamedTuple):
    sample: torch.Tensor


def _mid_block(channels: int, groups: int, act_fn: str, add_attention: bool) -> UNetMidBlock2D:
    """The encoder's and decoder's middle: ResNet, single-head spatial self-attention, ResNet."""
    return UNetMidBlock2D(
        in_channels=channels,
        resnet_eps=1e-6,
        resnet_act_fn=act_fn,
        output_scale_factor=1,
        attention_head_dim=channels,
        resnet_groups=groups,
        temb_channels=None,
        add_attention=add_attention,
    )


class Encoder(nn.Module):
    """conv_in -> DownEncoderBlock2D × N (the last without downsampling) -> mid block (with attention) ->
    GroupNorm -> SiLU -> conv_out to 2·latent channels (``double_z``)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        double_z: bool = True,
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        self.layers_per_block = layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList([])
        output_channel = block_out_channels[0]
        for i, _ in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(
                DownEncoderBlock2D(
                    num_layers=layers_per_block,
                    in_channels=input_channel,
                    out_channels=output_channel,
                    add_downsample=i < len(block_out_channels) - 1,
                    resnet_eps=1e-6,
                    downsample_padding=0,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                )
            )
        self.mid_block = _mid_block(block_out_channels[-1], norm_num_groups, act_fn, mid_block_add_attention)
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6, silu=True)
        self.conv_out = Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for down_block in self.down_blocks:
            sample = down_block(sample)
        sample = self.mid_block(sample)
        return self.conv_out(self.conv_norm_out(sample))


class Decoder(nn.Module):
    """conv_in -> mid block (with attention) -> UpDecoderBlock2D × N (the last without upsampling) ->
    GroupNorm -> SiLU -> conv_out."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        up_block_types: Sequence[str] = ("UpDecoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        self.layers_per_block = layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        # Registered before mid_block (diffusers' state_dict order), filled after it (its RNG order).
        self.up_blocks = nn.ModuleList([])
        self.mid_block = _mid_block(block_out_channels[-1], norm_num_groups, act_fn, mid_block_add_attention)
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i, _ in enumerate(up_block_types):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            self.up_blocks.append(
                UpDecoderBlock2D(
                    num_layers=layers_per_block + 1,
                    in_channels=prev_output_channel,
                    out_channels=output_channel,
                    resolution_idx=i,
                    add_upsample=i < len(block_out_channels) - 1,
                    resnet_eps=1e-6,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    temb_channels=None,
                )
            )
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6, silu=True)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        sample = self.mid_block(sample)
        for up_block in self.up_blocks:
            sample = up_block(sample)
        return self.conv_out(self.conv_norm_out(sample))


class AutoencoderKL(ConfiguredModel):
    """The VAE: :meth:`encode` (image in [-1, 1] -> ``.latent_dist``) and :meth:`decode` (unscaled latent ->
    ``.sample`` image); the 0.18215 latent scale (``config.scaling_factor``) stays with the caller, as in
    diffusers. ``AutoencoderKL(config)`` / ``AutoencoderKL(**config)``."""

    WEIGHTS_NAME: ClassVar[str] = "diffusion_pytorch_model.safetensors"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",),
        "up_block_types": ("UpDecoderBlock2D",),
        "block_out_channels": (64,),
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 32,
        "scaling_factor": 0.18215,
        # Metadata for pipelines (latent normalisation, fp32 upcast of SDXL's VAE): no effect on the module.
        "shift_factor": None,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": True,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }
    FIXED: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__({**dict(config or {}), **kwargs})
        c = self.config
        name = type(self).__name__
        for block_type in c.down_block_types:
            require_supported(name, "down_block_types", block_type, ("DownEncoderBlock2D",))
        for block_type in c.up_block_types:
            require_supported(name, "up_block_types", block_type, ("UpDecoderBlock2D",))
        require_supported(name, "act_fn", c.act_fn, ACTIVATIONS)
        n = len(c.block_out_channels)
        if len(c.down_block_types) != n or len(c.up_block_types) != n:
            raise SvEngineError(
                f"{name} config: {len(c.down_block_types)} down_block_types, {len(c.up_block_types)} "
                f"up_block_types and {n} block_out_channels.",
                "Give the same number of each.",
            )
        if not isinstance(c.layers_per_block, int):
            raise SvEngineError(f"{name} does not implement layers_per_block={c.layers_per_block!r}.", SD15_HINT)

        self.encoder = Encoder(
            in_channels=c.in_channels,
            out_channels=c.latent_channels,
            down_block_types=c.down_block_types,
            block_out_channels=c.block_out_channels,
            layers_per_block=c.layers_per_block,
            act_fn=c.act_fn,
            norm_num_groups=c.norm_num_groups,
            double_z=True,
            mid_block_add_attention=c.mid_block_add_attention,
        )
        self.decoder = Decoder(
            in_channels=c.latent_channels,
            out_channels=c.out_channels,
            up_block_types=c.up_block_types,
            block_out_channels=c.block_out_channels,
            layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_num_groups,
            act_fn=c.act_fn,
            mid_block_add_attention=c.mid_block_add_attention,
        )
        latent = c.latent_channels
        self.quant_conv = Conv2d(2 * latent, 2 * latent, 1) if c.use_quant_conv else None
        self.post_quant_conv = Conv2d(latent, latent, 1) if c.use_post_quant_conv else None
        self.use_slicing = False
        self.use_tiling = False

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder(x)
        if self.quant_conv is not None:
            enc = self.quant_conv(enc)
        return enc

    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """``x`` (B, 3, H, W) in [-1, 1] -> the posterior over the (B, C, H/8, W/8) latent (unscaled)."""
        posterior = DiagonalGaussianDistribution(self._encode(x))
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def decode(
        self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """``z`` (B, C, h, w), already ÷ ``scaling_factor`` -> image (B, 3, 8h, 8w) in ≈[-1, 1].
        ``generator`` is accepted for diffusers' signature (the decoder is deterministic)."""
        decoded = self._decode(z)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Encode then decode (the posterior's mode, or a sample when ``sample_posterior``)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self._decode(z)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def enable_tiling(self, use_tiling: bool = True) -> None:
        if use_tiling:
            raise SvEngineError("AutoencoderKL here does not implement tiled encode/decode.", "Encode whole frames.")

    def enable_slicing(self) -> None:
        raise SvEngineError("AutoencoderKL here does not implement sliced encode/decode.", "Encode whole batches.")

    def disable_tiling(self) -> None:
        """Nothing to disable: tiling is never on."""

    def disable_slicing(self) -> None:
        """Nothing to disable: slicing is never on."""
