"""Shared test fixtures: a small synthetic StableVideo data folder and an isolated cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Every cache a test run writes (sv-engine's NLA maps and engines, torch.compile's, Ray's session files)
# goes under one folder, removed when the run ends: a run leaves nothing behind in /tmp.
_RUN_CACHES = {"SV_ENGINE_CACHE": "sv-engine", "TORCHINDUCTOR_CACHE_DIR": "inductor", "RAY_TMPDIR": "ray"}
_run_root: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """One sv-engine cache for the whole run (never the user's): the demo's NLA maps are computed once."""
    global _run_root
    _run_root = Path(tempfile.mkdtemp(prefix="sv-engine-tests-"))
    for variable, name in _RUN_CACHES.items():
        (_run_root / name).mkdir()
        os.environ[variable] = str(_run_root / name)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _run_root is not None:
        shutil.rmtree(_run_root, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip, with the reason, where torch sees no CUDA GPU (the one definition)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


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
