"""The cold path imports only what a command uses (issue 16): ``--help`` and usage errors no ML library,
bad input no model library, and an edit none either (the pipeline's own networks import torch only).
Each case is a fresh ``sv-engine``
process that records its ``sys.modules`` at exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: What the command line must not import before a command needs it.
ML_LIBRARIES = ("torch", "numpy", "diffusers", "transformers", "peft", "scipy", "cv2", "onnx", "onnxruntime", "PIL")
MODEL_LIBRARIES = ("diffusers", "transformers", "peft")
_HARNESS = """
import atexit, json, os, sys
atexit.register(lambda: json.dump(sorted(sys.modules), open(os.environ["SV_TEST_MODULES_OUT"], "w")))
sys.argv = ["sv-engine", *json.loads(os.environ["SV_TEST_ARGV"])]
from sv_engine.cli import main
main()
"""


def run_recording_modules(tmp_path: Path, *args: str) -> tuple[int, str, set[str]]:
    """``sv-engine ARGS`` in a fresh process: exit code, stderr, the modules imported by its end."""
    out = tmp_path / "modules.json"
    env = {**os.environ, "SV_TEST_ARGV": json.dumps([str(a) for a in args]), "SV_TEST_MODULES_OUT": str(out)}
    # From tests/: the repo root's sv_engine/ folder must not shadow the installed package.
    proc = subprocess.run(
        [sys.executable, "-c", _HARNESS],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).parent,
    )
    return proc.returncode, proc.stderr, set(json.loads(out.read_text()))


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize(
    "args, code",
    [
        (["--help"], 0),
        (["edit", "--help"], 0),
        (["serve", "--help"], 0),
        (["batch", "--help"], 0),
        (["edit"], 2),
        (["edit", "clip", "--fg-prompt", "a"], 2),
        (["edit", "clip", "--fg-prompt", "a", "--bg-prompt", "b", "--stepz", "3"], 2),
    ],
    ids=["help", "edit help", "serve help", "batch help", "missing argument", "missing option", "unknown option"],
)
def test_help_and_usage_errors_import_no_ml_library(tmp_path: Path, args: list[str], code: int) -> None:
    returncode, stderr, modules = run_recording_modules(tmp_path, *args)
    assert returncode == code, stderr
    assert not top_level(modules) & set(ML_LIBRARIES), sorted(top_level(modules) & set(ML_LIBRARIES))


def test_bad_input_is_refused_before_the_model_libraries(tmp_path: Path, random_data_dir: Path) -> None:
    """A missing model source is found by the input checks: torch is imported, diffusers and transformers not."""
    returncode, stderr, modules = run_recording_modules(
        tmp_path, "edit", random_data_dir, "--fg-prompt", "a", "--bg-prompt", "b", "--out", tmp_path / "o.mp4"
    )
    assert returncode == 2 and "No model weights given" in stderr, stderr
    assert not top_level(modules) & set(MODEL_LIBRARIES), sorted(top_level(modules) & set(MODEL_LIBRARIES))


@pytest.mark.parametrize("source", ["tiny", "saved weights"])
def test_a_tiny_edit_imports_no_model_library(tmp_path: Path, random_data_dir: Path, source: str) -> None:
    if source == "tiny":
        models = ["--tiny"]
    else:  # the loader's path: the weights read from files into models built on the meta device
        import torch
        from sv_engine.stablevideo.model_source import load_components
        from sv_engine.stablevideo.models.loaders import save_components

        models = ["--weights", str(save_components(load_components(torch.device("cpu"), tiny=True), tmp_path / "w"))]
    out = tmp_path / "edit.mp4"
    returncode, stderr, modules = run_recording_modules(
        tmp_path,
        "edit",
        random_data_dir,
        *("--fg-prompt", "a", "--bg-prompt", "b", *models, "--steps", "1", "--image-resolution", "64"),
        *("--keyframes", "1", "--out", out),
    )
    assert returncode == 0 and out.is_file(), stderr
    # torch._dynamo (and sympy under it): 3.8 s of a cold edit on the H200 host when diffusers or
    # transformers pulled it in, 4-5 s of the load when meta tensors were initialised
    assert not top_level(modules) & {*MODEL_LIBRARIES, "sympy"} and "torch._dynamo" not in modules, sorted(
        top_level(modules) & {*MODEL_LIBRARIES, "sympy"}
    )
    # what it does run: the networks' own modules
    assert {
        f"sv_engine.stablevideo.models.nets.{name}" for name in ("unet", "controlnet", "vae", "clip_text", "dpt")
    } <= (modules)
    report = json.loads(out.with_name("edit_report.json").read_text())
    assert list(report["seconds_per_phase"])[:5] == [
        "start python and the CLI",
        "import torch and the pipeline",
        "check inputs",
        "import model libraries",
        "load models",
    ]
