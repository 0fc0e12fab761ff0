"""Shared test fixtures: a small synthetic StableVideo data folder and an isolated cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own sv-engine cache, so no test sees another's maps or engines."""
    cache = tmp_path_factory.mktemp("sv-cache")
    monkeypatch.setenv("SV_ENGINE_CACHE", str(cache))
    return cache


@pytest.fixture
def random_data_dir(tmp_path: Path) -> Path:
    """A 4-frame 48x32 data folder with a random NLA checkpoint in the original format."""
    from sv_engine.stablevideo.data import write_video_data
    from sv_engine.stablevideo.nla import NLAModel

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(4, 32, 48, 3), dtype=np.uint8)
    return write_video_data(tmp_path / "clip", frames, NLAModel.random(seed=1))

