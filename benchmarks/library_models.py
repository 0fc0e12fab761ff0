"""The same weights in the diffusers / transformers classes the pipeline's own networks replaced
(:mod:`sv_engine.stablevideo.models.nets`), for a warm edit side by side with them in one process: the
networks' speed and accuracy against the libraries', not across runs."""

from __future__ import annotations

import dataclasses

import torch
from sv_engine.stablevideo.models.components import SDComponents


def _in_library_class(model: torch.nn.Module, library_class: type) -> torch.nn.Module:
    """``model``'s tensors (shared, not copied) in ``library_class`` built from the same config.

    Built on ``model``'s device, not the meta device: transformers' CLIP keeps ``position_ids`` in a
    non-persistent buffer, which no state dict fills (garbage positions cost a warm edit 30 dB)."""
    config = dict(model.config)
    with torch.device(next(model.parameters()).device):
        if library_class.__module__.startswith("transformers"):
            twin = library_class(library_class.config_class(**config))
        else:
            twin = library_class.from_config(config)
    state = model.state_dict()
    if not set(state) <= set(twin.state_dict()):  # transformers 5 names CLIP's text tower without "text_model."
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    twin.load_state_dict(state, strict=True, assign=True)
    return twin.eval().requires_grad_(False)


def as_library_models(components: SDComponents) -> SDComponents:
    """``components`` with the UNet, both ControlNets, the VAE and the text encoder as the diffusers /
    transformers classes on the same tensors (the depth model and the tokenizer stay)."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.controlnets.controlnet import ControlNetModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel

    def twin(model: torch.nn.Module | None, library_class: type) -> torch.nn.Module | None:
        return None if model is None else _in_library_class(model, library_class)

    return dataclasses.replace(
        components,
        text_encoder=twin(components.text_encoder, CLIPTextModel),
        unet=twin(components.unet, UNet2DConditionModel),
        controlnet_canny=twin(components.controlnet_canny, ControlNetModel),
        controlnet_depth=twin(components.controlnet_depth, ControlNetModel),
        vae=twin(components.vae, AutoencoderKL),
        description=f"{components.description}, in the diffusers / transformers classes",
    )
