"""Both `pip install .` and `pip install -e .` give one `sv_engine` namespace with every subpackage."""

from __future__ import annotations

import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "sv_engine",
    "sv_engine.cli",
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
import importlib, importlib.util, pathlib, sys
for name in {SUBPACKAGES!r}:
    importlib.import_module(name)
for name in {FORBIDDEN_TOP_LEVEL!r}:
    spec = importlib.util.find_spec(name)
    assert spec is None or 'site-packages' not in str(spec.origin), f'{{name}} installed at top level: {{spec.origin}}'
import sv_engine.kernels
assert (pathlib.Path(sv_engine.kernels.__file__).parent / 'render.cu').is_file(), 'kernel sources missing'
print(sv_engine.kernels.__file__)
"""


def _venv_with_current_deps(path: Path) -> Path:
    """A fresh venv that sees this environment's installed dependencies (no downloads) but not sv_engine."""
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / "bin" / "python"
    site = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["pip install .", "pip install -e ."])
def test_install_imports_every_subpackage(tmp_path: Path, editable: bool) -> None:
    python = _venv_with_current_deps(tmp_path / "venv")
    target = ["-e", str(REPO)] if editable else [str(REPO)]
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *target], check=True, cwd=tmp_path)
    # Run from an unrelated folder so the repo's own folders are not on sys.path.
    out = subprocess.run([python, "-c", CHECK], check=True, cwd=tmp_path, capture_output=True, text=True).stdout
    if editable:
        assert out.strip().startswith(str(REPO))
    else:
        assert "site-packages" in out
