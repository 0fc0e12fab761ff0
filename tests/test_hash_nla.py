"""The hash-grid NLA (stablevideo/hash_nla.py): the grid encoding against a per-point reference written
straight from Instant-NGP's definition, the layout base against the fit's warm-start targets, checkpoint
round trips through the data-folder loader, and the distillation into the NLA MLPs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sv_engine.stablevideo import data as sv_data
from sv_engine.stablevideo.fit import datafolder
from sv_engine.stablevideo.fit.distill import distill_step
from sv_engine.stablevideo.fit.losses import FitTensors, Layout
from sv_engine.stablevideo.fit.trainer import InitLayout, make_targets
from sv_engine.stablevideo.hash_nla import PRIMES, GridEncoding, HashNLAConfig, HashNLAModel, level_resolutions
from sv_engine.stablevideo.nla import NLAField, NLAModel

torch.set_num_threads(2)


def reference_encoding(enc: GridEncoding, point: list[float]) -> list[float]:
    """One point, plain Python: per level, the d-linear blend of the 2^d vertex features of its cell,
    each vertex looked up densely (row-major, x fastest) when the level fits the table, else hashed."""
    cfg = enc.config
    table = enc.table.detach().double().tolist()
    cap = 2 ** cfg["log2_table"]
    out, offset = [], 0
    for res in level_resolutions(cfg["coarse"], cfg["fine"], cfg["levels"]):
        vertices = math.prod(r + 1 for r in res)
        size = min(vertices, cap)
        pos = [min(max((p + 1) / 2, 0.0), 1.0) * r for p, r in zip(point, res, strict=True)]
        cell = [min(math.floor(q), r - 1) for q, r in zip(pos, res, strict=True)]
        feat = [0.0] * cfg["features"]
        for corner in range(2 ** len(res)):
            v = [c + ((corner >> d) & 1) for d, c in enumerate(cell)]
            w = math.prod(
                q - c if (corner >> d) & 1 else 1 - (q - c) for d, (q, c) in enumerate(zip(pos, cell, strict=True))
            )
            if vertices > cap:
                h = 0
                for d, coord in enumerate(v):
                    h ^= coord * PRIMES[d]
                index = h % cap
            else:
                index, stride = 0, 1
                for d, coord in enumerate(v):
                    index += coord * stride
                    stride *= res[d] + 1
            for f in range(cfg["features"]):
                feat[f] += w * table[offset + index][f]
        out.extend(feat)
        offset += size
    return out


@pytest.mark.parametrize("dims", [2, 3])
def test_grid_encoding_matches_reference(dims: int) -> None:
    """Dense coarse levels and hashed fine ones (table 2^8 < the finest levels' vertices), random tables;
    points include the cube's corners and faces (the last cell holds the upper boundary). fp32 vs
    float64 reference: 1e-5 (features ~1, eight products of weights)."""
    torch.manual_seed(0)
    coarse, fine = [2, 3, 2][:dims], [40, 31, 17][:dims]
    enc = GridEncoding(coarse, fine, levels=5, features=3, log2_table=8, init_scale=1.0)
    assert bool(enc.hashed.any()) and not bool(enc.hashed.all())
    pts = torch.rand(40, dims) * 2 - 1
    pts[0], pts[1] = -1.0, 1.0
    pts[2, 0] = 1.0
    got = enc(pts)
    assert got.shape == (40, 5 * 3)
    want = torch.tensor([reference_encoding(enc, p) for p in pts.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def test_grid_encoding_gradient_reaches_only_the_touched_vertices() -> None:
    """A point on a dense level's vertex (weight 1 there) sends its gradient to that one table row."""
    enc = GridEncoding([4, 4], [4, 4], levels=1, features=2, log2_table=10)
    x = torch.tensor([[0.0, -0.5]])  # u = (0.5, 0.25) -> vertex (2, 1) of the 5x5 vertices
    enc(x).sum().backward()
    rows = torch.nonzero(enc.table.grad.abs().sum(1)).flatten().tolist()
    assert rows == [1 * 5 + 2]
    torch.testing.assert_close(enc.table.grad[7], torch.ones(2))


def _model(t: int = 6, w: int = 40, h: int = 24) -> tuple[HashNLAModel, InitLayout, Layout]:
    rng = np.random.default_rng(0)
    hs = np.repeat(np.eye(3)[None], t, 0)
    hs[:, 0, 2] = -np.arange(t) * 1.5  # a pan
    hs[:, 1, 0] = 0.01
    init = InitLayout(hs, (w / 2 + 3, h / 2), 0.7, rng.normal(20, 2, (t, 2)), 0.75)
    layout = Layout(w, h, t, fg_scale=init.fg_scale, bg_scale=init.bg_scale)
    config = HashNLAConfig(w, h, t, init.bg_center, init.bg_scale, init.fg_scale, log2_table=10)
    model = HashNLAModel.create(config, torch.from_numpy(hs).float(), torch.from_numpy(init.fg_centroids).float())
    return model, init, layout


def test_mappings_start_at_the_fit_layout() -> None:
    """At initialisation the residual mappings are exactly the warm start's targets (homography / centroid
    layout): the hash fit needs no mapping pretraining. 1e-5: fp32 atanh/tanh round trip."""
    model, init, layout = _model()
    x, y = torch.meshgrid(torch.arange(40.0), torch.arange(24.0), indexing="xy")
    x, y = x.reshape(-1), y.reshape(-1)
    for t in range(layout.num_frames):
        tt = torch.full_like(x, t, dtype=torch.long)
        fg_want, bg_want = make_targets(init, layout, torch.device("cpu"))(x, y, tt)
        xyt = layout.normalize(x, y, tt.float())
        torch.testing.assert_close(model.fg_mapping(xyt), fg_want, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.bg_mapping(xyt), bg_want, atol=1e-5, rtol=0)


def test_checkpoint_round_trip_through_the_loader(tmp_path: Path) -> None:
    """The fit writes the distilled NLA MLPs under the original keys (StableVideo loads them strictly)
    plus the hash model; sv-engine's loader returns the hash model, bit-exact, and NLAField evaluates it."""
    model, _, layout = _model()
    for net in model.modules().values():
        with torch.no_grad():
            for p in net.parameters():
                p.normal_()
    student = NLAModel.random(3)
    datafolder.write_checkpoint(tmp_path, student, 7, hash_model=model)
    raw = torch.load(tmp_path / "checkpoint", weights_only=True)
    original = NLAModel.random(0)
    original.load_state_dict(raw)  # strict: what StableVideo does with the four keys
    for key, sd in student.state_dict().items():
        for name, value in sd.items():
            assert torch.equal(raw[key][name], value)
    loaded, sha = sv_data.load_checkpoint(tmp_path / "checkpoint")
    assert isinstance(loaded, HashNLAModel) and len(sha) == 64
    xyt = torch.rand(500, 3) * 2 - 1
    for got, want in zip(NLAField(loaded)(xyt), NLAField(model)(xyt), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(loaded.atlas(xyt[:, :2]), model.atlas(xyt[:, :2]))


def test_distillation_copies_the_teacher() -> None:
    """Distilling a (random, smooth-ish) teacher on a tiny clip: the NLA MLPs' reconstruction approaches
    the teacher's. Bars from the measured run (300 steps of 512 pixels: the rgb error falls ~20x): the
    student's reconstruction within 0.02 MSE of the teacher's, 10x closer than at the start."""
    from sv_engine.stablevideo.fit import report

    torch.manual_seed(0)
    teacher, _, layout = _model(t=4, w=24, h=16)
    teacher.eval()
    frames = torch.rand(4, 16, 24, 3)
    empty = torch.zeros(3, 16, 24, 2)
    data = FitTensors(frames, None, empty, empty, empty[..., 0].bool(), empty[..., 0].bool())
    student = NLAModel.random(1)
    opt = torch.optim.Adam([p for n in student.modules().values() for p in n.parameters()], lr=2e-3)
    xyt = layout.normalize(*(torch.rand(2000) * s for s in (24, 16)), torch.randint(0, 4, (2000,)).float())

    def gap() -> float:
        return float((report.evaluate_points(student, xyt)[0] - report.evaluate_points(teacher, xyt)[0]).pow(2).mean())

    before = gap()
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        total, terms = distill_step(student, teacher, data, layout, 512, amp=False, generator=gen)
        opt.zero_grad()
        total.backward()
        opt.step()
    after = gap()
    assert set(terms) == {"map_fg", "map_bg", "alpha", "atlas_rgb"}
    assert after < 0.1 * before and after < 0.02, (before, after)
