"""StableVideo's models: SD 1.5 + ControlNet 1.0 (canny, depth) + MiDaS DPT-hybrid.

* :mod:`.components` — :class:`SDComponents`, the bundle every stage takes.
* :mod:`.tokenizer` — the CLIP tokenizer from the packaged BPE vocabulary (offline).
* :mod:`.tiny` — random bundles: tiny (tests) and full-size (benchmarks), configs in ``assets/configs``.
* :mod:`.loaders` — real weights: diffusers folder, original ``control_sd15_*.pth``, MiDaS ``dpt_hybrid``.
* :mod:`.ddim` — LDM's DDIM sampler (txt2img, img2img with LDM's one-below quirk).
* :mod:`.diffusion` — :class:`ControlledDenoiser` (CFG through ControlNet → UNet, swappable callables),
  ``txt2img`` / ``img2img``.
* :mod:`.depth` — ``estimate_depth`` as ControlNet's MiDaS annotator.

Heavy libraries (diffusers, transformers) are imported inside the functions that need them.
"""

from .components import DDIM_SCHEDULER_CONFIG, LATENT_FACTOR, VAE_SCALE, SDComponents
from .ddim import DDIMSampler
from .depth import dpt_forward, estimate_depth
from .diffusion import ControlledDenoiser, img2img, make_generator, resolve_seed, txt2img
from .loaders import (
    convert_control_sd15,
    convert_original_to_folder,
    load_components,
    load_diffusers_folder,
    load_midas_dpt_hybrid,
    load_original_checkpoints,
    load_weights,
    save_components,
)
from .tiny import build_random_components, build_tiny_components, load_config
from .tokenizer import load_clip_tokenizer

__all__ = [
    "DDIM_SCHEDULER_CONFIG",
    "LATENT_FACTOR",
    "VAE_SCALE",
    "SDComponents",
    "DDIMSampler",
    "ControlledDenoiser",
    "txt2img",
    "img2img",
    "make_generator",
    "resolve_seed",
    "estimate_depth",
    "dpt_forward",
    "load_clip_tokenizer",
    "build_tiny_components",
    "build_random_components",
    "load_config",
    "convert_control_sd15",
    "convert_original_to_folder",
    "load_components",
    "load_diffusers_folder",
    "load_midas_dpt_hybrid",
    "load_original_checkpoints",
    "load_weights",
    "save_components",
]
