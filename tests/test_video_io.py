"""write_mp4: H.264 through imageio-ffmpeg, the OpenCV fallback, and a clean error when neither works."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from requires import import_or_skip
from sv_engine.stablevideo import video_io

from sv_engine.errors import SvEngineError


def _frames(t: int = 6, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(t, h, w, 3), dtype=np.uint8)


def _read_back(path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def _mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_write_mp4_h264(tmp_path):
    import_or_skip("imageio_ffmpeg")
    frames = (
        np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None], 48, axis=1).repeat(3, -1).repeat(6, 0)
    )
    out = tmp_path / "a.mp4"
    assert video_io.write_mp4(out, frames) == "h264 (imageio-ffmpeg)"
    back = _read_back(out)
    assert back.shape == frames.shape
    assert _mean_abs_error(back, frames) < 8  # lossy codec on a smooth ramp: a few levels at most


def test_write_mp4_falls_back_to_opencv_without_imageio_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # `import imageio_ffmpeg` now raises ImportError
    frames = _frames()
    out = tmp_path / "b.mp4"
    assert video_io.write_mp4(out, frames) == "mpeg4 (OpenCV)"
    back = _read_back(out)
    assert back.shape == frames.shape
    assert not list(tmp_path.glob(".*partial*"))


def test_write_mp4_error_keeps_existing_file(tmp_path, monkeypatch):
    import imageio.v2 as imageio

    def missing(*args, **kwargs):
        raise ImportError("no ffmpeg")

    monkeypatch.setattr(imageio, "mimwrite", missing)
    monkeypatch.setattr(video_io, "_write_mp4_opencv", lambda path, frames, fps: False)
    out = tmp_path / "c.mp4"
    out.write_bytes(b"user's video")
    with pytest.raises(SvEngineError, match="imageio-ffmpeg"):
        video_io.write_mp4(out, _frames())
    assert out.read_bytes() == b"user's video"
    assert not list(tmp_path.glob(".*partial*"))
