"""warp_atlas: torch reference vs float64 grid_sample (CPU), CUDA kernel vs reference (GPU)."""

import pytest
import torch
import torch.nn.functional as F
from sv_engine.kernels import pad_grids, warp_atlas, warp_atlas_reference

from sv_engine.errors import SvEngineError


def make_inputs(gen, k=3, h=19, w=26, atlas=(50, 70), channels=4, dtype=torch.float32, device="cpu"):
    atlas_t = torch.randn(*atlas, channels, generator=gen).to(dtype)
    grids = torch.rand(k, h, w, 2, generator=gen) * 2.6 - 1.3
    grids[0, 0, 0] = torch.tensor([1.0, -1.0])  # bounds are valid
    return atlas_t.to(device), grids.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("channels", [3, 4])
def test_reference_matches_float64_grid_sample(dtype, channels):
    atlas, grids = make_inputs(torch.Generator().manual_seed(torch.seed()), dtype=dtype, channels=channels)
    crops, valid = warp_atlas(atlas, grids)
    image = atlas[..., :3].permute(2, 0, 1)[None].double().expand(grids.shape[0], -1, -1, -1)
    want = F.grid_sample(image, grids.double(), padding_mode="zeros", align_corners=False)
    assert crops.shape == (3, 3, 19, 26) and crops.dtype == torch.float32
    # The float32 texel coordinate ((x + 1) * W - 1) / 2 is off by up to ~1 ulp of W (~1e-5 texel
    # here), which the bilinear weights multiply by the texel-to-texel step (up to ~8 for randn
    # texels): ~1e-4 absolute; float64 grid_sample has no such error.
    atol = 8 * torch.finfo(torch.float32).eps * max(atlas.shape[:2]) * 2 * atlas.float().abs().max().item()
    torch.testing.assert_close(crops.double(), want, rtol=1e-5, atol=atol)
    assert torch.equal(valid, (grids[..., 0].abs() <= 1) & (grids[..., 1].abs() <= 1))
    assert valid[0, 0, 0]


def test_pad_grids_marks_padding_invalid():
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(4, 5, 2, generator=gen) * 2 - 1
    b = torch.rand(6, 3, 2, generator=gen) * 2 - 1
    atlas = torch.rand(10, 10, 4, generator=gen)
    crops, valid = warp_atlas(atlas, pad_grids([a, b]))
    assert crops.shape == (2, 3, 6, 5)
    assert valid[0, :4, :5].all() and not valid[0, 4:].any() and not valid[1, :, 3:].any()
    assert (crops[0, :, 4:] == 0).all()
    torch.testing.assert_close(crops[1, :, :6, :3], warp_atlas(atlas, b[None])[0][0])


def test_bad_inputs():
    atlas, grids = make_inputs(torch.Generator().manual_seed(0))
    with pytest.raises(SvEngineError, match="dtype"):
        warp_atlas(atlas.double(), grids)
    with pytest.raises(SvEngineError, match="dtype"):
        warp_atlas(atlas, grids.double())
    with pytest.raises(SvEngineError, match="shape"):
        warp_atlas(atlas, grids[..., 0].contiguous())
    with pytest.raises(SvEngineError, match="channels-last"):
        warp_atlas(atlas.permute(2, 0, 1).contiguous(), grids)
    with pytest.raises(SvEngineError, match="contiguous"):
        warp_atlas(atlas, grids.transpose(1, 2))
    with pytest.raises(SvEngineError, match="needs CUDA tensors"):
        warp_atlas(atlas, grids, backend="cuda")
    with pytest.raises(SvEngineError, match="no grids"):
        pad_grids([])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("size", [(3, 64, 96), (2, 37, 53)])
def test_cuda_matches_reference(dtype, size):
    seed = torch.seed()
    atlas, grids = make_inputs(torch.Generator().manual_seed(seed), *size, atlas=(513, 700), dtype=dtype, device="cuda")
    want_crops, want_valid = warp_atlas_reference(atlas, grids)
    k, h, w = size
    torch.empty((k, 3, h, w), device="cuda").fill_(float("nan"))  # poison the allocator's cached block
    crops, valid = warp_atlas(atlas, grids, backend="cuda")
    # Same float32 formula as ATen's grid_sample kernel; 1e-5 relative to the atlas's magnitude.
    atol = 1e-5 * atlas.float().abs().max().item()
    torch.testing.assert_close(crops, want_crops, rtol=1e-5, atol=atol, msg=f"seed {seed}")
    assert torch.equal(valid, want_valid), f"seed {seed}"
