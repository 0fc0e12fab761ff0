"""LDM DDIM vs diffusers' DDIMScheduler; ControlledDenoiser; depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from sv_engine.stablevideo.models.components import DDIM_SCHEDULER_CONFIG
from sv_engine.stablevideo.models.ddim import DDIMSampler
from sv_engine.stablevideo.models.depth import dpt_forward, estimate_depth
from sv_engine.stablevideo.models.diffusion import ControlledDenoiser, img2img, txt2img
from sv_engine.stablevideo.models.tiny import build_tiny_components

from sv_engine.errors import SvEngineError


def random_eps_fn(seed: int):
    """A deterministic, non-trivial eps(x, t): a fixed random linear map of x plus a t-dependent term."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.3
    b = torch.randn(4, 1, 1, generator=g, dtype=torch.float64)

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", w, x) + b * torch.cos(torch.tensor(t / 100.0, dtype=x.dtype))

    return eps


def test_schedule_matches_reference_contract():
    s = DDIMSampler()
    s.make_schedule(20)
    assert s.timesteps.tolist() == list(range(1, 1000, 50))
    assert s.alphas_prev[0] == pytest.approx(float(s.alphas_cumprod[0]))
    assert s.alphas[16] == pytest.approx(float(s.alphas_cumprod[801]))
    assert s.t_enc_for_strength(0.8, 20) == 16


@pytest.mark.parametrize("steps,seed", [(20, 0), (50, 1), (10, 2)])
def test_txt2img_loop_matches_diffusers(steps, seed):
    eps_fn = random_eps_fn(seed)
    x_T = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ours = DDIMSampler().sample(eps_fn, x_T.clone(), steps)

    sched = DDIMScheduler.from_config(DDIM_SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == list(reversed(DDIMSampler().timesteps_for(steps)))
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(eps_fn(x, int(t)), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x.to(ours.dtype), rtol=1e-4, atol=1e-4)


def test_img2img_quirk_one_below():
    s = DDIMSampler()
    seen: list[int] = []

    def eps(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    s.make_schedule(20)
    x0 = torch.ones(1, 4, 2, 2)
    noise = torch.randn(1, 4, 2, 2)
    z = s.stochastic_encode(x0, 16, noise)
    a = float(s.alphas_cumprod[801])
    torch.testing.assert_close(z, a**0.5 * x0 + (1 - a) ** 0.5 * noise)
    s.decode(z, 16, eps)
    assert seen == list(range(751, 0, -50))  # 751, 701, ..., 1: one below the noise level (801)
    with pytest.raises(SvEngineError):
        s.stochastic_encode(x0, 20, noise)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components(seed=0)


def test_denoiser_eps_shape_and_control_scale(tiny):
    den = ControlledDenoiser(tiny, "canny")
    cond, uncond = den.encode_text("a swan, best quality"), den.encode_text("lowres")
    assert cond.shape == (1, 77, 32)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    control = torch.rand(1, 3, 64, 64, generator=g)
    e1 = den.eps(latents, 501, cond, uncond, control, control_scale=1.0, cfg=9.0)
    e0 = den.eps(latents, 501, cond, uncond, control, control_scale=0.0, cfg=9.0)
    assert e1.shape == latents.shape
    assert (e1 - e0).abs().max() > 1e-3
    # control_scale 0 == the plain UNet with CFG
    emb = torch.cat([uncond, cond])
    plain = tiny.unet(torch.cat([latents] * 2), torch.tensor([501, 501]), encoder_hidden_states=emb).sample
    u, c = plain.chunk(2)
    torch.testing.assert_close(e0, u + 9.0 * (c - u), rtol=1e-4, atol=1e-5)
    with pytest.raises(SvEngineError):
        den.eps(latents, 501, cond, uncond, torch.rand(1, 3, 32, 32))


def test_denoiser_swappable_callable(tiny):
    calls = []

    def fake(latent_2b, t_2b, emb_2b, control_2b, scale):
        calls.append((latent_2b.shape, t_2b.tolist(), emb_2b.shape, control_2b.shape, scale))
        return torch.ones_like(latent_2b)

    den = ControlledDenoiser(tiny, "depth", unet_controlnet=fake)
    emb = den.encode_text("x")
    out = den.eps(torch.zeros(1, 4, 8, 8), 51, emb, emb, torch.zeros(1, 3, 64, 64), 0.5, 9.0)
    assert torch.equal(out, torch.ones(1, 4, 8, 8))
    assert calls == [((2, 4, 8, 8), [51, 51], (2, 77, 32), (2, 3, 64, 64), 0.5)]


def test_prompt_cache_encodes_each_prompt_once_within_its_block(tiny):
    calls = []
    den = ControlledDenoiser(tiny, "canny")
    encode = den.text_encode

    def counting(ids):  # noqa: ANN001, ANN202
        calls.append(ids.shape)
        return encode(ids)

    den.text_encode = counting
    plain = den.encode_text("a swan")
    with den.prompt_cache():
        first, again, other = den.encode_text("a swan"), den.encode_text("a swan"), den.encode_text("lowres")
    assert len(calls) == 3  # outside, "a swan" inside once, "lowres"
    assert again is first and torch.equal(first, plain) and not torch.equal(other, plain)
    den.encode_text("a swan")
    assert len(calls) == 4  # the block's embeddings are forgotten


def test_txt2img_img2img_helpers(tiny):
    den = ControlledDenoiser(tiny, "canny")
    control = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    a = txt2img(den, "a cat", "lowres", control, steps=2, seed=3)
    b = txt2img(den, "a cat", "lowres", control, steps=2, seed=3)
    assert a.shape == (1, 64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    c = img2img(den, a[0], "a cat", "lowres", control, strength=0.5, steps=4, seed=3)
    assert c.shape == (1, 64, 64, 3) and c.dtype == np.uint8


def test_vae_encode_sampled_and_scaled(tiny):
    den = ControlledDenoiser(tiny)
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    mean = den.encode_image(img, sample=False)
    torch.testing.assert_close(mean, tiny.vae.encode(img).latent_dist.mean * 0.18215)
    s1 = den.encode_image(img, torch.Generator().manual_seed(1))
    s2 = den.encode_image(img, torch.Generator().manual_seed(1))
    assert torch.equal(s1, s2) and not torch.equal(s1, mean)
    dec = den.decode_latents(mean)
    torch.testing.assert_close(dec, tiny.vae.decode(mean / 0.18215).sample)


def test_estimate_depth(tiny):
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dpt_forward(tiny.depth_model, x), tiny.depth_model(pixel_values=x).predicted_depth)
    img = (np.random.default_rng(0).random((70, 100, 3)) * 255).astype(np.uint8)
    depth = estimate_depth(tiny.depth_model, img, detect_resolution=64)  # non-square: 64 x 64*100/70 -> 64 x 64
    assert depth.dtype == np.uint8 and depth.ndim == 2 and depth.min() == 0 and depth.max() == 255
    wide = estimate_depth(tiny.depth_model, np.zeros((64, 128, 3), np.uint8), detect_resolution=None)
    assert wide.shape == (64, 128)
    with pytest.raises(SvEngineError):
        estimate_depth(tiny.depth_model, np.zeros((64, 64), np.uint8))


def test_prepare_hands_the_engine_the_inputs_a_step_at_that_size_gives_it(tiny):
    """The shapes and dtypes a CUDA-graph engine captures ahead are those of the real CFG steps."""
    seen: dict[str, list] = {"prepare": [], "call": []}

    def signature(*tensors: torch.Tensor) -> tuple:
        return tuple((tuple(x.shape), x.dtype, x.device) for x in tensors)

    def fake(latent_2b, t_2b, emb_2b, control_2b, scale):
        seen["call"].append(signature(latent_2b, t_2b, emb_2b, control_2b))
        return torch.zeros_like(latent_2b)

    fake.prepare = lambda *args: seen["prepare"].append(signature(*args[:4]))
    den = ControlledDenoiser(tiny, "canny", unet_controlnet=fake)
    den.prepare([(64, 96)])
    emb = den.encode_text("x")
    den.eps(torch.zeros(1, 4, 8, 12), 51, emb, emb, torch.zeros(1, 3, 64, 96), 1.0, 9.0)
    assert seen["prepare"] == seen["call"] and len(seen["call"]) == 1
    ControlledDenoiser(tiny, "canny").prepare([(64, 96)])  # the torch modules: nothing to prepare
