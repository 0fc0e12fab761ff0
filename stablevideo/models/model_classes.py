"""The classes of the pipeline's models: the one place that names them.

They are the plain torch networks of :mod:`.nets` (diffusers' / transformers' parameter names and
configs), imported when a model is built, so ``--help``, usage errors and bad input never pay for them
(tests/test_lazy_imports.py). The libraries' own classes cost a cold edit 10-16 s of imports on the
H200 host (``torch._dynamo`` 3.8 s through diffusers' ``maybe_allow_in_graph`` and transformers' masking
utils, ``diffusers.loaders`` 2.4 s, every model family's package; benchmarks/results/cold-start-*);
these import torch only.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .nets.clip_text import CLIPTextModel
    from .nets.controlnet import ControlNetModel
    from .nets.dpt import DPTForDepthEstimation
    from .nets.unet import UNet2DConditionModel
    from .nets.vae import AutoencoderKL


class ModelClasses(NamedTuple):
    """The classes of :class:`~.components.SDComponents`' models, each built ``from_config(dict)``."""

    unet: type[UNet2DConditionModel]
    controlnet: type[ControlNetModel]
    vae: type[AutoencoderKL]
    text_encoder: type[CLIPTextModel]
    depth: type[DPTForDepthEstimation]


@functools.cache
def model_classes() -> ModelClasses:
    """The model classes, imported once per process."""
    from .nets.clip_text import CLIPTextModel
    from .nets.controlnet import ControlNetModel
    from .nets.dpt import DPTForDepthEstimation
    from .nets.unet import UNet2DConditionModel
    from .nets.vae import AutoencoderKL

    return ModelClasses(UNet2DConditionModel, ControlNetModel, AutoencoderKL, CLIPTextModel, DPTForDepthEstimation)
