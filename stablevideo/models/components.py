"""The bundle of models StableVideo needs: :class:`SDComponents`.

Stable Diffusion 1.5 (CLIP ViT-L/14 text encoder, UNet, VAE), two ControlNet 1.0 models (canny for
the foreground keyframes, depth for the background atlas) and the MiDaS DPT-hybrid depth estimator.
The same dataclass carries tiny random models (tests), full-size random models (GPU benchmarks) and
real user weights (see :mod:`sv_engine.stablevideo.models.loaders`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: SD 1.5 latent scale (``scale_factor`` in the LDM config).
VAE_SCALE = 0.18215
#: The VAE downsamples by 8 in each spatial direction.
LATENT_FACTOR = 8

#: The DDIM schedule of LDM / StableVideo written as a diffusers ``DDIMScheduler`` config
#: (same timesteps and alphas as ``ldm/models/diffusion/ddim.py`` with eta 0).
DDIM_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}

_MODULE_FIELDS = ("text_encoder", "unet", "controlnet_canny", "controlnet_depth", "vae", "depth_model")


@dataclasses.dataclass
class SDComponents:
    """All models of the StableVideo pipeline.

    Attributes:
        tokenizer: a CLIP BPE tokenizer (:class:`~.clip_tokenizer.CLIPTokenizer`: 77 tokens, pad =
            ``<|endoftext|>``).
        text_encoder: CLIP's text tower (:class:`~.nets.clip_text.CLIPTextModel`).
        unet: SD 1.5's UNet (:class:`~.nets.unet.UNet2DConditionModel`).
        controlnet_canny: a ControlNet (:class:`~.nets.controlnet.ControlNetModel`) for the foreground (canny edges).
        controlnet_depth: a ControlNet for the background (MiDaS depth).
        vae: SD's VAE (:class:`~.nets.vae.AutoencoderKL`).
        depth_model: MiDaS DPT-hybrid (:class:`~.nets.dpt.DPTForDepthEstimation`); ``None`` when not needed.
        (The networks of :mod:`.nets` have the diffusers / transformers parameter names and configs.)
        latent_factor: spatial downsampling of the VAE (8).
        vae_scale: latent scale factor (0.18215).
        is_random: True for randomly initialised weights (tests, benchmarks).
        description: a one-line human description (where the weights came from).
        scheduler_config: diffusers ``DDIMScheduler`` config equivalent to LDM's DDIM.
    """

    tokenizer: Any
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    controlnet_canny: torch.nn.Module | None
    controlnet_depth: torch.nn.Module | None
    vae: torch.nn.Module
    depth_model: torch.nn.Module | None = None
    latent_factor: int = LATENT_FACTOR
    vae_scale: float = VAE_SCALE
    is_random: bool = False
    description: str = ""
    scheduler_config: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DDIM_SCHEDULER_CONFIG))

    def modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules by field name (``None`` fields left out)."""
        return {name: getattr(self, name) for name in _MODULE_FIELDS if getattr(self, name) is not None}

    def to(
        self,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        depth_dtype: torch.dtype | None = None,
    ) -> SDComponents:
        """Move every model to ``device`` / ``dtype`` in place, the depth model to ``depth_dtype`` when
        given (edits and conversions keep it in float32: depth is estimated once per edit, and DPT
        overflows in fp16); returns ``self``."""
        for name, module in self.modules().items():
            module.to(device=device, dtype=depth_dtype if name == "depth_model" and depth_dtype else dtype)
        return self

    def eval(self) -> SDComponents:
        """Put every model in eval mode and disable gradients; returns ``self``."""
        for module in self.modules().values():
            module.eval()
            module.requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def num_parameters(self) -> dict[str, int]:
        """Parameter count per model (for logs and benchmarks)."""
        return {name: sum(p.numel() for p in m.parameters()) for name, m in self.modules().items()}
