"""Splat an edited keyframe into atlas space (linear interpolation over the keyframe's pixel grid).

Every keyframe pixel (i, j) has an atlas position ``points_uv_pix[i, j] = (x, y)`` in atlas pixel
units and a value ``values[:, i, j]``. The pixel grid is triangulated (each 2×2 quad split along
its p00-p11 diagonal into triangles 2q = (p00, p01, p11) and 2q + 1 = (p00, p11, p10), q = i·(w-1)+j)
and the values are interpolated barycentrically at the integer atlas points (x, y) ∈ [0, R_w) ×
[0, R_h). That is ``scipy.interpolate.griddata(points, values, (x, y), method="linear")`` with NaN→0,
except that griddata triangulates by Delaunay: on a smooth, non-folding mapping the two agree up to
the choice of quad diagonal (exactly, for an affine mapping).

Rules:
* A point within 1e-9 (barycentric units) of a triangle edge is inside, so shared edges leave no gaps.
* Fold-overs (several triangles cover a point): the lowest triangle id wins, i.e. the keyframe
  pixel nearest the top-left in row-major order. Deterministic in both implementations.
* A non-finite (NaN/inf) position marks an invalid pixel: its triangles cover nothing.
* Barycentrics and interpolation run in float64 with every operation rounded separately (the CUDA
  source is built with --fmad=false), so the CUDA kernel and the torch reference agree on coverage
  exactly and on values to float32 rounding.
"""

from __future__ import annotations

import ctypes

import torch
from sv_engine.kernels import _checks
from sv_engine.kernels._nvrtc import KernelSource, launch, ptr

from sv_engine.errors import SvEngineError

SOURCE = KernelSource("splat.cu", options=("--fmad=false",))
_THREADS = 256
_NO_TRIANGLE = 2**32 - 1  # the kernel's 0xFFFFFFFF "no triangle" winner
_BARY_EPS = 1e-9  # keep equal to SV_BARY_EPS in splat.cu
# The reference tests this many (triangle, atlas point) candidates at a time to bound its memory.
_CANDIDATES_PER_CHUNK = 1 << 22


def splat_to_atlas(
    points_uv_pix: torch.Tensor,
    values: torch.Tensor,
    atlas_size: int | tuple[int, int],
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate a keyframe's values onto the atlas grid.

    Args:
        points_uv_pix: (h, w, 2) float32 atlas positions (x = u, y = v) in atlas pixels, h, w ≥ 2.
            NaN marks a pixel to leave out.
        values: (C, h, w) float32 values (e.g. the edited RGB keyframe).
        atlas_size: R for an R×R atlas, or (R_h, R_w).
        backend: ``"auto"`` (CUDA kernels for CUDA tensors, torch reference on CPU), ``"cuda"``, ``"torch"``.

    Returns:
        ``(atlas, coverage)``: atlas (C, R_h, R_w) float32 (0 where not covered) and coverage
        (R_h, R_w) bool, on the inputs' device.
    """
    device, (rh, rw) = _check_inputs(points_uv_pix, values, atlas_size)
    if _checks.resolve_backend(backend, device) == "torch":
        return splat_to_atlas_reference(points_uv_pix, values, atlas_size)
    return _splat_cuda(points_uv_pix, values, rh, rw)


def splat_to_atlas_reference(
    points_uv_pix: torch.Tensor, values: torch.Tensor, atlas_size: int | tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch implementation of :func:`splat_to_atlas` (same arguments and result), any device.

    Vectorised over (triangle, bounding-box point) candidates, in chunks of
    ``_CANDIDATES_PER_CHUNK``; its work is proportional to the total bounding-box area.
    """
    device, (rh, rw) = _check_inputs(points_uv_pix, values, atlas_size)
    h, w, _ = points_uv_pix.shape
    pts = points_uv_pix.reshape(-1, 2).double()
    tri_vertices = _triangle_vertices(h, w, device)  # (3, n_tri)
    corners = pts[tri_vertices]  # (3, n_tri, 2)
    finite = torch.isfinite(corners).all(dim=2).all(dim=0)
    corners = torch.where(finite[None, :, None], corners, 0.0)
    x0 = corners[..., 0].amin(0).ceil().clamp(0, rw).long()
    x1 = corners[..., 0].amax(0).floor().clamp(-1, rw - 1).long()
    y0 = corners[..., 1].amin(0).ceil().clamp(0, rh).long()
    y1 = corners[..., 1].amax(0).floor().clamp(-1, rh - 1).long()
    box_w = (x1 - x0 + 1).clamp(min=0)
    area = box_w * (y1 - y0 + 1).clamp(min=0) * finite

    # Raster: lowest covering triangle id per atlas point.
    winner = torch.full((rh * rw,), _NO_TRIANGLE, dtype=torch.int64, device=device)
    for tri in _chunks(area):
        n = area[tri]
        local = torch.repeat_interleave(torch.arange(len(tri), device=device), n)
        cand = tri[local]
        offset = torch.arange(len(cand), device=device) - (torch.cumsum(n, 0) - n)[local]
        x = x0[cand] + offset % box_w[cand]
        y = y0[cand] + offset // box_w[cand]
        _, inside = _barycentric(corners[:, cand], x.double(), y.double())
        winner.scatter_reduce_(0, (y * rw + x)[inside], cand[inside], reduce="amin")

    # Resolve: interpolate at every covered point with its winner's barycentrics.
    coverage = winner != _NO_TRIANGLE
    point = coverage.nonzero().squeeze(1)
    tri = winner[point]
    weights, _ = _barycentric(corners[:, tri], (point % rw).double(), (point // rw).double())
    v = values.reshape(values.shape[0], -1).double()[:, tri_vertices[:, tri]]  # (C, 3, n)
    interpolated = weights[0] * v[:, 0] + weights[1] * v[:, 1] + weights[2] * v[:, 2]
    atlas = torch.zeros((values.shape[0], rh * rw), dtype=torch.float32, device=device)
    atlas[:, point] = interpolated.float()
    return atlas.view(-1, rh, rw), coverage.view(rh, rw)


def _triangle_vertices(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(3, 2·(h-1)·(w-1)) flat vertex indices of every triangle, in triangle-id order."""
    idx = torch.arange(h * w, device=device).view(h, w)
    p00, p01 = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
    p10, p11 = idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    a = torch.stack((p00, p00), 1).reshape(-1)
    b = torch.stack((p01, p11), 1).reshape(-1)
    c = torch.stack((p11, p10), 1).reshape(-1)
    return torch.stack((a, b, c))


def _barycentric(corners: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (3, n) of points (px, py) in triangles ``corners`` (3, n, 2) and whether each is inside.

    The same float64 operations, in the same order, as ``sv_barycentric`` in splat.cu.
    """
    (ax, ay), (bx, by), (cx, cy) = (corners[k].unbind(1) for k in range(3))
    e1x, e1y, e2x, e2y = bx - ax, by - ay, cx - ax, cy - ay
    d = e1x * e2y - e2x * e1y
    qx, qy = px - ax, py - ay
    wb = (qx * e2y - e2x * qy) / d
    wc = (e1x * qy - qx * e1y) / d
    wa = 1.0 - wb - wc
    inside = (d != 0) & (wa >= -_BARY_EPS) & (wb >= -_BARY_EPS) & (wc >= -_BARY_EPS)
    return torch.stack((wa, wb, wc)), inside


def _chunks(area: torch.Tensor):
    """Yield index tensors of triangles with area > 0 whose areas sum to about one chunk each."""
    tri = area.nonzero().squeeze(1)
    ends = torch.cumsum(area[tri], 0)
    start, done = 0, 0
    while start < len(tri):
        stop = int(torch.searchsorted(ends, done + _CANDIDATES_PER_CHUNK, right=True))
        stop = max(stop, start + 1)  # one huge triangle is a chunk on its own
        yield tri[start:stop]
        done = int(ends[stop - 1])
        start = stop


def _check_inputs(points_uv_pix, values, atlas_size) -> tuple[torch.device, tuple[int, int]]:
    device = _checks.check_tensor("points_uv_pix", points_uv_pix, (torch.float32,), (None, None, 2)).device
    h, w, _ = points_uv_pix.shape
    if h < 2 or w < 2:
        raise SvEngineError(
            f"points_uv_pix has shape {tuple(points_uv_pix.shape)}; a keyframe needs h, w ≥ 2.",
            "Pass a crop of at least 2×2 pixels.",
        )
    if 2 * (h - 1) * (w - 1) >= _NO_TRIANGLE:
        raise SvEngineError(f"a {h}×{w} keyframe has too many triangles for 32-bit ids.", "Split the keyframe.")
    _checks.check_tensor("values", values, (torch.float32,), (None, h, w), device)
    if values.shape[0] == 0:
        raise SvEngineError("values has 0 channels.", "Pass values of shape (C, h, w) with C ≥ 1.")
    size = (atlas_size, atlas_size) if isinstance(atlas_size, int) else tuple(atlas_size)
    if len(size) != 2 or not all(isinstance(s, int) and 0 < s < 2**15 for s in size):
        raise SvEngineError(
            f"atlas_size={atlas_size!r} is not valid.", "Pass an int R or (R_h, R_w), each in [1, 32767]."
        )
    return device, size


def _splat_cuda(
    points_uv_pix: torch.Tensor, values: torch.Tensor, rh: int, rw: int
) -> tuple[torch.Tensor, torch.Tensor]:
    device = points_uv_pix.device
    h, w, _ = points_uv_pix.shape
    channels = values.shape[0]
    points_uv_pix, values = _checks.aligned(points_uv_pix), _checks.aligned(values)
    winner = torch.full((rh * rw,), -1, dtype=torch.int32, device=device)  # -1 == 0xFFFFFFFF
    atlas = torch.empty((channels, rh, rw), dtype=torch.float32, device=device)
    coverage = torch.empty((rh, rw), dtype=torch.bool, device=device)
    n_tri = 2 * (h - 1) * (w - 1)
    raster_args = [
        ptr(points_uv_pix),
        ctypes.c_int(h),
        ctypes.c_int(w),
        ctypes.c_int(rh),
        ctypes.c_int(rw),
        ptr(winner),
    ]
    launch(SOURCE.function(device, "splat_raster"), (_blocks(n_tri), 1, 1), (_THREADS, 1, 1), raster_args, device)
    resolve_args = [
        ptr(points_uv_pix),
        ptr(values),
        ctypes.c_int(channels),
        ctypes.c_int(h),
        ctypes.c_int(w),
        ctypes.c_int(rh),
        ctypes.c_int(rw),
        ptr(winner),
        ptr(atlas),
        ptr(coverage),
    ]
    launch(SOURCE.function(device, "splat_resolve"), (_blocks(rh * rw), 1, 1), (_THREADS, 1, 1), resolve_args, device)
    return atlas, coverage


def _blocks(n: int) -> int:
    return (n + _THREADS - 1) // _THREADS
