"""The diffusers / transformers classes of the pipeline's models: the one place that imports them.

They are imported from their own modules (``diffusers.models.unets.unet_2d_condition``, ...), not from
diffusers' lazy top level, and only when a model is built, so ``--help``, usage errors and bad input never
pay for them (tests/test_lazy_imports.py).

What importing them costs on the H200 (``python -X importtime``; benchmarks/results/cold-start-nvidia-h200-*)
is mostly shared by every class: ``torch._dynamo`` (3.4-3.8 s; diffusers' ``maybe_allow_in_graph`` and
transformers' masking utils import it, and the torch-compile backend relies on diffusers' blocks being
registered with it), ``diffusers.loaders`` (2.4 s: the classes' LoRA / single-file mixins) and transformers'
core. Deferring the ``__init__`` of diffusers' model-family packages (which import every model of the family)
was tried: ~400 fewer modules, 0.35 s less on a CPU, no gain beyond the noise on the H200, so it is not done.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation


class ModelClasses(NamedTuple):
    """The classes of :class:`~.components.SDComponents`' models (and the configs of the transformers ones)."""

    unet: type[UNet2DConditionModel]
    controlnet: type[ControlNetModel]
    vae: type[AutoencoderKL]
    text_encoder: type[CLIPTextModel]
    text_config: type[CLIPTextConfig]
    depth: type[DPTForDepthEstimation]
    depth_config: type[DPTConfig]


@functools.cache
def model_classes() -> ModelClasses:
    """The model classes, imported once per process from their own modules (see the module docstring)."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.controlnets.controlnet import ControlNetModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation

    # transformers' top level is lazy: resolving the names imports the CLIP and DPT modules now.
    return ModelClasses(
        UNet2DConditionModel, ControlNetModel, AutoencoderKL, CLIPTextModel, CLIPTextConfig, DPTForDepthEstimation,
        DPTConfig,
    )  # fmt: skip
