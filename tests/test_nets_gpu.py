"""The pipeline's networks against the diffusers / transformers classes on a GPU, full size, fp16, the
same random weights (skipped on CPU): the CPU tests prove the maths equal in fp32 on tiny configs; this
proves the full-size models equal where the edit runs them, in half precision with CUDA's kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sv_engine.benchmarks.library_models import _in_library_class
from sv_engine.stablevideo.models.model_classes import model_classes
from sv_engine.stablevideo.models.nets.norms import GroupNorm
from sv_engine.stablevideo.models.tiny import load_config

pytestmark = pytest.mark.gpu  # skipped without a CUDA GPU (tests/conftest.py)

#: fp16 with fp32 accumulation, the same kernels on both sides up to op order and memory layout: the
#: outputs agree to fp16 rounding compounded over the network's depth (a wrong block gives < 0.9).
MIN_COSINE = 0.9999


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def _pair(name: str, library_class: type) -> tuple[torch.nn.Module, torch.nn.Module]:
    cls = getattr(model_classes(), name)
    torch.manual_seed(0)
    with torch.device("cuda"):
        ours = cls.from_config(load_config(name)).eval().half().requires_grad_(False)
    if name == "controlnet":  # from_config zero-inits the output convs: random ones, so the residuals count
        with torch.no_grad():
            for conv in [*ours.controlnet_down_blocks, ours.controlnet_mid_block]:
                conv.weight.normal_(0, 0.01)
    return ours, _in_library_class(ours, library_class).half()


def _fused_norm_calls(monkeypatch: pytest.MonkeyPatch, layout: str, *modules: torch.nn.Module) -> list[int]:
    """In ``layout`` "channels_last" ours run in NHWC, where their GroupNorms take the fused kernel:
    the list counts its calls."""
    from sv_engine.kernels import group_norm

    calls: list[int] = []
    if layout == "channels_last":
        for module in modules:
            module.to(memory_format=torch.channels_last)
        real = group_norm._group_norm_cuda
        monkeypatch.setattr(group_norm, "_group_norm_cuda", lambda *a: calls.append(1) or real(*a))
    return calls


@torch.no_grad()
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_unet_and_controlnet_match_diffusers_in_fp16(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.models.controlnets.controlnet import ControlNetModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    unet, ref_unet = _pair("unet", UNet2DConditionModel)
    controlnet, ref_controlnet = _pair("controlnet", ControlNetModel)
    fused = _fused_norm_calls(monkeypatch, layout, unet, controlnet)
    g = torch.Generator("cuda").manual_seed(1)
    x = torch.randn(2, 4, 64, 72, device="cuda", generator=g, dtype=torch.float16)  # non-square, as keyframes
    t = torch.tensor([801, 801], device="cuda")
    emb = torch.randn(2, 77, 768, device="cuda", generator=g, dtype=torch.float16)
    hint = torch.rand(2, 3, 512, 576, device="cuda", generator=g, dtype=torch.float16)
    outs = []
    for cn, un in ((controlnet, unet), (ref_controlnet, ref_unet)):
        down, mid = cn(x, t, encoder_hidden_states=emb, controlnet_cond=hint, conditioning_scale=0.9, return_dict=False)
        eps = un(x, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                 mid_block_additional_residual=mid, return_dict=False)[0]  # fmt: skip
        outs.append((down, mid, eps))
    (down, mid, eps), (ref_down, ref_mid, ref_eps) = outs
    assert all(_cosine(a, b) >= MIN_COSINE for a, b in zip(down, ref_down, strict=True))
    assert _cosine(mid, ref_mid) >= MIN_COSINE and _cosine(eps, ref_eps) >= MIN_COSINE, _cosine(eps, ref_eps)
    # every GroupNorm of both nets (61 in the UNet, 27 in the ControlNet) took the kernel: no input of
    # one fell back to NCHW on the way
    norms = sum(isinstance(m, GroupNorm) for m in (*unet.modules(), *controlnet.modules()))
    assert len(fused) == (norms if layout == "channels_last" else 0) and norms == 88


@torch.no_grad()
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_vae_and_text_encoder_match_the_libraries_in_fp16(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from transformers import CLIPTextModel

    vae, ref_vae = _pair("vae", AutoencoderKL)
    fused = _fused_norm_calls(monkeypatch, layout, vae)
    g = torch.Generator("cuda").manual_seed(2)
    image = torch.rand(1, 3, 256, 320, device="cuda", generator=g, dtype=torch.float16) * 2 - 1
    moments = vae.encode(image).latent_dist.parameters
    assert _cosine(moments, ref_vae.encode(image).latent_dist.parameters) >= MIN_COSINE
    latent = torch.randn(1, 4, 32, 40, device="cuda", generator=g, dtype=torch.float16)
    assert _cosine(vae.decode(latent).sample, ref_vae.decode(latent).sample) >= MIN_COSINE
    assert (len(fused) > 0) == (layout == "channels_last")

    text, ref_text = _pair("text_encoder", CLIPTextModel)
    ids = torch.randint(0, 49406, (2, 77), device="cuda", generator=g)
    ids[:, 0], ids[:, 12:] = 49406, 49407  # bos, a 11-token prompt, eos padding
    assert _cosine(text(input_ids=ids)[0], ref_text(input_ids=ids)[0]) >= MIN_COSINE
