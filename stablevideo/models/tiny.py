"""Random-weight model bundles built from configs (nothing is downloaded).

* :func:`build_tiny_components` — the real classes with tiny configs (CPU tests, exporter tests).
  The architecture keeps the SD 1.5 structure (4 latent channels, cross-attention down/up blocks,
  latent factor 8, ControlNet derived from the UNet, hybrid BiT+ViT DPT), only narrower/shallower.
* :func:`build_random_components` — full-size SD 1.5 / ControlNet 1.0 / DPT-hybrid architectures
  with random weights (GPU benchmarks), from the JSON configs shipped in
  ``sv_engine/stablevideo/assets/configs``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

import torch
from sv_engine.stablevideo.seeding import seeded

from sv_engine.errors import SvEngineError

from .components import SDComponents
from .model_classes import model_classes
from .tokenizer import load_clip_tokenizer

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Tiny configs (kept here, in code, so tests never depend on files).
# --------------------------------------------------------------------------------------------------

TINY_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
    "projection_dim": 32,
}

TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    # Attention only at the lowest resolution (latent/4): the tiny model must edit a 512-px keyframe
    # in seconds on a 2-core CPU (self-attention over all 64×104 latent tokens would take minutes).
    "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "act_fn": "silu",
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
}

#: ControlNet hint encoder channels (SD: 16, 32, 96, 256); 3 stride-2 convs keep the factor 8.
TINY_CONTROLNET_COND_CHANNELS = (8, 8, 16, 16)

TINY_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "act_fn": "silu",
    "scaling_factor": 0.18215,
}

TINY_DPT_CONFIG: dict[str, Any] = {
    "is_hybrid": True,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 64,
    "patch_size": 16,
    "backbone_out_indices": [0, 1, 1, 3],
    "readout_type": "project",
    "reassemble_factors": [1, 1, 1, 0.5],
    "neck_hidden_sizes": [16, 32, 32, 32],
    "fusion_hidden_size": 16,
    "head_in_index": -1,
    "use_batch_norm_in_fusion_residual": False,
    "use_auxiliary_head": False,
    "backbone_featmap_shape": [1, 64, 4, 4],
    "neck_ignore_stages": [0, 1],
    "qkv_bias": True,
    "layer_norm_eps": 1e-12,
    "backbone_config": {
        "model_type": "bit",
        "global_padding": "same",
        "layer_type": "bottleneck",
        "depths": [1, 1, 1],
        "hidden_sizes": [16, 32, 64],
        "embedding_size": 8,
        "num_groups": 4,
        "out_features": ["stage1", "stage2", "stage3"],
        "embedding_dynamic_padding": True,
    },
}


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------


def _randomize_zero_convs(controlnet: torch.nn.Module, generator: torch.Generator, std: float = 0.05) -> None:
    """Give ControlNet's zero-initialised output convs random weights so control has an effect."""
    zero_convs = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for conv in zero_convs:
            # Drawn on the generator's (CPU) device: the same values whatever device the model is built on.
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator, device="cpu") * std)
            if conv.bias is not None:
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator, device="cpu") * std)


def _tiny_controlnet(unet: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A ControlNet with the tiny UNet's layout (``ControlNetModel.from_unet``) and its own random weights."""
    controlnet_class = model_classes().controlnet
    controlnet = controlnet_class.from_unet(unet, conditioning_embedding_out_channels=TINY_CONTROLNET_COND_CHANNELS)
    # from_unet copies the UNet weights: re-seed so each ControlNet is an independent random model.
    with seeded(seed):
        fresh = controlnet_class.from_config(controlnet.config)
    controlnet.load_state_dict(fresh.state_dict())
    _randomize_zero_convs(controlnet, torch.Generator().manual_seed(seed))
    return controlnet


def _seeded_bundle(
    seed: int,
    description: str,
    text_encoder: Callable[[], torch.nn.Module],
    unet: Callable[[], torch.nn.Module],
    controlnet: Callable[[torch.nn.Module, int], torch.nn.Module],
    vae: Callable[[], torch.nn.Module],
    depth: Callable[[], torch.nn.Module] | None,
) -> SDComponents:
    """A random bundle whose models are each built right after seeding torch with ``seed`` plus the
    model's slot (text encoder 0, UNet 1, ControlNets 2 and 3, VAE 4, DPT 5): reproducible, and no
    model's values shift when another one's architecture changes."""
    tokenizer = load_clip_tokenizer()
    with seeded(seed):
        text = text_encoder()
    with seeded(seed + 1):
        unet_model = unet()
    canny, depth_controlnet = controlnet(unet_model, seed + 2), controlnet(unet_model, seed + 3)
    with seeded(seed + 4):
        vae_model = vae()
    depth_model = None
    if depth is not None:
        with seeded(seed + 5):
            depth_model = depth()
    return SDComponents(
        tokenizer=tokenizer,
        text_encoder=text,
        unet=unet_model,
        controlnet_canny=canny,
        controlnet_depth=depth_controlnet,
        vae=vae_model,
        depth_model=depth_model,
        is_random=True,
        description=description,
    ).eval()


def build_tiny_components(seed: int = 0) -> SDComponents:
    """Tiny random SD 1.5 + 2×ControlNet + VAE + DPT-hybrid bundle (real classes, fixed seed).

    Deterministic for a given ``seed``. Latent factor 8, 4 latent channels, text width 32, 77 tokens.
    Runs a 64×64 image through everything in well under a second on CPU.
    """
    classes = model_classes()
    return _seeded_bundle(
        seed,
        f"tiny random SD1.5+ControlNet+DPT-hybrid (seed {seed})",
        text_encoder=lambda: build_text_encoder(TINY_TEXT_CONFIG),
        unet=lambda: classes.unet(**TINY_UNET_CONFIG),
        controlnet=_tiny_controlnet,
        vae=lambda: classes.vae(**TINY_VAE_CONFIG),
        depth=lambda: build_dpt(TINY_DPT_CONFIG),
    )


# --------------------------------------------------------------------------------------------------
# Full-size configs shipped as package data
# --------------------------------------------------------------------------------------------------

CONFIG_NAMES = ("text_encoder", "unet", "controlnet", "vae", "dpt_hybrid", "scheduler")


def load_config(name: str) -> dict[str, Any]:
    """One of the shipped full-size configs: ``text_encoder``, ``unet``, ``controlnet``, ``vae``,
    ``dpt_hybrid``, ``scheduler`` (``sv_engine/stablevideo/assets/configs/<name>.json``)."""
    if name not in CONFIG_NAMES:
        raise SvEngineError(f"Unknown model config {name!r}.", f"Use one of {', '.join(CONFIG_NAMES)}.")
    try:
        text = resources.files("sv_engine.stablevideo.assets").joinpath("configs", f"{name}.json").read_text()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise SvEngineError(
            f"The packaged model config {name}.json is missing ({exc}).",
            "Reinstall sv-engine (`pip install -e .`) so stablevideo/assets/configs/*.json are present.",
        ) from exc
    config = json.loads(text)
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_text_encoder(config: dict[str, Any]) -> torch.nn.Module:
    return model_classes().text_encoder.from_config(config)


def build_dpt(config: dict[str, Any]) -> torch.nn.Module:
    return model_classes().depth.from_config(config)


def build_random_components(
    seed: int = 0, size: str = "full", with_depth: bool = True, device: str | torch.device | None = None
) -> SDComponents:
    """Random-weight bundle: ``size="full"`` = real SD 1.5 / ControlNet 1.0 / DPT-hybrid shapes
    (≈ 860M UNet + 2×361M ControlNet + 123M CLIP + 84M VAE + 122M DPT, 7.6 GB in fp32),
    ``size="tiny"`` = :func:`build_tiny_components`.

    ``device``: build the full-size models directly there (e.g. ``"cuda"``: no 7.6 GB CPU copy, fast
    init; ``"meta"``: shapes only). Random values then depend on the device's RNG.
    """
    if size == "tiny":
        return build_tiny_components(seed)
    if size != "full":
        raise SvEngineError(f"Unknown model size {size!r}.", "Use size='full' or size='tiny'.")
    if device is not None:
        with torch.device(device):
            return build_random_components(seed, size, with_depth, device=None)
    classes = model_classes()
    cn_config = load_config("controlnet")

    def controlnet(unet: torch.nn.Module, cn_seed: int) -> torch.nn.Module:
        with seeded(cn_seed):
            model = classes.controlnet.from_config(cn_config)
        _randomize_zero_convs(model, torch.Generator().manual_seed(cn_seed), std=0.01)
        return model

    return _seeded_bundle(
        seed,
        f"full-size random SD1.5+ControlNet1.0+DPT-hybrid (seed {seed})",
        text_encoder=lambda: build_text_encoder(load_config("text_encoder")),
        unet=lambda: classes.unet.from_config(load_config("unet")),
        controlnet=controlnet,
        vae=lambda: classes.vae.from_config(load_config("vae")),
        depth=(lambda: build_dpt(load_config("dpt_hybrid"))) if with_depth else None,
    )
