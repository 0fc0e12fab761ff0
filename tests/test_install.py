"""Installing sv-engine: a fresh venv built from pyproject.toml WITH its dependencies (offline, from the wheel
cache `make setup` keeps) imports every module and runs `sv-engine --help`; `pip install -e .` gives the same
single `sv_engine` namespace with every subpackage."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from requires import in_ci

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "sv_engine",
    "sv_engine.cli",
    "sv_engine.service",
    "sv_engine.stablevideo",
    "sv_engine.stablevideo.models",
    "sv_engine.engine",
    "sv_engine.export",
    "sv_engine.kernels",
    "sv_engine.benchmarks",
]
# Generic names the design card forbids installing at top level.
FORBIDDEN_TOP_LEVEL = ["engine", "export", "kernels", "stablevideo", "benchmarks"]

CHECK = f"""
import importlib, importlib.util, pathlib, pkgutil, sys
modules = []
for name in {SUBPACKAGES!r}:
    package = importlib.import_module(name)
    modules += [m.name for m in pkgutil.walk_packages(package.__path__, name + ".") if not m.name.endswith("__main__")]
for name in modules:
    importlib.import_module(name)
import importlib.metadata
# Ours must not install those names; another distribution may (transformers >= 5.25 installs
# Hugging Face's `kernels`): the check is sv-engine's own files and where each name resolves.
files = [str(f) for f in importlib.metadata.files("sv-engine") or []]
assert not [f for f in files if f.split("/")[0] in {FORBIDDEN_TOP_LEVEL!r}], f'top-level files: {{files}}'
for name in {FORBIDDEN_TOP_LEVEL!r}:
    spec = importlib.util.find_spec(name)
    origin = str(spec.origin) if spec is not None else ""
    ours = {str(REPO)!r} + '/' + name + '/'  # the repo's own folder (a venv inside the repo is not ours)
    assert not origin.startswith(ours), f'{{name}} resolves to the repo at top level: {{origin}}'
import sv_engine.kernels
assert (pathlib.Path(sv_engine.kernels.__file__).parent / 'render.cu').is_file(), 'kernel sources missing'
print(len(modules), "modules")
print(sv_engine.kernels.__file__)
"""


def wheel_cache() -> Path:
    """The wheels of every dependency (`make setup` fills it and `make test` names it in $SV_ENGINE_WHEELS)."""
    cache = os.environ.get("SV_ENGINE_WHEELS")
    if cache and Path(cache).is_dir():
        return Path(cache)
    message = "no wheel cache: run the tests with `make test` (make setup builds .wheels/ and sets SV_ENGINE_WHEELS)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.slow
def test_fresh_venv_installs_with_dependencies_and_runs(tmp_path: Path) -> None:
    """What a user's `pip install 'sv-engine[serve]'` gets: pyproject.toml's dependencies, nothing of this
    environment's (the venv is bare and pip may use only the wheel cache, never an index)."""
    wheels = wheel_cache()
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    install = [python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, f"{REPO}[serve]"]
    subprocess.run(install, check=True, cwd=tmp_path, env=env, timeout=1200)
    # Run from an unrelated folder so the repo's own folders are not on sys.path.
    out = subprocess.run([python, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    count, kernels = out.stdout.split("\n")[:2]
    assert int(count.split()[0]) >= 60 and "site-packages" in kernels, out.stdout
    help_text = subprocess.run(
        [tmp_path / "venv" / "bin" / "sv-engine", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "edit" in help_text.stdout and "serve" in help_text.stdout, help_text.stderr


def _venv_with_current_deps(path: Path) -> Path:
    """A fresh venv that sees this environment's installed dependencies (no downloads) but not sv_engine."""
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / "bin" / "python"
    site = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    ours = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_paths()["purelib"]]
    (Path(site) / "deps.pth").write_text("\n".join(ours) + "\n")
    return python


@pytest.mark.slow
def test_editable_install_imports_every_subpackage(tmp_path: Path) -> None:
    python = _venv_with_current_deps(tmp_path / "venv")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], check=True, cwd=tmp_path)
    out = subprocess.run([python, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[1].startswith(str(REPO))
