"""Weight loaders: (a) folder layout, (b) original ControlNet 1.0 .pth, (c) MiDaS DPT-hybrid; errors.

(b) builds a real LDM-layout file from tiny diffusers models with a small diffusers→LDM inverse mapping
(after diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py, generalised to any block
count), converts it back with our loader and checks identical outputs.
(c) covers the key mapping: a tiny hybrid DPT renamed to MiDaS names (qkv fused as timm does), loaded
back through the converter, identical outputs. It does not run the original MiDaS/timm code.
"""

from __future__ import annotations

import pytest
import torch
from sv_engine.stablevideo.models import loaders
from sv_engine.stablevideo.models.tiny import (
    TINY_DPT_CONFIG,
    TINY_TEXT_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    build_tiny_components,
)

from sv_engine.errors import SvEngineError

# --------------------------------------------------------------------------------------------------
# diffusers -> LDM (inverse of the loader, test-only)
# --------------------------------------------------------------------------------------------------

RESNET = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def unet_prefixes(config, controlnet: bool) -> list[tuple[str, str]]:
    lpb, n = config["layers_per_block"], len(config["block_out_channels"])
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(n):
        for j in range(lpb):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(lpb + 1) * i + j + 1}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(lpb + 1) * i + j + 1}.1."))
        pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."))
        if controlnet:
            continue
        up_attn = "CrossAttn" in config["up_block_types"][i]
        for j in range(lpb + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(lpb + 1) * i + j}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(lpb + 1) * i + j}.1."))
        pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(lpb + 1) * i + lpb}.{2 if up_attn else 1}."))
    if controlnet:
        nb = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
        pairs += [
            ("controlnet_mid_block.", "middle_block_out.0."),
            ("controlnet_cond_embedding.conv_in.", "input_hint_block.0."),
            ("controlnet_cond_embedding.conv_out.", f"input_hint_block.{2 * (nb + 1)}."),
        ]
        pairs += [(f"controlnet_cond_embedding.blocks.{b}.", f"input_hint_block.{2 * (b + 1)}.") for b in range(nb)]
        pairs += [(f"controlnet_down_blocks.{k}.", f"zero_convs.{k}.0.") for k in range(3 * n + 1)]
    else:
        pairs += [("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
    return pairs


def rename(sd, pairs, inner=()):
    out = {}
    for key, value in sd.items():
        match = max((p for p in pairs if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
        assert match is not None, key
        rest = key[len(match[0]) :]
        for a, b in inner:
            if rest.startswith(a):
                rest = b + rest[len(a) :]
        out[match[1] + rest] = value
    return out


def unet_to_ldm(model, controlnet=False):
    pairs = unet_prefixes(model.config, controlnet)
    sd = model.state_dict()
    out = {}
    for key, value in sd.items():
        match = max((p for p in pairs if key.startswith(p[0])), key=lambda p: len(p[0]))
        rest = key[len(match[0]) :]
        if ".resnets." in match[0] or match[0].startswith("mid_block.resnets"):
            rest = next((b + rest[len(a) :] for a, b in RESNET if rest.startswith(a)), rest)
        out[match[1] + rest] = value
    return out


def vae_to_ldm(model):
    cfg = model.config
    n, lpb = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    pairs = [
        (p, p)
        for p in (
            "encoder.conv_in.",
            "encoder.conv_out.",
            "decoder.conv_in.",
            "decoder.conv_out.",
            "quant_conv.",
            "post_quant_conv.",
        )
    ]
    pairs += [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.{k}.", f"{part}.mid.block_{k + 1}.") for k in range(2)]
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    for i in range(n):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(lpb)]
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.") for j in range(lpb + 1)]
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    inner = [
        ("conv_shortcut.", "nin_shortcut."),
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ]
    out = rename(model.state_dict(), pairs, inner)
    for key, value in out.items():  # LDM's VAE attention uses 1x1 convs
        if ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return out


def tiny_ldm_checkpoint(tiny, controlnet):
    sd = {}
    sd.update({"model.diffusion_model." + k: v for k, v in unet_to_ldm(tiny.unet).items()})
    sd.update({"control_model." + k: v for k, v in unet_to_ldm(controlnet, controlnet=True).items()})
    sd.update({"first_stage_model." + k: v for k, v in vae_to_ldm(tiny.vae).items()})
    sd.update({"cond_stage_model.transformer." + k: v for k, v in tiny.text_encoder.state_dict().items()})
    return {k: v.clone() for k, v in sd.items()}


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components(seed=0)


@pytest.fixture(scope="module")
def tiny_configs(tiny):
    return {
        "unet": TINY_UNET_CONFIG,
        "vae": TINY_VAE_CONFIG,
        "text_encoder": TINY_TEXT_CONFIG,
        "controlnet": dict(tiny.controlnet_canny.config),
        "dpt_hybrid": TINY_DPT_CONFIG,
    }


def same_outputs(a, b):
    """Compare every model of two SDComponents on fixed inputs (exact equality of weights => equal outputs)."""
    g = torch.Generator().manual_seed(0)
    ids = a.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    lat, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([401, 401])
    ctrl, img = torch.rand(2, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        emb_a, emb_b = a.text_encoder(ids)[0], b.text_encoder(ids)[0]
        torch.testing.assert_close(emb_a, emb_b, rtol=0, atol=0)
        emb = emb_a.expand(2, -1, -1)
        for name in ("controlnet_canny", "controlnet_depth"):
            ca, cb = getattr(a, name), getattr(b, name)
            if ca is None:
                assert cb is None
                continue
            da, ma = ca(lat, t, encoder_hidden_states=emb, controlnet_cond=ctrl, return_dict=False)
            db, mb = cb(lat, t, encoder_hidden_states=emb, controlnet_cond=ctrl, return_dict=False)
            for x, y in zip([*da, ma], [*db, mb], strict=False):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
        ea = a.unet(
            lat, t, encoder_hidden_states=emb, down_block_additional_residuals=da, mid_block_additional_residual=ma
        ).sample
        eb = b.unet(
            lat, t, encoder_hidden_states=emb, down_block_additional_residuals=da, mid_block_additional_residual=ma
        ).sample
        torch.testing.assert_close(ea, eb, rtol=0, atol=0)
        torch.testing.assert_close(a.vae.encode(img).latent_dist.mean, b.vae.encode(img).latent_dist.mean)
        torch.testing.assert_close(a.vae.decode(lat[:1]).sample, b.vae.decode(lat[:1]).sample)
        if a.depth_model is not None and b.depth_model is not None:
            torch.testing.assert_close(
                a.depth_model(pixel_values=img).predicted_depth, b.depth_model(pixel_values=img).predicted_depth
            )


# --------------------------------------------------------------------------------------------------
# (a) folder layout
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe", [True, False])
def test_folder_round_trip(tiny, tmp_path, safe):
    loaders.save_components(tiny, tmp_path, safe_serialization=safe)
    suffix = "safetensors" if safe else "bin"
    assert list((tmp_path / "unet").glob(f"*.{suffix}")) and (tmp_path / "dpt" / "config.json").is_file()
    loaded = loaders.load_diffusers_folder(tmp_path, need=("canny", "depth", "dpt"))
    assert not loaded.is_random and loaded.depth_model is not None
    same_outputs(tiny, loaded)


def test_folder_loads_straight_into_the_edit_dtype(tiny, tmp_path):
    """fp16 files for an fp16 edit load as fp16 (on a 2-core CPU, full-size SD1.5 fp16 folders took
    7.1-11.2 s widened to fp32 and 3.8-4.0 s loaded as stored), with the stored values."""
    import copy

    half = copy.deepcopy(tiny).to(dtype=torch.float16)
    loaders.save_components(half, tmp_path)
    loaded = loaders.load_weights(tmp_path, dtype=torch.float16)
    for name in ("unet", "controlnet_canny", "vae", "text_encoder"):
        for (key, ref), (_, got) in zip(
            getattr(half, name).state_dict().items(), getattr(loaded, name).state_dict().items(), strict=False
        ):
            assert got.dtype == ref.dtype and torch.equal(got, ref), (name, key)


def test_the_depth_model_stays_float32_in_an_fp16_load(tiny, tmp_path):
    """The depth model runs in float32 beside fp16 diffusion models (DPT overflows in fp16): an fp16 load
    of float32 files keeps its stored values exactly, not rounded to fp16 and widened back."""
    loaders.save_components(tiny, tmp_path)
    loaded = loaders.load_weights(tmp_path, need=("canny", "depth", "dpt"), dtype=torch.float16)
    assert loaded.unet.dtype == torch.float16
    for key, ref in tiny.depth_model.state_dict().items():
        got = loaded.depth_model.state_dict()[key]
        assert got.dtype == ref.dtype == torch.float32 and torch.equal(got, ref), key


def test_folder_errors(tiny, tmp_path):
    with pytest.raises(SvEngineError, match="does not exist"):
        loaders.load_diffusers_folder(tmp_path / "nope")
    loaders.save_components(tiny, tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "controlnet_depth")
    with pytest.raises(SvEngineError, match="controlnet_depth"):
        loaders.load_diffusers_folder(tmp_path, need=("canny", "depth"))
    partial = loaders.load_diffusers_folder(tmp_path, need=("canny",))
    assert partial.controlnet_depth is None and partial.controlnet_canny is not None
    weights = next((tmp_path / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(SvEngineError, match="unet"):
        loaders.load_diffusers_folder(tmp_path, need=("canny",))


# --------------------------------------------------------------------------------------------------
# (b) original control_sd15_*.pth
# --------------------------------------------------------------------------------------------------


def test_control_sd15_round_trip(tiny, tiny_configs, tmp_path):
    canny, depth = tmp_path / "control_sd15_canny.pth", tmp_path / "control_sd15_depth.pth"
    torch.save(tiny_ldm_checkpoint(tiny, tiny.controlnet_canny), canny)
    torch.save({"state_dict": tiny_ldm_checkpoint(tiny, tiny.controlnet_depth)}, depth)  # Lightning wrapper too
    parts = loaders.convert_control_sd15(canny, tiny_configs)
    assert set(parts) == {"text_encoder", "unet", "vae", "controlnet"}
    loaded = loaders.load_original_checkpoints(canny, depth, configs=tiny_configs)
    assert loaded.depth_model is None and not loaded.is_random
    same_outputs(tiny, loaded)
    # offline conversion to the folder layout (fp32 to compare exactly)
    out = loaders.convert_original_to_folder(canny, depth, tmp_path / "folder", dtype=None, configs=tiny_configs)
    same_outputs(tiny, loaders.load_diffusers_folder(out))


def test_control_sd15_errors(tiny, tiny_configs, tmp_path):
    with pytest.raises(SvEngineError, match="does not exist") as err:
        loaders.convert_control_sd15(tmp_path / "control_sd15_canny.pth", tiny_configs)
    assert "huggingface.co/lllyasviel/ControlNet" in str(err.value)
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(SvEngineError, match="corrupt"):
        loaders.convert_control_sd15(bad, tiny_configs)
    good = tmp_path / "good.pth"
    sd = tiny_ldm_checkpoint(tiny, tiny.controlnet_canny)
    torch.save(sd, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SvEngineError, match="corrupt"):
        loaders.convert_control_sd15(truncated, tiny_configs)
    no_control = tmp_path / "sd_only.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("control_model.")}, no_control)
    with pytest.raises(SvEngineError, match="control_model"):
        loaders.convert_control_sd15(no_control, tiny_configs)
    with pytest.raises(SvEngineError, match="do not fit"):  # wrong architecture for the configs
        loaders.convert_control_sd15(
            good, {**tiny_configs, "vae": {**TINY_VAE_CONFIG, "latent_channels": 8}}, parts=("vae",)
        )
    with pytest.raises(SvEngineError, match="No ControlNet"):
        loaders.load_original_checkpoints(None, None)


# --------------------------------------------------------------------------------------------------
# (c) MiDaS DPT-hybrid
# --------------------------------------------------------------------------------------------------


def test_midas_key_names():
    assert loaders.midas_key("dpt.encoder.layer.3.attention.attention.key.bias") == (
        "pretrained.model.blocks.3.attn.qkv.bias",
        1,
    )
    assert loaders.midas_key("neck.fusion_stage.layers.0.residual_layer2.convolution1.weight")[0] == (
        "scratch.refinenet4.resConfUnit2.conv1.weight"
    )
    assert loaders.midas_key("neck.reassemble_stage.readout_projects.2.0.weight")[0] == (
        "pretrained.act_postprocess3.0.project.0.weight"
    )
    assert loaders.midas_key("neck.reassemble_stage.layers.3.resize.bias")[0] == "pretrained.act_postprocess4.4.bias"
    assert loaders.midas_key("dpt.embeddings.backbone.bit.encoder.stages.1.layers.0.downsample.conv.weight")[0] == (
        "pretrained.model.patch_embed.backbone.stages.1.blocks.0.downsample.conv.weight"
    )
    assert loaders.midas_key("head.head.4.bias")[0] == "scratch.output_conv.4.bias"
    assert loaders.midas_key("neck.convs.0.weight")[0] == "scratch.layer1_rn.weight"


def test_full_size_midas_names_are_complete():
    """Every tensor of the full-size hybrid DPT has a distinct MiDaS name, all in MiDaS' namespaces."""
    with torch.device("meta"):
        model = loaders.build_dpt(loaders.load_config("dpt_hybrid"))
    names = [loaders.midas_key(k) for k in model.state_dict()]
    assert len(set(names)) == len(names)
    assert all(n.startswith(("pretrained.model.", "pretrained.act_postprocess", "scratch.")) for n, _ in names)
    assert ("pretrained.model.patch_embed.backbone.stages.2.blocks.8.conv3.weight", None) in names
    assert ("pretrained.model.blocks.11.attn.qkv.weight", 2) in names


def test_midas_round_trip(tiny, tiny_configs, tmp_path):
    midas = loaders.midas_state_dict_from_model(tiny.depth_model)
    midas["pretrained.model.head.weight"] = torch.zeros(10, 32)  # timm classifier: ignored
    path = tmp_path / "dpt_hybrid-midas-501f0c75.pt"
    torch.save(midas, path)
    model = loaders.load_midas_dpt_hybrid(path, tiny_configs["dpt_hybrid"])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values=x).predicted_depth, tiny.depth_model(pixel_values=x).predicted_depth, rtol=0, atol=0
        )
    del midas["scratch.layer1_rn.weight"]
    with pytest.raises(SvEngineError, match="missing"):
        loaders.load_midas_dpt_hybrid(midas, tiny_configs["dpt_hybrid"])
    with pytest.raises(SvEngineError, match="not a MiDaS"):
        loaders.load_midas_dpt_hybrid({"foo": torch.zeros(1)}, tiny_configs["dpt_hybrid"])
    with pytest.raises(SvEngineError, match="does not exist"):
        loaders.load_midas_dpt_hybrid(tmp_path / "missing.pt")


def test_load_components_dispatch(tmp_path):
    with pytest.raises(SvEngineError, match="No model weights"):
        loaders.load_components()


def test_load_weights_detects_layouts(tiny, tiny_configs, tmp_path):
    # original files spread like ControlNet's repo: models/ + annotator/ckpts/
    (tmp_path / "orig" / "models").mkdir(parents=True)
    (tmp_path / "orig" / "annotator" / "ckpts").mkdir(parents=True)
    torch.save(
        tiny_ldm_checkpoint(tiny, tiny.controlnet_canny), tmp_path / "orig" / "models" / "control_sd15_canny.pth"
    )
    torch.save(
        tiny_ldm_checkpoint(tiny, tiny.controlnet_depth), tmp_path / "orig" / "models" / "control_sd15_depth.pth"
    )
    torch.save(
        loaders.midas_state_dict_from_model(tiny.depth_model),
        tmp_path / "orig" / "annotator" / "ckpts" / "dpt_hybrid-midas-501f0c75.pt",
    )
    loaded = loaders.load_weights(tmp_path / "orig", configs=tiny_configs)
    assert loaded.depth_model is not None
    same_outputs(tiny, loaded)
    only_canny = loaders.load_weights(tmp_path / "orig" / "models" / "control_sd15_canny.pth", configs=tiny_configs)
    assert only_canny.controlnet_depth is None and only_canny.controlnet_canny is not None
    # folder layout
    loaders.save_components(tiny, tmp_path / "folder")
    same_outputs(tiny, loaders.load_weights(tmp_path / "folder"))
    with pytest.raises(SvEngineError, match="neither"):
        loaders.load_weights(tmp_path / "folder" / "tokenizer")
    with pytest.raises(SvEngineError, match="does not exist"):
        loaders.load_weights(tmp_path / "nothing")


def test_no_init_skips_torch_init_and_always_restores_it():
    """Models built for file weights skip torch.nn.init (on meta tensors it imports torch._dynamo), and
    the process-wide patch is undone after every build, failing or concurrent ones included."""
    import threading

    originals = {n: getattr(torch.nn.init, n) for n in ("normal_", "kaiming_uniform_", "zeros_")}
    with loaders._no_init():
        weight = torch.full((3, 3), 7.0)
        torch.nn.init.normal_(weight)
        assert torch.equal(weight, torch.full((3, 3), 7.0)), "init ran"
    with pytest.raises(ValueError), loaders._no_init():
        raise ValueError("a build that fails")
    errors: list[BaseException] = []

    def build() -> None:
        try:
            for _ in range(20):
                with loaders._no_init():
                    torch.nn.Linear(4, 4, device="meta")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {n: getattr(torch.nn.init, n) for n in originals} == originals
