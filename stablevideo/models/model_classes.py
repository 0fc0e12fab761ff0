"""The diffusers / transformers classes of the pipeline's models, imported from their own modules.

diffusers' model families are packages whose ``__init__`` imports every model of the family
(``diffusers.models.transformers`` ~80 transformers, ``autoencoders`` ~40 VAEs, ...), and the five
classes the pipeline uses live in leaf modules (``unets.unet_2d_condition``, ...). :func:`model_classes`
registers those packages with their ``__init__`` deferred (:func:`defer_package_init`): importing a leaf
module runs only what it imports itself, and anything that asks the package for a name still gets the
whole ``__init__`` run first, so nothing changes for other code but the moment the family is imported.

What it saves, measured (``python -X importtime``; benchmarks/results/cold-start-nvidia-h200-*): ~140
family modules (~400 modules with what they import) stay unimported; on a CPU their own import time
drops from 0.38 s to 0.01 s (of ~5.8 s for torch + the model libraries); on the H200 the model
libraries took 8.6 s before and 8.9 s after in one sample each, i.e. no gain beyond that run's noise.
What the import costs there is shared by every class and stays: ``torch._dynamo`` (3.4-3.8 s; diffusers'
``maybe_allow_in_graph`` and transformers' masking utils import it, and the torch-compile backend relies
on diffusers' blocks being registered with it), ``diffusers.loaders`` (2.4 s: the model classes' LoRA /
single-file mixins, which pull in transformers' losses and scipy) and transformers' core. peft, which
diffusers' hooks import whenever it is installed, is left alone: its cost on the H200 is mostly those
shared transformers modules, and hiding it would change what diffusers offers to other code.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import sys
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation

log = logging.getLogger(__name__)

#: diffusers' model-family packages whose ``__init__`` imports every model of the family.
EAGER_DIFFUSERS_PACKAGES = (
    "diffusers.models.autoencoders",
    "diffusers.models.controlnets",
    "diffusers.models.transformers",
    "diffusers.models.unets",
)

_init_lock = threading.RLock()


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
    for package in EAGER_DIFFUSERS_PACKAGES:
        defer_package_init(package)
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.controlnets.controlnet import ControlNetModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation

    # transformers' top level is lazy: resolving the names imports the CLIP and DPT modules now.
    return ModelClasses(
        UNet2DConditionModel, ControlNetModel, AutoencoderKL, CLIPTextModel, CLIPTextConfig, DPTForDepthEstimation,
        DPTConfig,
    )  # fmt: skip


def defer_package_init(name: str) -> bool:
    """Registers the package ``name`` without running its ``__init__``: its submodules import as usual
    (the package's ``__path__`` is set), and the first other name asked of the package runs the
    ``__init__`` then (:func:`_run_deferred_init`). Returns whether it deferred (False when the package
    is already imported or is not a package: nothing is changed then)."""
    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)  # imports the parent packages
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False
    module = importlib.util.module_from_spec(spec)
    module.__getattr__ = functools.partial(_run_deferred_init, module)  # type: ignore[method-assign]
    with _init_lock:
        if name in sys.modules:
            return False
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    return True


def _run_deferred_init(module: types.ModuleType, attr: str) -> Any:
    """Module ``__getattr__`` of a deferred package: a submodule's name imports that submodule; any
    other name runs the package's ``__init__`` (once) and is looked up in what it defined."""
    if any((Path(p) / f"{attr}.py").is_file() or (Path(p) / attr / "__init__.py").is_file() for p in module.__path__):
        return importlib.import_module(f"{module.__name__}.{attr}")
    with _init_lock:
        if module.__dict__.get("__getattr__") is not None:
            del module.__dict__["__getattr__"]
            log.debug("running the deferred __init__ of %s (asked for %r)", module.__name__, attr)
            module.__spec__.loader.exec_module(module)
    try:
        return module.__dict__[attr]
    except KeyError:
        raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}") from None
