"""group_norm: the fused NHWC kernel against float64 GroupNorm (GPU), and where it applies (CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sv_engine.kernels.group_norm import _launch_shape, fused_applies, group_norm

from sv_engine.errors import SvEngineError

gpu = pytest.mark.gpu  # skipped without a CUDA GPU (tests/conftest.py)

#: (C, groups) of SD 1.5's UNet/ControlNet (320..2560 channels, 10..80 per group) and VAE (128..512).
SD_CHANNELS = [(320, 32), (640, 32), (960, 32), (1280, 32), (1920, 32), (2560, 32), (128, 32), (256, 32), (512, 32)]


def _reference(x: torch.Tensor, groups: int, weight, bias, eps: float, silu: bool) -> torch.Tensor:  # noqa: ANN001
    """GroupNorm (+ SiLU) in float64 of the same (rounded) inputs."""
    out = F.group_norm(x.double(), groups, weight.double(), bias.double(), eps)
    return F.silu(out) if silu else out


def _inputs(n, c, h, w, dtype, device, offset=0.0, seed=0):  # noqa: ANN001, ANN202
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, device=device) * 2 + offset
    weight = 1 + 0.5 * torch.randn(c, generator=g, device=device)
    bias = 0.5 * torch.randn(c, generator=g, device=device)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    return x, weight.to(dtype), bias.to(dtype)


@pytest.mark.parametrize(("channels", "groups"), SD_CHANNELS)
@pytest.mark.parametrize("pixels", [1, 7, 112, 7168, 65536])
def test_launch_shape_covers_every_channel_and_pixel(channels, groups, pixels):
    per_block, lanes, tiles, per_tile = _launch_shape(channels, groups, pixels, 2)
    pairs, pairs_per_group = channels // 2, channels // groups // 2
    assert pairs % per_block == 0 and per_block % pairs_per_group == 0  # whole groups per block
    assert per_block * lanes <= 256
    assert tiles * per_tile >= pixels > (tiles - 1) * per_tile  # every pixel in exactly one tile


def test_cpu_input_runs_torch_exactly():
    x, w, b = _inputs(2, 64, 5, 6, torch.float32, "cpu")
    assert not fused_applies(x, 32, w, b)
    want = F.silu(F.group_norm(x, 32, w, b, 1e-6))
    assert torch.equal(group_norm(x, 32, w, b, 1e-6, silu=True), want)
    assert torch.equal(group_norm(x, 32, w, b, 1e-6), F.group_norm(x, 32, w, b, 1e-6))


def test_cuda_backend_refuses_an_input_it_cannot_take():
    x, w, b = _inputs(1, 64, 4, 4, torch.float32, "cpu")
    with pytest.raises(SvEngineError, match="fused group norm"):
        group_norm(x, 32, w, b, 1e-6, backend="cuda")


#: SD's shapes (keyframe latents 64x112; odd pixel counts) and one with 4 channels per group.
KERNEL_SHAPES = [(320, 32, 64, 112), (960, 32, 32, 56), (2560, 32, 8, 14), (128, 32, 128, 160), (512, 32, 9, 7),
                 (64, 8, 3, 5)]  # fmt: skip


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("channels", "groups", "h", "w"), KERNEL_SHAPES)
@pytest.mark.parametrize("silu", [False, True])
def test_kernel_matches_float64(dtype, channels, groups, h, w, silu):
    x, weight, bias = _inputs(2, channels, h, w, dtype, "cuda")
    assert fused_applies(x, groups, weight, bias)
    out = group_norm(x, groups, weight, bias, 1e-6, silu=silu)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    want = _reference(x, groups, weight, bias, 1e-6, silu)
    # One rounding of the output to fp16/bf16 (half an ulp: 2^-11 / 2^-8 relative) plus float32
    # statistics (~1e-6 relative); torch's own fp16 GroupNorm is held to the same bar below.
    tol = 2**-10 if dtype == torch.float16 else 2**-7
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    torch_out = F.group_norm(x, groups, weight, bias, 1e-6)
    torch_out = F.silu(torch_out) if silu else torch_out
    assert (out.double() - want).abs().max() <= 1.01 * (torch_out.double() - want).abs().max() + tol


@gpu
def test_statistics_hold_far_from_zero():
    """A mean 50 standard deviations from zero: a plain sum of squares in float32 loses the variance."""
    x, weight, bias = _inputs(2, 320, 32, 48, torch.float16, "cuda", offset=100.0)
    out = group_norm(x, 32, weight, bias, 1e-6)
    torch.testing.assert_close(out.double(), _reference(x, 32, weight, bias, 1e-6, False), rtol=2e-3, atol=2e-3)


@gpu
def test_same_bits_every_run_and_in_a_cuda_graph():
    x, weight, bias = _inputs(2, 640, 32, 56, torch.float16, "cuda")
    first = group_norm(x, 32, weight, bias, 1e-5, silu=True)
    assert torch.equal(group_norm(x, 32, weight, bias, 1e-5, silu=True), first)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        group_norm(x, 32, weight, bias, 1e-5, silu=True)  # loads the module outside the capture
        with torch.cuda.graph(graph, stream=stream):
            captured = group_norm(x, 32, weight, bias, 1e-5, silu=True)
    torch.cuda.current_stream().wait_stream(stream)
    x.copy_(x.flip(0))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, group_norm(x, 32, weight, bias, 1e-5, silu=True))
    assert torch.equal(captured.flip(0), first)


@gpu
def test_inputs_it_does_not_take_run_torch():
    x, weight, bias = _inputs(2, 320, 16, 16, torch.float16, "cuda")
    nchw = x.contiguous()
    assert not fused_applies(nchw, 32, weight, bias)
    assert torch.equal(group_norm(nchw, 32, weight, bias, 1e-6), F.group_norm(nchw, 32, weight, bias, 1e-6))
    odd = torch.randn(2, 36, 8, 8, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    assert not fused_applies(odd, 4, torch.ones(36, device="cuda", dtype=torch.float16), None)
    with torch.autocast("cuda", dtype=torch.float16):
        assert not fused_applies(x, 32, weight, bias)


def test_kernel_backends_reach_every_network_and_are_restored():
    """Demanding the kernels on a CPU model fails inside the block (the switch reaches its modules) and
    the torch path runs again after it."""
    from sv_engine.stablevideo.models.nets.fused import kernel_backends
    from sv_engine.stablevideo.models.tiny import build_tiny_components

    vae = build_tiny_components(0).vae.eval()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = vae.encode(image).latent_dist.mean
        with kernel_backends("cuda", "cuda"), pytest.raises(SvEngineError, match="fused group norm"):
            vae.encode(image)
        assert torch.equal(vae.encode(image).latent_dist.mean, before)
    with pytest.raises(SvEngineError, match="geglu"):
        with kernel_backends(geglu="fast"):
            pass
