"""A warm pipeline's open videos: reused without reading the folder while it is unchanged, reloaded when it changes."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sv_engine.stablevideo import session as session_module
from sv_engine.stablevideo.data import folder_stamp
from sv_engine.stablevideo.nla import NLAModel
from sv_engine.stablevideo.session import SessionCache

from sv_engine.errors import SvEngineError


@pytest.fixture
def counted_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The data folders SessionCache actually read (decoded frames, hashed the checkpoint)."""
    loads: list[str] = []
    real = session_module.load_video_data

    def counting(root):  # noqa: ANN001, ANN202 - same signature as load_video_data
        loads.append(str(root))
        return real(root)

    monkeypatch.setattr(session_module, "load_video_data", counting)
    return loads


def test_unchanged_folder_is_reused_without_reading_it(
    random_data_dir: Path, isolated_cache: Path, counted_loads: list[str]
) -> None:
    cache = SessionCache(torch.device("cpu"))
    first = cache.open(random_data_dir)
    again = cache.open(random_data_dir)
    assert again is first
    assert len(counted_loads) == 1


@pytest.mark.parametrize("change", ["frame", "checkpoint", "config", "new frame"])
def test_changed_folder_is_loaded_again(
    random_data_dir: Path, isolated_cache: Path, counted_loads: list[str], change: str
) -> None:
    cache = SessionCache(torch.device("cpu"))
    first = cache.open(random_data_dir)
    frames = sorted((random_data_dir / random_data_dir.name).glob("*.jpg"))
    if change == "frame":  # same name, same size class: only the pixels (and so mtime/inode) change
        Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(frames[1], quality=92)
    elif change == "checkpoint":
        torch.save({**NLAModel.random(seed=7).state_dict(), "iteration": 0}, random_data_dir / "checkpoint")
    elif change == "config":
        (random_data_dir / "config.json").write_text('{"resx": 48, "resy": 32, "number_of_frames": 3}')
    else:
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(frames[0].with_name("00000a.jpg"), quality=92)
    reopened = cache.open(random_data_dir)
    assert len(counted_loads) == 2
    assert reopened is not first
    if change == "frame":
        assert not torch.equal(reopened.video.frames[1], first.video.frames[1])
    if change == "checkpoint":
        assert reopened.video.checkpoint_sha256 != first.video.checkpoint_sha256
        assert not torch.allclose(reopened.maps.fg_uv, first.maps.fg_uv)
    if change == "config":
        assert reopened.video.config.num_frames == 3


def test_stamp_sees_a_rewrite_that_keeps_size_and_mtime(random_data_dir: Path) -> None:
    """An atomic replace (new inode) with the old size and mtime restored still changes the stamp."""
    frame = sorted((random_data_dir / random_data_dir.name).glob("*.jpg"))[2]
    before = folder_stamp(random_data_dir)
    st = frame.stat()
    data = bytearray(frame.read_bytes())
    data[-3] ^= 0xFF
    tmp = frame.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, frame)
    assert frame.stat().st_size == st.st_size and frame.stat().st_mtime_ns == st.st_mtime_ns
    assert folder_stamp(random_data_dir) != before


def test_a_video_opened_in_the_background_is_taken_by_the_next_open(
    random_data_dir: Path, isolated_cache: Path, counted_loads: list[str]
) -> None:
    """A cold edit opens its clip on a worker while the models load: the edit's open takes that session
    (the folder read once) and it equals a session opened in the foreground."""
    cache = SessionCache(torch.device("cpu"))
    with ThreadPoolExecutor(max_workers=1) as worker:
        cache.open_in_background(random_data_dir, worker)
    session = cache.open(random_data_dir)
    assert len(counted_loads) == 1
    assert cache.open(random_data_dir) is session
    fresh = SessionCache(torch.device("cpu")).open(random_data_dir)
    assert torch.equal(session.maps.fg_uv, fresh.maps.fg_uv) and torch.equal(session.video.frames, fresh.video.frames)


def test_a_folder_changed_while_it_opened_in_the_background_is_opened_again(
    random_data_dir: Path, isolated_cache: Path, counted_loads: list[str]
) -> None:
    cache = SessionCache(torch.device("cpu"))
    with ThreadPoolExecutor(max_workers=1) as worker:
        cache.open_in_background(random_data_dir, worker)
    (random_data_dir / "config.json").write_text('{"resx": 48, "resy": 32, "number_of_frames": 3}')
    assert cache.open(random_data_dir).video.config.num_frames == 3
    assert len(counted_loads) == 2


def test_a_background_open_that_failed_is_reported_by_the_open_that_needs_it(
    random_data_dir: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's error is not lost nor raised twice: the edit's own open meets the bad folder and raises."""
    cache = SessionCache(torch.device("cpu"))
    (random_data_dir / "checkpoint").write_bytes(b"not a checkpoint")
    with ThreadPoolExecutor(max_workers=1) as worker:
        cache.open_in_background(random_data_dir, worker)
    with pytest.raises(SvEngineError, match="checkpoint"):
        cache.open(random_data_dir)
