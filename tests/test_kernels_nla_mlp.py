"""nla_mlp: the fused NLA MLP kernel against its fp32 torch reference (GPU); the weight packing and the
reference against the NLA networks themselves (CPU)."""

from __future__ import annotations

import itertools

import pytest
import torch
from sv_engine.kernels import nla_mlp
from sv_engine.stablevideo.nla import NLAModel, alpha_from_output, bg_uv, fg_uv, normalize_xyt

from sv_engine.errors import SvEngineError

gpu = pytest.mark.gpu  # skipped without a CUDA GPU (tests/conftest.py)

# Each map as (network, its output's scale·tanh + offset): fg uv, bg uv, alpha (nla.fg_uv, ...).
MAPS = {"fg": ("fg_mapping", 0.5, 0.5), "bg": ("bg_mapping", 0.5, -0.5), "alpha": ("alpha", 0.495, 0.496)}


def _layers(net) -> list[nla_mlp.Linear]:  # noqa: ANN001
    return [(layer.weight.detach(), layer.bias.detach()) for layer in net.hidden]


def test_packed_weights_sit_where_each_lane_reads_its_b_fragment():
    """mma.m16n8k16's B fragment: lane l = 4g + t holds W[n][k], W[n][k+1] and W[n][k+8], W[n][k+9]
    with n = n-tile·8 + g and k = k-block·16 + 2t; the kernel reads n-tiles 2i and 2i+1 of stage c
    as one word [k-block][i][l]."""
    weight = torch.randn(256, 32).to(torch.float16)
    # stage, k-block, n-tile pair, lane, n-tile of the pair, 4 halves
    packed = nla_mlp._fragment_order(weight, blocks=2).view(4, 2, 4, 32, 2, 4)
    for c, kb, i, lane, odd in itertools.product(range(4), range(2), range(4), (0, 5, 31), range(2)):
        g, t = divmod(lane, 4)
        n, k = c * 64 + (2 * i + odd) * 8 + g, kb * 16 + 2 * t
        want = weight[n, [k, k + 1, k + 8, k + 9]]
        assert torch.equal(packed[c, kb, i, lane, odd], want), (c, kb, i, lane, odd)


@pytest.mark.parametrize("name", list(MAPS))
def test_reference_is_the_nla_networks_over_every_pixel(name):
    """pixel_field_reference (what the kernel is held to) is StableVideo's map of that network on
    NLA's normalised pixel grid, pixel for pixel in (t, y, x) order."""
    nla = NLAModel.random(seed=1)
    net_name, scale, offset = MAPS[name]
    net = getattr(nla, net_name)
    w, h, t = 11, 7, 3
    got = nla_mlp.pixel_field_reference(_layers(net), net.positional_dim, w, h, t, scale, offset)
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    xyt = normalize_xyt(torch.stack([xx, yy, tt], -1).reshape(-1, 3).float(), w, h, t)
    with torch.no_grad():
        out = net(xyt)
    want = {"fg": fg_uv, "bg": bg_uv, "alpha": alpha_from_output}[name](out)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)  # the same fp32 math; the affine's constants round


def test_networks_the_kernel_cannot_take_are_refused_with_the_reason():
    nla = NLAModel.random(seed=0)
    assert nla_mlp.why_not_packable(_layers(nla.fg_mapping), 0) is None
    assert nla_mlp.why_not_packable(_layers(nla.alpha), 5) is None
    assert "frequencies" in nla_mlp.why_not_packable(_layers(nla.atlas), 10)  # 2-D input, 40 features
    assert "frequencies" in nla_mlp.why_not_packable(_layers(nla.alpha), 6)
    skip = _layers(nla.fg_mapping)
    skip[3] = (torch.zeros(256, 259), torch.zeros(256))  # a skip layer's input: hidden + (x, y, t)
    assert "shapes" in nla_mlp.why_not_packable(skip, 0)
    narrow = [(torch.zeros(64, 3), torch.zeros(64)), (torch.zeros(2, 64), torch.zeros(2))]
    assert "shapes" in nla_mlp.why_not_packable(narrow, 0)
    with pytest.raises(SvEngineError, match="cannot take these layers"):
        nla_mlp.pack_mlp(_layers(nla.atlas), 10)


def test_the_kernel_refuses_a_cpu_tensor():
    packed = nla_mlp.pack_mlp(_layers(NLAModel.random(seed=0).bg_mapping))
    assert not nla_mlp.fused_applies(torch.device("cpu"))
    with pytest.raises(SvEngineError, match="CUDA GPU"):
        nla_mlp.pixel_field(packed, 4, 4, 1)


@gpu
@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("size", [(37, 23, 3), (96, 64, 9)], ids=["partial-tile", "tiles-per-block"])
@pytest.mark.parametrize("m_tiles", nla_mlp.M_TILES)
def test_kernel_matches_the_fp32_reference(name, size, m_tiles):
    """37·23·3 points end in a partial tile; 96·64·9 give the H200's 132 blocks several tiles each
    (at either tile count). Tolerance: the hidden layers take fp16 inputs (2^-11 relative each) with
    fp32 accumulation, as the GEMM path does; its measured error on the fitted NLA was 1e-4 in uv,
    8e-3 in alpha."""
    nla = NLAModel.random(seed=2).to("cuda")
    net_name, scale, offset = MAPS[name]
    net = getattr(nla, net_name)
    layers = _layers(net)
    if nla_mlp.default_m_tiles(torch.device("cuda")) < m_tiles:
        pytest.skip(f"this GPU's shared memory does not hold {m_tiles} tiles a warp")
    got = nla_mlp.pixel_field(nla_mlp.pack_mlp(layers, net.positional_dim), *size, scale, offset, m_tiles=m_tiles)
    want = nla_mlp.pixel_field_reference(layers, net.positional_dim, *size, scale, offset)
    assert got.shape == want.shape and got.dtype == torch.float32
    err = (got - want).abs().max().item()
    assert err < (2e-2 if name == "alpha" else 1e-3), err
    assert err > 0, "fp16 hidden layers cannot be bit-exact: an exact match means the reference ran"
