"""The diffusers / transformers classes of the pipeline's models, imported the cheap way.

A cold ``sv-engine edit`` spent more time importing diffusers than loading its weights (H200: 13.7 s of
imports against 1.4 s of fp16 weights). Most of it is not the five classes the pipeline uses:

* diffusers' model families are packages whose ``__init__`` imports every model of the family
  (``diffusers.models.transformers`` imports ~80 transformers, ``autoencoders`` ~40 VAEs). The classes
  live in leaf modules (``unets.unet_2d_condition``, ...), so those packages are registered with their
  ``__init__`` deferred (:func:`defer_package_init`): importing a leaf module runs only what it imports
  itself; anything that asks the package for a name still gets the whole ``__init__`` run first, so
  nothing changes for other code but the moment the family is imported.
* diffusers imports ``peft`` (its hooks) whenever peft is installed, 3.3 s on the H200, for LoRA
  adapters the pipeline never loads: :func:`model_classes` hides it while diffusers and transformers
  decide what is available (an import-system ``None`` entry, then removed: ``import peft`` works again
  afterwards, only diffusers and transformers keep taking it as absent for this process).
* ``torch._dynamo`` (5.4 s on the H200) stays: transformers' CLIP and DPT import it too, and diffusers
  registers its blocks with dynamo (``allow_in_graph``), which the torch-compile backend relies on.
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
#: Installed packages the pipeline never uses that diffusers / transformers import when present.
UNUSED_OPTIONAL_PACKAGES = ("peft",)

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
    hidden = [name for name in UNUSED_OPTIONAL_PACKAGES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # find_spec() -> None, import -> ImportError
    try:
        for package in EAGER_DIFFUSERS_PACKAGES:
            defer_package_init(package)
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
        from diffusers.models.controlnets.controlnet import ControlNetModel
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation

        # transformers' top level is lazy: resolving the names imports the CLIP and DPT modules now.
        classes = ModelClasses(
            UNet2DConditionModel, ControlNetModel, AutoencoderKL, CLIPTextModel, CLIPTextConfig, DPTForDepthEstimation,
            DPTConfig,
        )  # fmt: skip
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
    return classes


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
