"""Atlas bookkeeping (AtlasData semantics), keyframe crops and aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sv_engine.stablevideo.aggregate import median_aggregate, train_aggregation_net
from sv_engine.stablevideo.atlas import crop_image, evaluate_grid_atlas, mask_boundaries, preprocess_uv
from sv_engine.stablevideo.keyframes import default_keyframes, parse_keyframes, resize_image
from sv_engine.stablevideo.nla import atlas_net

from sv_engine.errors import SvEngineError


def test_preprocess_uv_shift_and_extent() -> None:
    uv = torch.tensor([[[[-0.5, -0.75], [-0.25, -0.375]]]])  # bg uv in [-1, 0]
    layer = preprocess_uv(uv, 100, shift=1)
    # (uv + 1)·100 = (50, 25), (75, 62.5); integer min (50, 25); extent ceil(25, 37.5) = (25, 38)
    assert (layer.min_u, layer.min_v, layer.max_u, layer.max_v) == (50, 25, 25, 38)
    torch.testing.assert_close(layer.render_grid[0, 0, 1], torch.tensor([1.0, 37.5 / 38 * 2 - 1]))


@pytest.mark.parametrize("shift", [0, 1])
def test_preprocess_uv_one_pass_equals_the_originals_two(shift: int) -> None:
    """One min/max pass over the UVs gives the original's min, then its max of the shifted UVs, to the
    bit (random fp32 UVs, so rounding would show)."""
    torch.manual_seed(shift)
    uv = torch.rand(3, 17, 23, 2) * 1.7 - shift
    pix = (uv + shift) * 1000
    min_u, min_v = (int(v) for v in pix.reshape(-1, 2).amin(dim=0).long())
    shifted = pix - torch.tensor([min_u, min_v], dtype=pix.dtype)
    max_u, max_v = (int(v) for v in shifted.reshape(-1, 2).amax(dim=0).ceil().long())
    layer = preprocess_uv(uv, 1000, shift)
    assert (layer.min_u, layer.min_v, layer.max_u, layer.max_v) == (min_u, min_v, max_u, max_v)
    assert torch.equal(layer.uv_pix, shifted)


@pytest.mark.parametrize("shift, offset", [(0, (10, 20)), (1, (-8, 90))])
def test_grid_atlas_equals_full_grid_then_crop(shift: int, offset: tuple[int, int]) -> None:
    """Evaluating only the crop equals SV's full R×R evaluation followed by torchvision crop (zero fill)."""
    torch.manual_seed(0)
    net = atlas_net().eval()
    resolution = 100
    layer = preprocess_uv(torch.zeros(1, 1, 1, 2), resolution, shift)
    layer.min_u, layer.min_v, layer.max_u, layer.max_v = offset[0], offset[1], 30, 25
    ys, xs = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    with torch.no_grad():
        full = (
            net(torch.stack([xs.reshape(-1) / resolution - shift, ys.reshape(-1) / resolution - shift], -1).float()) + 1
        ) / 2
    full = full.T.reshape(3, resolution, resolution)
    expected = crop_image(full, layer.min_v, layer.min_u, layer.max_v, layer.max_u)
    torch.testing.assert_close(evaluate_grid_atlas(net, layer, resolution, shift, "cpu"), expected)


def test_mask_boundaries_border_and_min_size() -> None:
    alpha = torch.zeros(2, 300, 400)
    alpha[0, 100:120, 200:210] = 1.0  # small object: grown to 129
    alpha[1, 0:250, 10:390] = 0.995
    b = mask_boundaries(alpha)
    # frame 0: y 70..149 (+30 border) = 80 tall -> pad 49 at the bottom; x 170..239 = 70 -> 129
    assert b[0].tolist() == [70, 170, 129, 129]
    # frame 1: clamped at 0 and at the frame size (400)
    assert b[1].tolist() == [0, 0, 279, 400]


def test_crop_image_zero_fills_outside() -> None:
    img = torch.arange(12.0).reshape(1, 3, 4)
    out = crop_image(img, -1, 2, 3, 3)
    assert out.tolist() == [[[0, 0, 0], [2, 3, 0], [6, 7, 0]]]


def test_keyframe_defaults_and_parsing() -> None:
    assert default_keyframes(70) == [20, 40, 60]  # StableVideo's UI default
    assert parse_keyframes("3, 5", 10) == [3, 5]
    with pytest.raises(SvEngineError, match="out of range"):
        parse_keyframes("3,12", 10)
    with pytest.raises(SvEngineError, match="comma-separated"):
        parse_keyframes("a,b", 10)


def test_resize_image_short_side_512_multiple_of_64() -> None:
    out = resize_image(np.zeros((150, 260, 3), np.uint8), 512)
    assert out.shape == (512, 896, 3)


def test_median_is_lower_middle() -> None:
    stack = torch.tensor([1.0, 4.0, 2.0, 3.0]).reshape(4, 1, 1, 1)
    assert float(median_aggregate(stack)) == 2.0


def test_aggregation_net_trains() -> None:
    """SV's aggregation net never trains (no_grad); ours must: the L1 to the keyframe edits falls."""
    torch.manual_seed(0)
    atlas = torch.rand(3, 24, 24)
    grids = [torch.rand(1, 10, 12, 2) * 2 - 1 for _ in range(2)]
    targets = [F.grid_sample(torch.rand(1, 3, 24, 24), g, align_corners=False)[0] for g in grids]

    def sample(a: torch.Tensor) -> list[torch.Tensor]:
        return [F.grid_sample(a[None], g, align_corners=False).clamp(0, 1)[0] for g in grids]

    with torch.no_grad():  # the pipeline calls it under no_grad, as SV does
        refined, losses = train_aggregation_net(atlas, sample, targets, iterations=60, progress=False)
    assert losses[-1] < 0.9 * losses[0]
    assert refined.shape == atlas.shape and not torch.equal(refined, atlas)
