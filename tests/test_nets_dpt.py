"""The torch-only DPT-hybrid (``nets.dpt``) against transformers' ``DPTForDepthEstimation``: same keys,
same random init under a seed, same outputs with the same weights (square, non-square, batched), the
MiDaS mapping, refused options, and an import that pulls in no model library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from requires import import_or_skip
from sv_engine.stablevideo.models.nets.dpt import DPTForDepthEstimation
from sv_engine.stablevideo.models.tiny import TINY_DPT_CONFIG, load_config

from sv_engine.errors import SvEngineError


def dpt_forward(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The reference: transformers' hybrid DPT at any size divisible by the patch (its fixed-size check
    patched out; the position embeddings are resized anyway), through its own neck and head."""
    config = model.config
    _, _, h, w = pixel_values.shape
    embeddings = model.dpt.embeddings
    saved = embeddings.image_size
    embeddings.image_size = (h, w)
    try:
        out = model.dpt(pixel_values, output_hidden_states=True)
    finally:
        embeddings.image_size = saved
    hidden = list(out.intermediate_activations)
    hidden += [f for i, f in enumerate(out.hidden_states[1:]) if i in config.backbone_out_indices[2:]]
    return model.head(model.neck(hidden, h // config.patch_size, w // config.patch_size))


transformers = import_or_skip("transformers")

# Same maths in fp32, but the op order differs (SDPA vs transformers' attention, the skipped token
# round trip in the reassemble stage), so outputs may differ by float rounding only.
TOL = {"rtol": 1e-4, "atol": 1e-5}


def reference(config: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return transformers.DPTForDepthEstimation(transformers.DPTConfig(**config)).eval()


def ours(config: dict, seed: int = 0) -> DPTForDepthEstimation:
    torch.manual_seed(seed)
    return DPTForDepthEstimation(config).eval()


@pytest.fixture(scope="module")
def scrambled() -> torch.nn.Module:
    """A tiny reference with O(1) random weights: the init's N(0, 0.02) gives ~1e-4 depths, too small
    for the tolerances to mean anything."""
    model = reference(TINY_DPT_CONFIG)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_init_parity_under_seed() -> None:
    ref, net = reference(TINY_DPT_CONFIG, seed=3).state_dict(), ours(TINY_DPT_CONFIG, seed=3).state_dict()
    assert list(net) == list(ref)
    for key, tensor in ref.items():
        assert net[key].shape == tensor.shape, key
        assert net[key].dtype == tensor.dtype, key
        assert torch.equal(net[key], tensor), key
    # no buffers on either side (persistent or not)
    ref_buffers = [n for n, _ in reference(TINY_DPT_CONFIG).named_buffers()]
    assert [n for n, _ in ours(TINY_DPT_CONFIG).named_buffers()] == ref_buffers


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 3, 64, 96), (1, 3, 96, 64), (2, 3, 64, 96), (1, 3, 48, 80)])
def test_predict_depth_matches_dpt_forward(scrambled: torch.nn.Module, shape: tuple[int, ...]) -> None:
    net = DPTForDepthEstimation(TINY_DPT_CONFIG).eval()
    net.load_state_dict(scrambled.state_dict(), strict=True)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = dpt_forward(scrambled, x)
        got = net.predict_depth(x)
    assert expected.abs().mean() > 0.05  # a non-trivial output
    torch.testing.assert_close(got, expected, **TOL)


def test_forward_matches_reference(scrambled: torch.nn.Module) -> None:
    net = DPTForDepthEstimation(TINY_DPT_CONFIG).eval()
    net.load_state_dict(scrambled.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(net(x).predicted_depth, scrambled(pixel_values=x).predicted_depth, **TOL)
    with pytest.raises(SvEngineError):
        net(torch.zeros(1, 3, 64, 96))
    with pytest.raises(SvEngineError, match="patch size"):
        net.predict_depth(torch.zeros(1, 3, 64, 72))


def test_full_size_meta_build_matches_reference() -> None:
    config = load_config("dpt_hybrid")
    with torch.device("meta"):
        net = DPTForDepthEstimation(config)
        ref = transformers.DPTForDepthEstimation(transformers.DPTConfig(**config))
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert list(got) == list(expected)
    assert got == expected
    assert all(t.is_meta for t in net.state_dict().values())


def test_midas_mapping_round_trip(scrambled: torch.nn.Module) -> None:
    from sv_engine.stablevideo.models.loaders import convert_midas_state_dict, midas_state_dict_from_model

    midas = midas_state_dict_from_model(scrambled)
    net = DPTForDepthEstimation(TINY_DPT_CONFIG)
    net.load_state_dict(convert_midas_state_dict(midas, net), strict=True)
    for key, tensor in scrambled.state_dict().items():
        assert torch.equal(net.state_dict()[key], tensor), key


def test_real_config_metadata_is_accepted() -> None:
    """A saved transformers config (metadata, resolved BiT keys) builds the same model."""
    saved = transformers.DPTConfig(**TINY_DPT_CONFIG).to_dict()
    net = DPTForDepthEstimation(saved)
    assert net.state_dict().keys() == reference(TINY_DPT_CONFIG).state_dict().keys()
    # and our own config round-trips through our resolution
    assert DPTForDepthEstimation(net.config).config == net.config


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"add_projection": True}, "add_projection"),
        ({"use_batch_norm_in_fusion_residual": True}, "use_batch_norm_in_fusion_residual"),
        ({"is_hybrid": False}, "is_hybrid"),
        ({"readout_type": "add"}, "readout_type"),
        ({"backbone": "resnet50"}, "backbone"),
        ({"not_an_option": 1}, "not_an_option"),
        ({"backbone_config": {**TINY_DPT_CONFIG["backbone_config"], "layer_type": "preactivation"}}, "layer_type"),
        ({"backbone_config": {**TINY_DPT_CONFIG["backbone_config"], "mystery": 1}}, "backbone_config.mystery"),
    ],
)
def test_unsupported_config_is_refused(change: dict, key: str) -> None:
    with pytest.raises(SvEngineError, match=key):
        DPTForDepthEstimation({**TINY_DPT_CONFIG, **change})


def test_missing_is_hybrid_is_refused() -> None:
    config = {k: v for k, v in TINY_DPT_CONFIG.items() if k != "is_hybrid"}
    with pytest.raises(SvEngineError, match="is_hybrid"):
        DPTForDepthEstimation(config)


_IMPORT_CHECK = """
import json, sys, torch
from sv_engine.stablevideo.models.nets.dpt import DPTForDepthEstimation
from sv_engine.stablevideo.models.tiny import TINY_DPT_CONFIG
with torch.no_grad():
    depth = DPTForDepthEstimation(TINY_DPT_CONFIG).eval().predict_depth(torch.zeros(1, 3, 64, 96))
assert depth.shape == (1, 64, 96)
print(json.dumps([m for m in ("transformers", "diffusers", "torch._dynamo") if m in sys.modules]))
"""


def test_import_pulls_in_no_model_library() -> None:
    # From tests/: the repo root's sv_engine/ folder must not shadow the installed package.
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
