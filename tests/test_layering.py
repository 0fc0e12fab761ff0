"""The dependency rules of the design, checked on the source: each folder's imports (every
``import`` / ``from`` statement, including the lazy ones inside functions) against what it may use.

kernels/ and engine/ are leaves (tensors and graphs in, tensors out); stablevideo/ is the pipeline
library on top of them; export/ wraps the pipeline's models; benchmarks/ times them; the CLI and the
render service sit on top. The shared utilities (errors, paths, atomic writes) import none of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kernels", "engine", "stablevideo", "export", "benchmarks", "service", "cli")
#: folder -> the sv_engine layers it must never import.
FORBIDDEN = {
    "kernels": {"stablevideo", "export", "benchmarks", "service", "cli"},
    "engine": {"stablevideo", "export", "benchmarks", "service", "cli"},
    "stablevideo": {"export", "benchmarks", "service", "cli"},
    "export": {"benchmarks", "service", "cli"},
    "benchmarks": {"cli"},
    "sv_engine/service": {"cli"},
}
SHARED = ("errors", "paths", "atomic_write", "device", "gc_pause", "process_clock")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "sv_engine" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def _violations(folder: str, forbidden: set[str]) -> list[str]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        for line, module in _imports(path)
        if _layer(module) in forbidden
    ]


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layers_import_only_downwards(folder: str) -> None:
    assert _violations(folder, FORBIDDEN[folder]) == []


def test_shared_utilities_import_no_layer() -> None:
    bad = [
        f"sv_engine/{name}.py:{line} imports {module}"
        for name in SHARED
        for line, module in _imports(ROOT / "sv_engine" / f"{name}.py")
        if _layer(module) is not None
    ]
    assert bad == []


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    """A function-level import of a forbidden layer is reported (the walk is not top-level only)."""
    module = tmp_path / "leaf.py"
    module.write_text("def f():\n    from sv_engine.stablevideo.pipeline import StableVideoPipeline\n")
    assert _imports(module) == [(2, "sv_engine.stablevideo.pipeline")]
    assert _layer("sv_engine.stablevideo.pipeline") == "stablevideo" and _layer("sv_engine.errors") is None
