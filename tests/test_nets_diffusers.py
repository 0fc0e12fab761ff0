"""The torch-only UNet, ControlNet and VAE (``sv_engine.stablevideo.models.nets``) against diffusers, the
reference they replace: same state_dict keys and shapes, the same random weights under one seed, and the
same outputs from the same weights; the full-size shipped configs on the meta device; refused options;
and that importing them pulls in neither diffusers nor transformers nor ``torch._dynamo``.

Output tolerance: rtol = atol = 1e-5. Both sides run the same maths in fp32 on the same weights; the only
differences are op order / kernel choice (e.g. GroupNorm over a 3-D token view vs the 4-D map), i.e.
float32 rounding, which stays orders of magnitude below 1e-5 on these tiny networks.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from sv_engine.stablevideo.models.nets.blocks import Attention
from sv_engine.stablevideo.models.nets.controlnet import ControlNetModel
from sv_engine.stablevideo.models.nets.unet import UNet2DConditionModel
from sv_engine.stablevideo.models.nets.vae import AutoencoderKL
from sv_engine.stablevideo.models.tiny import (
    TINY_CONTROLNET_COND_CHANNELS,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    load_config,
)

from sv_engine.errors import SvEngineError

TOL = {"rtol": 1e-5, "atol": 1e-5}

#: SD 1.5's block order, with the variations SD 1.5 / 2.x checkpoints use: heads per block, linear
#: projections (SD 2), 2 layers per block, 2 transformer layers in the middle, a shifted time embedding.
VARIANT_UNET_CONFIG = {
    **TINY_UNET_CONFIG,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [16, 32, 32],
    "attention_head_dim": [2, 4, 4],
    "use_linear_projection": True,
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 1, 2],
    "cross_attention_dim": 24,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "mid_block_scale_factor": 1.5,
    "center_input_sample": True,
}

#: The tiny UNet's options that a ControlNet config shares (what ``from_unet`` copies).
TINY_CONTROLNET_CONFIG = {
    **{k: v for k, v in TINY_UNET_CONFIG.items() if k in ControlNetModel.DEFAULTS},
    "conditioning_embedding_out_channels": list(TINY_CONTROLNET_COND_CHANNELS),
}

VARIANT_VAE_CONFIG = {
    **TINY_VAE_CONFIG,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 2,
    "use_post_quant_conv": False,
}


def _diffusers():
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL as RefVAE
    from diffusers.models.controlnets.controlnet import ControlNetModel as RefControlNet
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel as RefUNet

    return RefUNet, RefControlNet, RefVAE


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build().eval()


def assert_same_state(ours: torch.nn.Module, ref: torch.nn.Module, values: bool = True) -> None:
    """Same keys in the same order, same shapes, and (``values``) bitwise-equal values."""
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert list(mine) == list(theirs), sorted(set(mine) ^ set(theirs))
    for key in theirs:
        assert mine[key].shape == theirs[key].shape, key
        if values:
            assert torch.equal(mine[key], theirs[key]), f"init differs: {key}"


def _randomize_zero_convs(controlnet: torch.nn.Module, seed: int) -> None:
    """Non-zero residuals: the zero-initialised convs get random weights."""
    gen = torch.Generator().manual_seed(seed)
    convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    convs.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in convs:
            for p in conv.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _inputs(config: dict, batch: int, h: int, w: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config["in_channels"], h, w, generator=gen)
    context = torch.randn(batch, 77, config["cross_attention_dim"], generator=gen)
    control = torch.rand(batch, 3, 8 * h, 8 * w, generator=gen)
    return sample, context, control


# --------------------------------------------------------------------------------------------------
# UNet + ControlNet
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "batch", "h", "w"),
    [(TINY_UNET_CONFIG, 1, 8, 8), (VARIANT_UNET_CONFIG, 2, 6, 10)],
    ids=["tiny", "variant-odd-size"],
)
def test_unet_matches_diffusers(config, batch, h, w):
    RefUNet, _, _ = _diffusers()
    ref = _seeded(1, lambda: RefUNet(**config))
    ours = _seeded(1, lambda: UNet2DConditionModel(config))
    assert_same_state(ours, ref)
    ours.load_state_dict(ref.state_dict(), strict=True)

    sample, context, _ = _inputs(config, batch, h, w)
    timesteps = [500, 500.5, torch.tensor(500), torch.arange(batch) * 300 + 10]
    with torch.no_grad():
        for t in timesteps:
            expected = ref(sample, t, encoder_hidden_states=context, return_dict=False)[0]
            got = ours(sample, t, encoder_hidden_states=context, return_dict=False)
            assert isinstance(got, tuple)
            torch.testing.assert_close(got[0], expected, **TOL)
        out = ours(sample, 10, encoder_hidden_states=context)
        torch.testing.assert_close(out.sample, ref(sample, 10, encoder_hidden_states=context).sample, **TOL)


@pytest.mark.parametrize(
    ("unet_config", "batch", "h", "w", "order", "load_weights"),
    [(TINY_UNET_CONFIG, 1, 8, 8, "rgb", True), (VARIANT_UNET_CONFIG, 2, 6, 10, "bgr", False)],
    ids=["tiny", "variant-odd-size-bgr"],
)
def test_controlnet_and_residuals_match_diffusers(unet_config, batch, h, w, order, load_weights):
    RefUNet, RefControlNet, _ = _diffusers()
    ref_unet = _seeded(1, lambda: RefUNet(**unet_config))
    unet = _seeded(1, lambda: UNet2DConditionModel(**unet_config))
    unet.load_state_dict(ref_unet.state_dict(), strict=True)

    def derive(cls, base):
        return cls.from_unet(
            base,
            controlnet_conditioning_channel_order=order,
            conditioning_embedding_out_channels=TINY_CONTROLNET_COND_CHANNELS,
            load_weights_from_unet=load_weights,
        )

    ref = _seeded(2, lambda: derive(RefControlNet, ref_unet))
    ours = _seeded(2, lambda: derive(ControlNetModel, unet))
    assert_same_state(ours, ref)  # includes the zero convs (RNG drawn, then zeroed, as diffusers)
    # Same config as diffusers' from_unet (diffusers stores tuples where the JSON has lists).
    for key, value in ref.config.items():
        if not key.startswith("_"):
            mine = ours.config[key]
            assert (list(mine) if isinstance(mine, tuple) else mine) == (
                list(value) if isinstance(value, tuple) else value
            ), key

    _randomize_zero_convs(ref, seed=3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    sample, context, control = _inputs(unet_config, batch, h, w)
    t = torch.full((batch,), 400)
    with torch.no_grad():
        ref_down, ref_mid = ref(
            sample, t, encoder_hidden_states=context, controlnet_cond=control, conditioning_scale=0.7, return_dict=False
        )
        down, mid = ours(
            sample, t, encoder_hidden_states=context, controlnet_cond=control, conditioning_scale=0.7, return_dict=False
        )
        assert isinstance(down, list) and len(down) == len(ref_down)
        for got, expected in zip(down, ref_down, strict=True):
            torch.testing.assert_close(got, expected, **TOL)
        torch.testing.assert_close(mid, ref_mid, **TOL)
        assert mid.abs().max() > 0  # the residuals are not trivially zero

        # scale 1.0 (multiplication skipped here) equals diffusers' × 1.0
        out = ours(sample, t, encoder_hidden_states=context, controlnet_cond=control)
        ref_out = ref(sample, t, encoder_hidden_states=context, controlnet_cond=control)
        torch.testing.assert_close(out.mid_block_res_sample, ref_out.mid_block_res_sample, **TOL)

        expected = ref_unet(
            sample,
            t,
            encoder_hidden_states=context,
            down_block_additional_residuals=list(ref_down),
            mid_block_additional_residual=ref_mid,
            return_dict=False,
        )[0]
        got = unet(
            sample,
            t,
            encoder_hidden_states=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        torch.testing.assert_close(got, expected, **TOL)
        with pytest.raises(SvEngineError, match="both"):
            unet(sample, t, encoder_hidden_states=context, down_block_additional_residuals=down)


def test_controlnet_from_config_matches_diffusers():
    """Built directly from a ControlNet config (the full-size path of build_random_components), with
    the BGR hint order and pooled residuals."""
    _, RefControlNet, _ = _diffusers()
    config = {**TINY_CONTROLNET_CONFIG, "controlnet_conditioning_channel_order": "bgr", "global_pool_conditions": True}
    ref = _seeded(4, lambda: RefControlNet(**config))
    ours = _seeded(4, lambda: ControlNetModel.from_config(config))
    assert_same_state(ours, ref)
    _randomize_zero_convs(ref, seed=3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    sample, context, control = _inputs(config, 2, 8, 8)
    with torch.no_grad():
        ref_down, ref_mid = ref(sample, 5, context, control, conditioning_scale=0.7, return_dict=False)
        down, mid = ours(sample, 5, context, control, conditioning_scale=0.7, return_dict=False)
    for got, expected in zip(down, ref_down, strict=True):
        torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(mid, ref_mid, **TOL)
    assert mid.shape[-2:] == (1, 1)  # global_pool_conditions


def test_tiny_builder_reseed_path():
    """tiny.py's ControlNet path: from_unet, then from_config(controlnet.config) re-seeded."""
    unet = _seeded(0, lambda: UNet2DConditionModel(**TINY_UNET_CONFIG))
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_CONTROLNET_COND_CHANNELS)
    fresh = _seeded(5, lambda: ControlNetModel.from_config(controlnet.config))
    controlnet.load_state_dict(fresh.state_dict(), strict=True)
    assert list(controlnet.config.conditioning_embedding_out_channels) == list(TINY_CONTROLNET_COND_CHANNELS)


# --------------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "batch", "h", "w"),
    [(TINY_VAE_CONFIG, 1, 64, 64), (VARIANT_VAE_CONFIG, 2, 48, 80)],
    ids=["tiny", "variant-odd-size"],
)
def test_vae_matches_diffusers(config, batch, h, w):
    _, _, RefVAE = _diffusers()
    ref = _seeded(4, lambda: RefVAE(**config))
    ours = _seeded(4, lambda: AutoencoderKL(config))
    assert_same_state(ours, ref)
    ours.load_state_dict(ref.state_dict(), strict=True)

    image = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref_dist = ref.encode(image).latent_dist
        dist = ours.encode(image).latent_dist
        for name in ("parameters", "mean", "logvar", "std", "var"):
            torch.testing.assert_close(getattr(dist, name), getattr(ref_dist, name), **TOL)
        torch.testing.assert_close(dist.mode(), ref_dist.mode(), **TOL)
        torch.testing.assert_close(
            dist.sample(generator=torch.Generator().manual_seed(7)),
            ref_dist.sample(generator=torch.Generator().manual_seed(7)),
            **TOL,
        )
        (posterior,) = ours.encode(image, return_dict=False)
        torch.testing.assert_close(posterior.mean, ref_dist.mean, **TOL)

        latent = ref_dist.mean
        expected = ref.decode(latent).sample
        torch.testing.assert_close(ours.decode(latent).sample, expected, **TOL)
        (decoded,) = ours.decode(latent, return_dict=False)
        torch.testing.assert_close(decoded, expected, **TOL)
        torch.testing.assert_close(ours(image).sample, ref(image).sample, **TOL)


# --------------------------------------------------------------------------------------------------
# Attention seam, full-size configs, refused options, import footprint
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_attend_upcast_equals_sdpa(cross):
    torch.manual_seed(0)
    attn = Attention(32, cross_attention_dim=24 if cross else None, heads=4, dim_head=8).eval()
    x = torch.randn(2, 60, 32)
    context = torch.randn(2, 77, 24) if cross else None
    q, k, v = torch.randn(2, 60, 32), torch.randn(2, 77, 32), torch.randn(2, 77, 32)
    with torch.no_grad():
        fused, full = attn.attend(q, k, v), attn(x, context)
        attn.upcast = True
        torch.testing.assert_close(attn.attend(q, k, v), fused, rtol=0, atol=1e-5)
        torch.testing.assert_close(attn(x, context), full, rtol=0, atol=1e-5)
    assert attn.heads == 4 and attn.scale == pytest.approx(8**-0.5)


@pytest.mark.parametrize("name", ["unet", "controlnet", "vae"])
def test_full_size_configs_on_meta(name):
    RefUNet, RefControlNet, RefVAE = _diffusers()
    ref_cls, ours_cls = {
        "unet": (RefUNet, UNet2DConditionModel),
        "controlnet": (RefControlNet, ControlNetModel),
        "vae": (RefVAE, AutoencoderKL),
    }[name]
    config = load_config(name)
    with torch.device("meta"):
        ref = ref_cls.from_config(copy.deepcopy(config))
        ours = ours_cls.from_config(config)
    assert_same_state(ours, ref, values=False)
    assert ours.device.type == "meta"


@pytest.mark.parametrize(
    ("cls", "override", "key"),
    [
        (UNet2DConditionModel, {"class_embed_type": "timestep"}, "class_embed_type"),
        (UNet2DConditionModel, {"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        (UNet2DConditionModel, {"num_attention_heads": 8}, "num_attention_heads"),
        (UNet2DConditionModel, {"down_block_types": ["SimpleCrossAttnDownBlock2D"] * 3}, "down_block_types"),
        (UNet2DConditionModel, {"made_up_option": 1}, "made_up_option"),
        (ControlNetModel, {"addition_embed_type": "text"}, "addition_embed_type"),
        (ControlNetModel, {"controlnet_conditioning_channel_order": "xyz"}, "controlnet_conditioning_channel_order"),
        (AutoencoderKL, {"down_block_types": ["AttnDownEncoderBlock2D"] * 4}, "down_block_types"),
    ],
)
def test_unimplemented_options_are_refused(cls, override, key):
    base = TINY_VAE_CONFIG if cls is AutoencoderKL else TINY_UNET_CONFIG
    if cls is ControlNetModel:
        base = TINY_CONTROLNET_CONFIG
    with pytest.raises(SvEngineError, match=key):
        cls({**base, **override})


def test_imports_stay_torch_only():
    code = (
        "import sys\n"
        "import sv_engine.stablevideo.models.nets.unet, sv_engine.stablevideo.models.nets.controlnet\n"
        "import sv_engine.stablevideo.models.nets.vae\n"
        "heavy = [m for m in ('diffusers', 'transformers', 'torch._dynamo') if m in sys.modules]\n"
        "print('heavy modules:', heavy)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heavy modules: []" in result.stdout


def test_save_pretrained_round_trips_through_diffusers(tmp_path):
    """Our folder (config.json + diffusion_pytorch_model.safetensors) loads in diffusers and back in ours."""
    import json

    from safetensors.torch import load_file

    RefUNet, _, _ = _diffusers()
    ours = _seeded(1, lambda: UNet2DConditionModel(**TINY_UNET_CONFIG))
    ours.save_pretrained(tmp_path)
    ref = RefUNet.from_pretrained(tmp_path).eval()
    assert_same_state(ours, ref)
    again = UNet2DConditionModel.from_config(json.loads((tmp_path / "config.json").read_text()))
    again.load_state_dict(load_file(str(tmp_path / UNet2DConditionModel.WEIGHTS_NAME)), strict=True)
    assert_same_state(again, ours)
