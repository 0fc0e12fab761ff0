"""torch.compile's compiled code kept in the engine cache, on the CPU with a tiny conv net: a new
backend (as a new process would) loads the stored artifacts before compiling and stores nothing for
the shapes they cover; another torch version or architecture is another key (compiled afresh); a
corrupt entry is compiled afresh with a warning; ``build`` again with the shapes stored is a no-op.
(The full-size UNet+ControlNet's compile seconds with and without the artifacts: benchmarks/engine_bench.py.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from sv_engine.engine.backend import ModelSource
from sv_engine.engine.registry import get_backend
from sv_engine.engine.torch_compile_backend import TorchCompileBackend, shape_label

from sv_engine.errors import SvEngineError


class TinyNet(torch.nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.out = torch.nn.Conv2d(width, 3, 1, bias=False)  # 1-D tensors of <= 8 values are in the key

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.out(torch.relu(self.conv(x))) + x,)


def _source(module: torch.nn.Module, name: str = "tiny_canny") -> ModelSource:
    return ModelSource(
        name=name,
        input_names=["x"],
        output_names=["y"],
        module=module,
        input_shapes={"x": ["B", 3, "h", "w"]},
        output_shapes={"y": ["B", 3, "h", "w"]},
        input_dtypes={"x": "float32"},
        output_dtypes={"y": "float32"},
        profiles={"x": ((1, 3, 8, 8), (2, 3, 16, 16), (2, 3, 32, 32))},
        precision="fp32",
    )


def _x(h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))


class LoadSpy:
    """Counts ``torch.compiler.load_cache_artifacts`` calls (and the bytes they were given)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.blobs: list[bytes] = []
        real = torch.compiler.load_cache_artifacts

        def load(blob: bytes):  # noqa: ANN202
            self.blobs.append(bytes(blob))
            return real(blob)

        monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyNet, bytes]:
    ok, reason = TorchCompileBackend.availability(torch.device("cpu"))
    if not ok:
        pytest.fail(f"torch.compile must work on the CI machine: {reason}")  # CI has g++: a skip would hide a break
    torch._dynamo.reset()
    cache = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    module = TinyNet().eval()
    backend = get_backend("torch-compile", device="cpu", cache_dir=cache)
    model = backend.compile(_source(module))
    with torch.no_grad():
        torch.testing.assert_close(model(x=_x())["y"], module(_x())[0], rtol=1e-4, atol=1e-5)
    entry = next(cache.glob("compile-tiny-*.bin"))
    store = backend.artifacts(_source(module))
    assert store.shapes == [shape_label({"x": _x()})] and entry.stat().st_size > 0
    return cache, module, entry.read_bytes()


def test_a_new_backend_loads_the_stored_artifacts_and_stores_nothing_more(
    stored: tuple[Path, TinyNet, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, module, blob = stored
    spy = LoadSpy(monkeypatch)
    entry = next(cache.glob("compile-tiny-*.bin"))
    before = entry.stat().st_mtime_ns
    torch._dynamo.reset()  # as in a new process: dynamo compiles again, inductor finds the loaded artifacts
    backend = get_backend("torch-compile", device="cpu", cache_dir=cache)
    model = backend.compile(_source(module, name="tiny_depth"))  # the depth twin shares the entry
    assert spy.blobs == [blob]
    with torch.no_grad():
        torch.testing.assert_close(model(x=_x())["y"], module(_x())[0], rtol=1e-4, atol=1e-5)
    assert entry.stat().st_mtime_ns == before  # the shape was stored: nothing rewritten


def test_a_new_shape_is_stored_beside_the_loaded_ones(stored: tuple[Path, TinyNet, bytes], tmp_path: Path) -> None:
    import shutil

    cache, module, blob = stored
    copy = tmp_path / "engines"
    shutil.copytree(cache, copy)
    backend = get_backend("torch-compile", device="cpu", cache_dir=copy)
    model = backend.compile(_source(module))
    with torch.no_grad():
        model(x=_x(8, 24))
    store = get_backend("torch-compile", device="cpu", cache_dir=copy).artifacts(_source(module))
    assert store.shapes == [shape_label({"x": _x()}), shape_label({"x": _x(8, 24)})]
    assert store.blobs[0] == blob and len(store.blobs) == 2  # the earlier process's blob kept as it was


def test_another_torch_or_architecture_is_another_key(
    stored: tuple[Path, TinyNet, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, module, _ = stored
    backend = get_backend("torch-compile", device="cpu", cache_dir=cache)
    key = backend.engine_key(_source(module), module)
    assert backend.engine_key(_source(TinyNet()), TinyNet()) == key  # weights are not in the key
    assert backend.engine_key(_source(TinyNet(8)), TinyNet(8)) != key
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert backend.engine_key(_source(module), module) != key
    spy = LoadSpy(monkeypatch)
    assert not get_backend("torch-compile", device="cpu", cache_dir=cache).artifacts(_source(module)).loaded
    assert spy.blobs == []  # another torch's artifacts are never loaded
    other_mode = get_backend("torch-compile", device="cpu", cache_dir=cache, mode="max-autotune")
    monkeypatch.undo()
    assert other_mode.engine_key(_source(module), module) != key


def test_corrupt_entry_is_compiled_afresh(
    stored: tuple[Path, TinyNet, bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    cache, module, blob = stored
    copy = tmp_path / "engines"
    shutil.copytree(cache, copy)
    entry = next(copy.glob("compile-tiny-*.bin"))
    entry.write_bytes(blob[: len(blob) // 2])  # truncated, e.g. a full disk
    torch._dynamo.reset()
    backend = get_backend("torch-compile", device="cpu", cache_dir=copy)
    with caplog.at_level(logging.WARNING):
        model = backend.compile(_source(module))
    assert "corrupt" in caplog.text and not backend.artifacts(_source(module)).loaded
    with torch.no_grad():
        torch.testing.assert_close(model(x=_x())["y"], module(_x())[0], rtol=1e-4, atol=1e-5)
    assert get_backend("torch-compile", device="cpu", cache_dir=copy).artifacts(_source(module)).loaded  # stored again


def test_persist_off_neither_loads_nor_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = LoadSpy(monkeypatch)
    module = TinyNet().eval()
    model = get_backend("torch-compile", device="cpu", cache_dir=tmp_path, persist=False).compile(_source(module))
    with torch.no_grad():
        model(x=_x())
    assert spy.blobs == [] and not list(tmp_path.glob("*"))


def test_parse_sizes() -> None:
    from sv_engine.export.runtime import parse_sizes

    assert parse_sizes("512x512, 512X896") == ((512, 512), (512, 896))
    with pytest.raises(SvEngineError, match="multiples of 64"):
        parse_sizes("512x900")


def test_build_again_is_a_no_op(stored: tuple[Path, TinyNet, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """`sv-engine build --backend torch-compile` with the sizes stored compiles nothing (the CLI runs
    this through export.runtime.build_engines for the UNet+ControlNet specs)."""
    from sv_engine.export.runtime import _compile_sizes
    from sv_engine.export.spec import ShapeRange

    class Spec:  # the two things _compile_sizes asks of an export spec
        shapes = ShapeRange(height=(8, 16, 32), width=(8, 16, 32), multiple=8, latent_factor=1)

        @staticmethod
        def sample_inputs(which: str, device: torch.device, h: int, w: int) -> dict[str, torch.Tensor]:
            return {"x": _x(h, w)}

    cache, module, _ = stored
    backend = get_backend("torch-compile", device="cpu", cache_dir=cache)

    def no_compile(source: ModelSource):  # noqa: ANN202
        raise AssertionError("stored sizes must not be compiled again")

    monkeypatch.setattr(backend, "compile", no_compile)
    already, entry = _compile_sizes(backend, Spec(), _source(module), ((16, 16),), torch.device("cpu"))
    assert already and entry["bytes"] == next(cache.glob("compile-tiny-*.bin")).stat().st_size
    with pytest.raises(AssertionError, match="must not be compiled"):
        _compile_sizes(backend, Spec(), _source(module), ((16, 16), (8, 8)), torch.device("cpu"))
