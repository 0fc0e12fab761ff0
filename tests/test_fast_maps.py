"""FastMaps (the GPU's NLA maps) against compute_maps, the fp32 reference."""

from __future__ import annotations

import pytest
import torch
from sv_engine.stablevideo.data import VideoConfig
from sv_engine.stablevideo.fast_maps import FastMaps
from sv_engine.stablevideo.maps import compute_maps
from sv_engine.stablevideo.nla import NLAField, NLAModel

# 7680 points in chunks of 1000: chunks straddle frames and the last one is partial.
CONFIG = VideoConfig(48, 32, 5)


def _field(device: str) -> NLAField:
    return NLAField(NLAModel.random(seed=3)).to(device).eval().requires_grad_(False)


def _errors(got: tuple[torch.Tensor, ...], ref) -> list[float]:  # noqa: ANN001
    return [(a - b).abs().max().item() for a, b in zip(got, (ref.fg_uv, ref.bg_uv, ref.alpha), strict=True)]


def test_chunked_points_are_the_reference_pixels() -> None:
    """In fp32 the fused path is the reference's math: any indexing slip (pixel order, the partial
    last chunk, the (x, y, t) normalisation) would show as a large error."""
    field = _field("cpu")
    got = FastMaps(field, dtype=torch.float32, chunk=1000)(CONFIG)
    assert all(err < 1e-5 for err in _errors(got, compute_maps(field, CONFIG, progress=False)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FastMaps' fp16 GEMMs and CUDA graph need a GPU")
def test_fp16_maps_within_the_measured_error_on_gpu() -> None:
    field = _field("cuda")
    ref = compute_maps(field, CONFIG, "cuda", progress=False)
    fg, bg, alpha = _errors(FastMaps(field, chunk=1000)(CONFIG), ref)
    # H200, fitted NLA at 70x768x432: 1e-4 uv, 8e-3 alpha; random weights are smoother
    assert fg < 1e-3 and bg < 1e-3 and alpha < 2e-2
