"""CLI behaviour on bad input: one clear line naming the fix, exit code 2, nothing overwritten."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from sv_engine.cli import main


def run_cli(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["sv-engine", *map(str, args)])
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        main()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return int(exit_info.value.code or 0), "\n".join(errors)


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "{missing}"], "Data folder not found"),
        (
            [
                "edit",
                "{data}",
                "--fg-prompt",
                "a",
                "--bg-prompt",
                "b",
                "--tiny",
                "--keyframes",
                "1,99",
                "--out",
                "{tmp}/o.mp4",
            ],
            "out of range",
        ),
        (
            [
                "edit",
                "{data}",
                "--fg-prompt",
                "a",
                "--bg-prompt",
                "b",
                "--tiny",
                "--device",
                "cuda",
                "--out",
                "{tmp}/o.mp4",
            ],
            "CUDA was requested",
        ),
        (
            [
                "edit",
                "{data}",
                "--fg-prompt",
                "a",
                "--bg-prompt",
                "b",
                "--tiny",
                "--device",
                "tpu",
                "--out",
                "{tmp}/o.mp4",
            ],
            "Unknown device",
        ),
        (["edit", "{data}", "--fg-prompt", "a", "--bg-prompt", "b", "--out", "{tmp}/o.mp4"], "No model weights given"),
        (
            [
                "edit",
                "{data}",
                "--fg-prompt",
                "a",
                "--bg-prompt",
                "b",
                "--tiny",
                "--strength",
                "1.5",
                "--out",
                "{tmp}/o.mp4",
            ],
            "strength",
        ),
        (
            [
                "edit",
                "{data}",
                "--fg-prompt",
                "a",
                "--bg-prompt",
                "b",
                "--tiny",
                "--backend",
                "ort",
                "--cuda-graphs",
                "--out",
                "{tmp}/o.mp4",
            ],
            "option of the torch backend",
        ),
        (
            [
                "edit",
                "{data}",
                "--fg-prompt",
                "a",
                "--bg-prompt",
                "b",
                "--tiny",
                "--device",
                "cpu",
                "--cuda-graphs",
                "--out",
                "{tmp}/o.mp4",
            ],
            "CUDA graphs need a CUDA device",
        ),
    ],
)
def test_bad_input_is_one_clear_error(
    monkeypatch, caplog, tmp_path: Path, random_data_dir: Path, args: list[str], message: str
) -> None:
    if "cuda" in args and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    filled = [a.format(data=random_data_dir, missing=tmp_path / "nope", tmp=tmp_path) for a in args]
    code, errors = run_cli(monkeypatch, caplog, *filled)
    assert code == 2
    assert message in errors and "Fix:" in errors
    assert not (tmp_path / "o.mp4").exists()


def test_existing_output_is_not_overwritten(monkeypatch, caplog, tmp_path: Path, random_data_dir: Path) -> None:
    out = tmp_path / "o.mp4"
    out.write_bytes(b"user's video")
    code, errors = run_cli(
        monkeypatch, caplog, "edit", random_data_dir, "--fg-prompt", "a", "--bg-prompt", "b", "--tiny", "--out", out
    )
    assert code == 2 and "already exists" in errors and "--force" in errors
    assert out.read_bytes() == b"user's video"


def test_info_and_export_maps(monkeypatch, caplog, capsys, tmp_path: Path, random_data_dir: Path) -> None:
    maps = tmp_path / "maps.npz"
    monkeypatch.setattr(
        sys, "argv", ["sv-engine", "info", str(random_data_dir), "--export-maps", str(maps), "--device", "cpu"]
    )
    main()
    assert '"frames": 4' in capsys.readouterr().out
    arrays = np.load(maps)
    assert arrays["fg_uv"].shape == (4, 32, 48, 2) and arrays["alpha"].shape == (4, 32, 48)
    assert 0.001 <= arrays["alpha"].min() and arrays["alpha"].max() <= 0.991  # SV's alpha formula range
