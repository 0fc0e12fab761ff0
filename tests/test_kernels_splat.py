"""splat_to_atlas: torch reference vs scipy griddata (CPU), CUDA kernels vs reference (GPU)."""

import numpy as np
import pytest
import torch
from scipy.interpolate import griddata
from sv_engine.kernels import splat_to_atlas, splat_to_atlas_reference

from sv_engine.errors import SvEngineError


def grid_mapping(h, w, curvature=0.0, offset=(6.0, 4.0)):
    """Atlas positions of an h×w keyframe: an affine map whose p00-p11 quad diagonal is the shorter
    one (so Delaunay picks the same triangles), plus an optional smooth quadratic bend."""
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    x = offset[0] + 1.7 * j - 0.5 * i + curvature * j**2
    y = offset[1] + 0.2 * j + 1.9 * i + curvature * i * j
    return torch.stack((x, y), -1).float()


def griddata_atlas(points, values, size):
    ys, xs = np.mgrid[0:size, 0:size]
    out = griddata(
        points.reshape(-1, 2).numpy(), values.reshape(values.shape[0], -1).T.numpy(), (xs, ys), method="linear"
    )
    covered = ~np.isnan(out[..., 0])
    return np.nan_to_num(out).transpose(2, 0, 1), covered


def interior(covered, margin=2):
    """Covered points whose (2·margin+1)² neighbourhood is covered too (away from the hull)."""
    t = torch.from_numpy(covered).float()[None, None]
    eroded = -torch.nn.functional.max_pool2d(-t, 2 * margin + 1, stride=1, padding=margin)
    return eroded[0, 0].bool().numpy()


def test_affine_random_values_match_griddata():
    gen = torch.Generator().manual_seed(torch.seed())
    points = grid_mapping(30, 40)
    values = torch.randn(3, 30, 40, generator=gen)
    atlas, coverage = splat_to_atlas(points, values, 96)
    want, want_cov = griddata_atlas(points, values, 96)
    inner = interior(want_cov)
    # Same triangles, both exact linear interpolation: only float rounding differs.
    np.testing.assert_allclose(atlas.numpy()[:, inner], want[:, inner], rtol=0, atol=1e-5)
    assert np.array_equal(coverage.numpy()[inner], want_cov[inner])
    # The hull of an affine grid is its image: coverage agrees except within rounding of the edges.
    assert (coverage.numpy() != want_cov).sum() <= 0.01 * want_cov.sum()


def test_bent_mapping_smooth_values_match_griddata():
    # A mildly non-linear map: Delaunay may pick the other quad diagonal in places; for a smooth
    # field the two linear interpolants differ by O(curvature · quad size²), here < 2e-3 of the range.
    points = grid_mapping(40, 50, curvature=0.004)
    x, y = points[..., 0].double(), points[..., 1].double()
    values = torch.stack((torch.sin(x / 20), torch.cos(y / 25), x * y / 5000)).float()
    atlas, coverage = splat_to_atlas(points, values, 128)
    want, want_cov = griddata_atlas(points, values, 128)
    inner = interior(want_cov) & coverage.numpy()
    assert inner.sum() > 0.8 * want_cov.sum()
    np.testing.assert_allclose(atlas.numpy()[:, inner], want[:, inner], rtol=0, atol=2e-3)
    assert not (atlas.numpy()[:, ~coverage.numpy()]).any()


def test_foldover_lowest_triangle_wins_and_nan_pixels_are_skipped():
    points = torch.tensor([[[0.0, 0.0], [4.0, 0.0]], [[0.0, 4.0], [4.0, 4.0]]])
    values = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    # A second row folded back over the first quad, carrying other values.
    points = torch.cat((points, points[:1]), 0)
    values = torch.cat((values, torch.full((1, 1, 2), 5.0)), 1)
    atlas, coverage = splat_to_atlas(points, values, 6)
    assert coverage[:5, :5].all() and not coverage[5].any()
    assert (atlas[0, :5, :5] == 1).all()  # triangles of quad 0 have the lowest ids
    # NaN at p01 of a single quad removes triangle 0 = (p00, p01, p11): the lower-left half remains.
    quad, ones = points[:2].clone(), values[:, :2]
    quad[0, 1] = float("nan")
    _, coverage = splat_to_atlas(quad, ones, 6)
    ys, xs = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(coverage, (xs <= ys) & (ys <= 4))


def test_large_crop_is_fast_enough_on_cpu():
    # The pipeline's CPU path: a 432×768 keyframe into a 2000² atlas (StableVideo's griddata: ~20 s).
    points = grid_mapping(432, 768, offset=(40.0, 30.0)) * torch.tensor([1.3, 1.0])
    values = torch.rand(3, 432, 768)
    atlas, coverage = splat_to_atlas(points, values, 2000)
    assert atlas.shape == (3, 2000, 2000) and coverage.sum() > 1_000_000


def test_bad_inputs():
    points, values = grid_mapping(5, 6), torch.rand(3, 5, 6)
    with pytest.raises(SvEngineError, match="dtype"):
        splat_to_atlas(points.double(), values, 16)
    with pytest.raises(SvEngineError, match="shape"):
        splat_to_atlas(points, values[:, :4].contiguous(), 16)
    with pytest.raises(SvEngineError, match="h, w ≥ 2"):
        splat_to_atlas(points[:1].contiguous(), values[:, :1].contiguous(), 16)
    with pytest.raises(SvEngineError, match="contiguous"):
        splat_to_atlas(points.transpose(0, 1), values.transpose(1, 2), 16)
    with pytest.raises(SvEngineError, match="atlas_size"):
        splat_to_atlas(points, values, 0)
    with pytest.raises(SvEngineError, match="needs CUDA tensors"):
        splat_to_atlas(points, values, 16, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["affine", "bent", "random"])
def test_cuda_matches_reference_and_is_deterministic(case):
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    h, w, size = 120, 200, 600
    if case == "random":  # overlapping, folded triangles with NaN holes: stresses the winner rule
        points = torch.rand(h, w, 2, generator=gen) * size
        points[torch.rand(h, w, generator=gen) < 0.01] = float("nan")
    else:
        points = grid_mapping(h, w, curvature=0.003 if case == "bent" else 0.0) * 1.4
    values = torch.randn(4, h, w, generator=gen)
    points, values = points.cuda(), values.cuda()
    want, want_cov = splat_to_atlas_reference(points, values, size)
    torch.empty((4, size, size), device="cuda").fill_(float("nan"))  # poison cached blocks
    first, first_cov = splat_to_atlas(points, values, size, backend="cuda")
    second, second_cov = splat_to_atlas(points, values, size, backend="cuda")
    assert torch.equal(first_cov, want_cov), f"seed {seed}"
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-4, msg=f"seed {seed}")
    assert torch.equal(first, second) and torch.equal(first_cov, second_cov), f"seed {seed}"
