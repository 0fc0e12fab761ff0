"""VAE encoder (-> latent distribution mean and logvar; sampling stays outside) and decoder.

The encoder returns the diagonal Gaussian's ``mean`` and ``logvar`` (clamped to [-30, 20] exactly
as diffusers' ``DiagonalGaussianDistribution``), so the caller samples ``mean + exp(0.5·logvar)·ε``
with its own generator — identical to the reference. Neither graph applies the 0.18215 latent
scale: encode → ``latent = sample · vae_scale``, decode takes ``latent / vae_scale``.
"""

from __future__ import annotations

import torch
from sv_engine.export.spec import DEFAULT_SHAPES, ExportSpec, ShapeRange, latent_ranges
from torch import nn


class _Encoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image):
        h = self.vae.encoder(image)
        if getattr(self.vae, "quant_conv", None) is not None:
            h = self.vae.quant_conv(h)
        mean, logvar = torch.chunk(h, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return (self.vae.decode(latent, return_dict=False)[0],)


class _VAEBase(ExportSpec):
    def __init__(self, vae: nn.Module, precision: str = "fp32", shapes: ShapeRange = DEFAULT_SHAPES, device="cpu"):
        super().__init__(precision, shapes, device)
        self.vae = vae
        self.latent_channels = int(vae.config.latent_channels)

    def symbol_ranges(self):
        return latent_ranges(self.shapes)

    def input_dtypes(self):
        return {n: self.dtype for n in self.input_names()}


class VAEEncoderSpec(_VAEBase):
    """``image`` (B,3,8h,8w) in [-1, 1] -> ``mean``, ``logvar`` (B,4,h,w)."""

    name = "vae_encoder"

    def build_module(self):
        return _Encoder(self.vae)

    def input_names(self):
        return ["image"]

    def output_names(self):
        return ["mean", "logvar"]

    def input_shapes(self):
        return {"image": ["B", 3, "h*8", "w*8"]}

    def output_shapes(self):
        return {"mean": ["B", self.latent_channels, "h", "w"], "logvar": ["B", self.latent_channels, "h", "w"]}

    def sample_input(self, name, shape, dtype, gen):
        return (torch.rand(shape, generator=gen) * 2 - 1).to(dtype)


class VAEDecoderSpec(_VAEBase):
    """``latent`` (B,4,h,w) (already divided by the latent scale) -> ``image`` (B,3,8h,8w) in ≈[-1, 1]."""

    name = "vae_decoder"

    def build_module(self):
        return _Decoder(self.vae)

    def input_names(self):
        return ["latent"]

    def output_names(self):
        return ["image"]

    def input_shapes(self):
        return {"latent": ["B", self.latent_channels, "h", "w"]}

    def output_shapes(self):
        return {"image": ["B", 3, "h*8", "w*8"]}
