"""add_channel_bias_ and nets.conv.Conv2d: the vectorised bias add gives ATen's bits (GPU); CPU falls back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sv_engine.kernels.bias import add_channel_bias_, fused_applies
from sv_engine.stablevideo.models.nets.conv import Conv2d

from sv_engine.errors import SvEngineError

gpu = pytest.mark.gpu  # skipped without a CUDA GPU (tests/conftest.py)


def test_cpu_is_the_broadcast_add():
    y = torch.randn(2, 16, 3, 5)
    bias = torch.randn(16)
    assert not fused_applies(y, bias)
    assert torch.equal(add_channel_bias_(y.clone(), bias), y + bias.view(1, -1, 1, 1))
    with pytest.raises(SvEngineError, match="channel bias kernel"):
        add_channel_bias_(y, bias, backend="cuda")


def test_conv2d_is_nn_conv2d_on_the_cpu():
    torch.manual_seed(0)
    ours = Conv2d(8, 16, 3, padding=1)
    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 6, 7)
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours(x), theirs(x))


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("c_in", "c_out", "h", "w"), [(320, 320, 64, 112), (4, 320, 9, 7), (1280, 640, 8, 14)])
def test_conv_bias_is_atens_bits(dtype, c_in, c_out, h, w):
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, c_in, h, w, generator=g, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    conv = Conv2d(c_in, c_out, 3, padding=1).to("cuda", dtype).to(memory_format=torch.channels_last)
    want = F.conv2d(x, conv.weight, conv.bias, padding=1)  # ATen: cuDNN, then its broadcast add
    y = F.conv2d(x, conv.weight, None, padding=1)
    assert fused_applies(y, conv.bias)
    assert torch.equal(add_channel_bias_(y, conv.bias), want)
    assert torch.equal(conv(x), want)


@gpu
def test_nchw_output_takes_the_torch_add():
    y = torch.randn(2, 16, 4, 4, device="cuda", dtype=torch.float16)
    bias = torch.randn(16, device="cuda", dtype=torch.float16)
    assert not fused_applies(y, bias)
    assert torch.equal(add_channel_bias_(y.clone(), bias), y + bias.view(1, -1, 1, 1))
