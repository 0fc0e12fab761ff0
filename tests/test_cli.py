"""CLI behaviour on bad input: one clear line naming the fix, exit code 2, nothing overwritten."""

from __future__ import annotations

import json
import logging
import subprocess
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


#: An edit of the random data folder: each case adds the flags at fault.
EDIT = ["edit", "{data}", "--fg-prompt", "a", "--bg-prompt", "b", "--out", "{tmp}/o.mp4"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "{missing}"], "Data folder not found"),
        ([*EDIT, "--tiny", "--keyframes", "1,99"], "--keyframes: Keyframe(s) [99] out of range"),
        ([*EDIT, "--tiny", "--device", "cuda"], "--device: CUDA was requested"),
        ([*EDIT, "--tiny", "--device", "tpu"], "--device: Unknown device 'tpu'"),
        (EDIT, "No model weights given. Fix: pass --weights DIR"),
        ([*EDIT, "--tiny", "--strength", "1.5"], "--strength: "),
        ([*EDIT, "--tiny", "--backend", "ort", "--cuda-graphs"], "--cuda-graphs: It is an option of the torch backend"),
        ([*EDIT, "--tiny", "--device", "cpu", "--cuda-graphs"], "CUDA graphs need a CUDA device"),
        ([*EDIT, "--tiny", "--weights", "{tmp}"], "--tiny and --weights are exclusive"),
        ([*EDIT, "--tiny", "--precision", "fp8"], "--precision: Unknown precision 'fp8'. Fix: use fp32 or fp16."),
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
    assert code == 2 and errors.startswith(f"--out: Output {out} already exists.") and "pass --force" in errors
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


SV_ENGINE = Path(sys.executable).with_name("sv-engine")  # the installed console entry point


def run_entry_point(*args: str, python_prelude: str | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process: the installed ``sv-engine`` script, or ``main()`` after a prelude."""
    if python_prelude is None:
        command = [str(SV_ENGINE), *args]
    else:
        argv = ["sv-engine", *args]
        script = f"{python_prelude}\nimport sys\nsys.argv = {argv!r}\nfrom sv_engine.cli import main\nmain()"
        command = [sys.executable, "-c", script]
    # From tests/: the repo root's sv_engine/ folder must not shadow the installed package.
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent)


@pytest.mark.parametrize(
    "args, what, usage",
    [
        (["edti"], "No such command 'edti'. Did you mean 'edit'?", "Usage: sv-engine [OPTIONS] COMMAND"),
        (
            ["edit", "clip", "--fg-prompt", "a", "--bg-prompt", "b", "--stepz", "3"],
            "No such option: --stepz",
            "Usage: sv-engine edit",
        ),
        (["edit", "clip", "--fg-prompt", "a"], "Missing option '--bg-prompt'", "Usage: sv-engine edit"),
        (["edit"], "Missing argument 'DATA_DIR'", "Usage: sv-engine edit"),
        (
            ["edit", "clip", "--fg-prompt", "a", "--bg-prompt", "b", "--steps", "abc"],
            "Invalid value for '--steps'",
            "Usage: sv-engine edit",
        ),
        (
            ["serve", "--max-queue", "0"],
            "Invalid value for '--max-queue': Input should be greater than or equal to 1",
            "Usage: sv-engine serve",
        ),
        (["render", "clip", "--fg-atlas"], "Option '--fg-atlas' requires an argument", None),
    ],
    ids=[
        "unknown command",
        "unknown option",
        "missing option",
        "missing argument",
        "bad type",
        "out of range",
        "option without value",
    ],
)
def test_usage_error_is_one_line_and_exit_2(tmp_path: Path, args: list[str], what: str, usage: str | None) -> None:
    result = run_entry_point(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no traceback, no boxed help
    assert what in lines[0] and "Fix:" in lines[0] and "--help" in lines[0]
    if usage is not None:
        assert usage in lines[0]
    assert result.stdout == ""


def test_help_is_not_an_error() -> None:
    for args in ([], ["--help"], ["edit", "--help"]):
        result = run_entry_point(*args)
        assert result.returncode == 0 and "Usage" in result.stdout + result.stderr, (args, result.stderr)


@pytest.mark.parametrize("command", [["serve", "--tiny"], ["batch", "jobs.yaml", "--tiny"]])
@pytest.mark.parametrize("module", ["ray", "fastapi", "yaml"])
def test_missing_serve_extra_names_the_install(tmp_path: Path, command: list[str], module: str) -> None:
    """Without the serve extra, `serve` and `batch` say which extra to install (before doing anything)."""
    result = run_entry_point(*command, python_prelude=f"import sys; sys.modules[{module!r}] = None  # not installed")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"ERROR sv_engine: The Python package {module!r} is not installed. Fix: pip install 'sv-engine[serve]'."
    ]


def test_serve_refuses_a_busy_port_before_loading_models(tmp_path: Path) -> None:
    import socket

    from requires import import_or_skip

    import_or_skip("ray")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_entry_point("serve", "--tiny", "--port", str(port), "--data-root", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"ERROR sv_engine: Cannot listen on 127.0.0.1:{port}: Address already in use. "
        "Fix: pass a free --port (or stop the process holding it)."
    ]


def test_output_folder_that_cannot_be_made_is_one_line(monkeypatch, caplog, random_data_dir: Path) -> None:
    code, errors = run_cli(
        monkeypatch, caplog, "edit", random_data_dir, "--fg-prompt", "a", "--bg-prompt", "b", "--tiny",
        "--out", "/proc/sv-engine-test/o.mp4",
    )  # fmt: skip
    assert code == 2 and "Cannot create the folder for output /proc/sv-engine-test/o.mp4" in errors


def test_force_never_replaces_a_folder_with_a_file(monkeypatch, caplog, tmp_path: Path, random_data_dir: Path) -> None:
    """`--out some_folder --force` used to run the whole edit, then fail writing the mp4 onto the folder."""
    folder = tmp_path / "my-videos"
    (folder / "keep").mkdir(parents=True)
    args = ["edit", random_data_dir, "--fg-prompt", "a", "--bg-prompt", "b", "--tiny", "--force"]
    code, errors = run_cli(monkeypatch, caplog, *args, "--out", folder)
    assert code == 2 and f"Output {folder} is a folder" in errors
    a_file = tmp_path / "frames.txt"
    a_file.write_text("notes")
    code, errors = run_cli(monkeypatch, caplog, *args, "--out", tmp_path / "o.mp4", "--frames-dir", a_file)
    assert code == 2 and f"Output {a_file} is a file" in errors
    assert (folder / "keep").is_dir() and a_file.read_text() == "notes" and not (tmp_path / "o.mp4").exists()


def _console_main(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``console_main()`` (the script's entry) in a fresh process that prints TEARDOWN from atexit."""
    argv = ["sv-engine", *map(str, args)]
    script = (
        "import atexit, sys\natexit.register(lambda: print('TEARDOWN', flush=True))\n"
        f"sys.argv = {argv!r}\nfrom sv_engine.cli import console_main\nconsole_main()"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_a_finished_edit_ends_its_process_at_once(tmp_path: Path, random_data_dir: Path) -> None:
    """After ``edit`` wrote its outputs the script's process ends without the interpreter's teardown
    (atexit handlers do not run), with exit code 0 and every output complete; a usage error still
    exits normally with 2."""
    out = tmp_path / "o.mp4"
    done = _console_main(tmp_path, "edit", random_data_dir, "--fg-prompt", "a", "--bg-prompt", "b", "--tiny",
                         "--device", "cpu", "--steps", "2", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "TEARDOWN" not in done.stdout and "done:" in done.stderr
    report = json.loads(out.with_name("o_report.json").read_text())
    assert out.stat().st_size > 0 and out.with_name("o_preview.png").is_file() and "seconds_per_phase" in report
    bad = _console_main(tmp_path, "edit", random_data_dir, "--fg-prompt", "a")
    assert bad.returncode == 2 and "TEARDOWN" in bad.stdout
