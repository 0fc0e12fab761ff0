"""Shared test fixtures: a small synthetic StableVideo data folder and an isolated cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config: pytest.Config) -> None:
    """One sv-engine cache for the whole run (never the user's): the demo's NLA maps are computed once."""
    import os
    import tempfile

    os.environ["SV_ENGINE_CACHE"] = tempfile.mkdtemp(prefix="sv-engine-test-cache-")


@pytest.fixture
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty cache for tests of the cache itself."""
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
