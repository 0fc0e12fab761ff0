"""A normal run's log holds sv-engine's lines, not third-party floods: no diffusers float32 warning per model,
no NumPy/torch read-only-array warning in `render`, no ffmpeg banner when a video cannot be read."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sv_engine.stablevideo.images import image_to_tensor, read_png


def test_casting_the_models_logs_no_float32_warning(capfd) -> None:
    """diffusers' ModelMixin.to() warns "should be kept in float32: []" on any dtype cast (4 lines per edit)."""
    from sv_engine.stablevideo.models.tiny import build_tiny_components

    components = build_tiny_components(0)
    components.to(device="cpu", dtype=torch.float16)
    assert components.unet.dtype == torch.float16 and components.vae.dtype == torch.float16
    components.to(dtype=torch.float32)
    captured = capfd.readouterr()
    assert "should be kept in float32" not in captured.err + captured.out


def test_png_reads_into_a_writable_array(tmp_path: Path) -> None:
    """torch.from_numpy warns "The given NumPy array is not writable" for PIL's read-only buffers."""
    path = tmp_path / "atlas.png"
    Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = image_to_tensor(read_png(path))
    assert tensor.shape == (3, 4, 6) and torch.allclose(tensor, torch.full_like(tensor, 200 / 255))


def test_unreadable_video_is_one_line_without_the_ffmpeg_banner(tmp_path: Path) -> None:
    video = tmp_path / "notavideo.mp4"
    video.write_text("hello, I am a text file")
    result = subprocess.run(
        [Path(sys.executable).with_name("sv-engine"), "fit", video, "--out", tmp_path / "fit"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"ERROR sv_engine: Cannot read video {video}") and "Fix:" in line
    assert "ffmpeg version" not in result.stderr and not (tmp_path / "fit").exists()
