"""NLA networks, data-folder loading and the per-pixel maps cache, against the original's formulas."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch
from sv_engine.stablevideo.data import load_video_data
from sv_engine.stablevideo.maps import compute_maps, load_or_compute_maps
from sv_engine.stablevideo.nla import NLAField, NLAModel, normalize_xyt, positional_encoding

from sv_engine.errors import SvEngineError


def original_encoding(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """NLA's positionalEncoding_vec, written as in the original (einsum, cat, transpose, view)."""
    proj = torch.einsum("ij, k -> ijk", x, freqs)
    mapped = torch.cat((torch.sin(proj), torch.cos(proj)), dim=1)
    return mapped.transpose(2, 1).contiguous().view(mapped.size(0), -1)


def test_checkpoint_layout_is_the_original() -> None:
    state = NLAModel.random().state_dict()
    assert set(state) == {
        "model_F_mapping1_state_dict",
        "model_F_mapping2_state_dict",
        "F_atlas_state_dict",
        "model_F_alpha_state_dict",
    }
    atlas = state["F_atlas_state_dict"]
    assert atlas["hidden.0.weight"].shape == (256, 40)  # 2 dims · 2 · 10 freqs, no raw x
    assert atlas["hidden.4.weight"].shape == (256, 296) and atlas["hidden.7.weight"].shape == (3, 296)
    assert len([k for k in state["model_F_mapping1_state_dict"] if k.endswith("weight")]) == 6
    assert len([k for k in state["model_F_mapping2_state_dict"] if k.endswith("weight")]) == 4
    assert state["model_F_alpha_state_dict"]["hidden.0.weight"].shape == (256, 30)


def test_positional_encoding_matches_original_order() -> None:
    x = torch.randn(7, 3)
    freqs = torch.tensor([(2.0**j) * math.pi for j in range(5)])
    torch.testing.assert_close(positional_encoding(x, freqs), original_encoding(x, freqs))


def test_normalisation_formula() -> None:
    xyt = torch.tensor([[0.0, 0.0, 0.0], [768.0, 432.0, 70.0]])
    out = normalize_xyt(xyt, 768, 432, 70)
    torch.testing.assert_close(out, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 432 / 384 - 1, 1.0]]))


def test_load_data_folder_strict(random_data_dir: Path) -> None:
    video = load_video_data(random_data_dir)
    assert video.frames.shape == (4, 3, 32, 48) and 0 <= float(video.frames.min()) and float(video.frames.max()) <= 1
    assert len(video.checkpoint_sha256) == 64


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "checkpoint").unlink(), "checkpoint not found"),
        (lambda d: (d / "checkpoint").write_bytes(b"not a checkpoint"), "Cannot read NLA checkpoint"),
        (lambda d: (d / "config.json").write_text("{"), "not a valid StableVideo config"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({"resx": 48, "resy": 32, "number_of_frames": 9})),
            "holds 4 jpg/png frames",
        ),
        (lambda d: (d / d.name / "00001.jpg").write_bytes(b"garbage"), "Cannot read frame"),
    ],
)
def test_bad_data_folder_errors(random_data_dir: Path, breakage, message: str) -> None:
    breakage(random_data_dir)
    with pytest.raises(SvEngineError, match=message):
        load_video_data(random_data_dir)


def test_frames_decoded_at_once_match_one_at_a_time(random_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_frames decodes in a thread pool: the same tensor as one thread, and of two unreadable
    frames the first in frame order is the one reported (not whichever thread failed first)."""
    from PIL import Image
    from sv_engine.stablevideo import data

    frames = random_data_dir / random_data_dir.name
    for i in range(4, 12):  # more frames than threads, in a size the loader must resize
        Image.new("RGB", (24, 16), (i * 20, 255 - i * 20, 7)).save(frames / f"{i:05d}.png")
    (random_data_dir / "config.json").write_text(json.dumps({"resx": 48, "resy": 32, "number_of_frames": 12}))
    config = data.read_config(random_data_dir)
    monkeypatch.setattr(data, "DECODE_THREADS", 1)
    one, _ = data.load_frames(random_data_dir, config)
    monkeypatch.setattr(data, "DECODE_THREADS", 4)
    many, _ = data.load_frames(random_data_dir, config)
    assert torch.equal(one, many)
    (frames / "00009.png").write_bytes(b"garbage")
    (frames / "00002.jpg").write_bytes(b"garbage")
    with pytest.raises(SvEngineError, match="00002.jpg"):
        data.load_frames(random_data_dir, config)


def test_checkpoint_of_another_architecture_is_refused(random_data_dir: Path) -> None:
    state = NLAModel.random().state_dict()
    state["F_atlas_state_dict"].pop("hidden.7.bias")
    torch.save(state, random_data_dir / "checkpoint")
    with pytest.raises(SvEngineError, match="does not match the original architecture"):
        load_video_data(random_data_dir)


def test_maps_match_pointwise_evaluation(random_data_dir: Path) -> None:
    video = load_video_data(random_data_dir)
    maps = compute_maps(NLAField(video.nla), video.config, chunk_size=100, progress=False)
    x, y, t = 17, 9, 2
    point = normalize_xyt(torch.tensor([[float(x), float(y), float(t)]]), 48, 32, 4)
    with torch.no_grad():
        fg = video.nla.fg_mapping(point)[0] * 0.5 + 0.5
        bg = video.nla.bg_mapping(point)[0] * 0.5 - 0.5
        alpha = 0.99 * (video.nla.alpha(point)[0, 0] + 1) / 2 + 0.001
    torch.testing.assert_close(maps.fg_uv[t, y, x], fg)
    torch.testing.assert_close(maps.bg_uv[t, y, x], bg)
    torch.testing.assert_close(maps.alpha[t, y, x], alpha)


def test_maps_cache_is_keyed_by_checkpoint(random_data_dir: Path, isolated_cache: Path) -> None:
    first = load_or_compute_maps(load_video_data(random_data_dir))
    assert len(list((isolated_cache / "maps").glob("*.pt"))) == 1
    again = load_or_compute_maps(load_video_data(random_data_dir))
    torch.testing.assert_close(first.fg_uv, again.fg_uv)
    torch.save(NLAModel.random(seed=5).state_dict(), random_data_dir / "checkpoint")
    changed = load_or_compute_maps(load_video_data(random_data_dir))
    assert len(list((isolated_cache / "maps").glob("*.pt"))) == 2
    assert not torch.allclose(changed.fg_uv, first.fg_uv)


def test_maps_cache_survives_concurrent_writers(
    random_data_dir: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers of one cache entry (the GPUs of a batch open the same clip) both finish, and the
    entry is whole. The barrier holds both between writing and renaming: with one shared temporary
    name, the second rename found its file already moved (seen on an H100 run)."""
    import os

    from sv_engine import atomic_write

    barrier = threading.Barrier(2, timeout=30)
    real_replace = os.replace

    def wait_then_replace(src, dst):
        barrier.wait()
        real_replace(src, dst)

    monkeypatch.setattr(atomic_write.os, "replace", wait_then_replace)
    results: list = []
    errors: list = []

    def open_clip() -> None:
        try:
            results.append(load_or_compute_maps(load_video_data(random_data_dir)))
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=open_clip) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == 2
    monkeypatch.setattr(atomic_write.os, "replace", real_replace)
    assert [p.suffix for p in (isolated_cache / "maps").iterdir()] == [".pt"]
    cached = load_or_compute_maps(load_video_data(random_data_dir))
    torch.testing.assert_close(cached.fg_uv, results[0].fg_uv)
