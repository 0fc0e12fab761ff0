"""AOTInductor engines in the engine cache, on the CPU with a tiny conv net: build once, load in a
new backend without compiling, run on the module's own weights, refuse shapes outside the profile,
rebuild a corrupt package. (The full-size UNet+ControlNet runs on the device: benchmarks/engine_bench.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sv_engine.engine.aoti_backend import AotiBackend, architecture_fingerprint
from sv_engine.engine.backend import ModelSource
from sv_engine.engine.registry import get_backend

from sv_engine.errors import SvEngineError


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # 16 channels: inductor compiles 1-D tensors of <= 8 values into the code (biases of 4 would be)
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.down = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.up = torch.nn.Upsample(scale_factor=2.0)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor]:
        y = torch.relu(self.conv(x))
        return (self.up(self.down(y)) * scale + y,)


def _source(module: torch.nn.Module, name: str = "tiny_canny") -> ModelSource:
    return ModelSource(
        name=name,
        input_names=["x", "scale"],
        output_names=["y"],
        module=module,
        input_shapes={"x": ["B", 3, "h", "w"], "scale": [1]},
        output_shapes={"y": ["B", 16, "h", "w"]},
        input_dtypes={"x": "float32", "scale": "float32"},
        output_dtypes={"y": "float32"},
        profiles={"x": ((1, 3, 8, 8), (2, 3, 16, 16), (2, 3, 32, 32)), "scale": ((1,), (1,), (1,))},
        precision="fp32",
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyNet]:
    ok, reason = AotiBackend.availability(torch.device("cpu"))
    if not ok:
        pytest.fail(f"AOTInductor must work on the CI machine: {reason}")  # CI has g++: a skip would hide a break
    cache = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    module = TinyNet().eval()
    backend = get_backend("aoti", device="cpu", cache_dir=cache, multiples={"h": 2, "w": 2})
    backend.compile(_source(module))
    assert backend.last_entry["rebuilt"] and backend.last_entry["bytes"] > 0
    return cache, module


def _run(model, h: int, w: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return model(x=x, scale=torch.tensor([0.5]))["y"], x


def test_built_engine_loads_without_compiling_and_matches_eager(
    built: tuple[Path, TinyNet], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, module = built

    def no_compile(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a built engine must be loaded, not compiled again")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    backend = get_backend("aoti", device="cpu", cache_dir=cache, multiples={"h": 2, "w": 2})
    source = _source(module)
    assert backend.is_built(source)  # `sv-engine build` again: nothing to do
    model = backend.compile(source)
    assert not backend.last_entry["rebuilt"]
    for h, w in ((16, 16), (8, 32), (32, 24)):  # one dynamic engine serves the profile's range
        out, x = _run(model, h, w)
        with torch.no_grad():
            ref = module(x, torch.tensor([0.5]))[0]
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)  # same fp32 math, other kernels


def test_engine_runs_on_the_modules_live_weights(built: tuple[Path, TinyNet]) -> None:
    """The package holds no weights: a second module of the architecture (the depth ControlNet beside
    canny) shares the package and its outputs follow its own weights."""
    cache, _ = built
    torch.manual_seed(5)
    other = TinyNet().eval()
    backend = get_backend("aoti", device="cpu", cache_dir=cache, multiples={"h": 2, "w": 2})
    model = backend.compile(_source(other, name="tiny_depth"))
    assert not backend.last_entry["rebuilt"]
    out, x = _run(model, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(out, other(x, torch.tensor([0.5]))[0], rtol=1e-4, atol=1e-5)


def test_cuda_graphs_load_the_package_single_threaded(
    built: tuple[Path, TinyNet], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A capture refuses the threaded container's per-run CUDA event query (the H200 capture was
    invalidated): with CUDA graphs the package is opened single-threaded, and runs the same."""
    from sv_engine.engine import aoti_backend

    cache, module = built
    opened: list[bool] = []

    class Recording(aoti_backend.PackageRunner):
        def __init__(self, path: Path, single_threaded: bool = False) -> None:
            opened.append(single_threaded)
            super().__init__(path, single_threaded)

    monkeypatch.setattr(aoti_backend, "PackageRunner", Recording)
    for graphs in (False, True):
        backend = get_backend("aoti", device="cpu", cache_dir=cache, multiples={"h": 2, "w": 2})
        monkeypatch.setattr(backend, "_cuda_graph", lambda graphs=graphs: graphs)  # CUDA graphs need a GPU
        model = backend.compile(_source(module))
        assert not backend.last_entry["rebuilt"]
        runner = model._runner  # the package itself: a CUDA-graph model would replay it on a GPU only
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad(), torch.inference_mode():
            out = runner(x, torch.tensor([0.5]))[0]
            torch.testing.assert_close(out, module(x, torch.tensor([0.5]))[0], rtol=1e-4, atol=1e-5)
    assert opened == [False, True]


def test_shapes_outside_the_profile_get_a_clear_error(built: tuple[Path, TinyNet]) -> None:
    cache, module = built
    model = get_backend("aoti", device="cpu", cache_dir=cache, multiples={"h": 2, "w": 2}).compile(_source(module))
    with pytest.raises(SvEngineError, match="outside the engine profile"):
        _run(model, 64, 16)
    with pytest.raises(SvEngineError, match="multiples"):
        _run(model, 15, 16)
    with pytest.raises(SvEngineError, match="outside the engine profile"):  # batch is fixed at CFG's 2
        model(x=torch.randn(1, 3, 16, 16), scale=torch.tensor([0.5]))


def test_key_follows_architecture_not_weights() -> None:
    a, b = TinyNet(), TinyNet()
    assert architecture_fingerprint(a) == architecture_fingerprint(b)
    wider = TinyNet()
    wider.conv = torch.nn.Conv2d(3, 16, 5, padding=2)
    assert architecture_fingerprint(wider) != architecture_fingerprint(a)
    assert architecture_fingerprint(a.half()) != architecture_fingerprint(b)
    small = TinyNet()
    small.conv, small.down = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3)
    other_small = TinyNet()
    other_small.conv, other_small.down = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3)
    # 4 biases are compiled into the code as literals: their values are part of the key
    assert architecture_fingerprint(small) != architecture_fingerprint(other_small)


def test_corrupt_package_is_rebuilt(built: tuple[Path, TinyNet], tmp_path: Path) -> None:
    import shutil

    cache, module = built
    copy = tmp_path / "engines"
    shutil.copytree(cache, copy)
    package = next(copy.glob("*.pt2"))
    package.write_bytes(package.read_bytes()[: package.stat().st_size // 2])  # truncated, e.g. a full disk
    backend = get_backend("aoti", device="cpu", cache_dir=copy, multiples={"h": 2, "w": 2})
    assert not backend.is_built(_source(module))
    model = backend.compile(_source(module))
    assert backend.last_entry["rebuilt"]
    out, x = _run(model, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(out, module(x, torch.tensor([0.5]))[0], rtol=1e-4, atol=1e-5)


def _copy_without_the_open_check(cache: Path, tmp_path: Path) -> Path:
    """The built cache, copied, its entries no longer recording that their package opens."""
    import json
    import shutil

    copy = tmp_path / "engines"
    shutil.copytree(cache, copy)
    for meta_path in copy.glob("*.json"):
        entry = json.loads(meta_path.read_text())
        entry["meta"].pop("opens", None)
        meta_path.write_text(json.dumps(entry))
    return copy


def test_a_loader_that_crashes_is_a_clear_error_not_a_dead_process(
    built: tuple[Path, TinyNet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package whose wrapper does not fit the process crashes its loader (SIGSEGV on the H200 image
    before share_libstdcxx: benchmarks/results/aoti-load-*.json). The first load of a package opens it
    in a child process: such a crash becomes an error naming the fix, the package is kept and nothing
    is rebuilt."""
    from sv_engine.engine import aoti_backend
    from sv_engine.engine.engine_cache import RuntimeCannotLoad

    cache, module = built
    copy = _copy_without_the_open_check(cache, tmp_path)
    package = next(copy.glob("*.pt2"))
    monkeypatch.setattr(aoti_backend, "PROBE_SOURCE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")

    def no_rebuild(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a loader that cannot open packages must not trigger a rebuild")

    monkeypatch.setattr(AotiBackend, "_build", no_rebuild)
    backend = get_backend("aoti", device="cpu", cache_dir=copy, multiples={"h": 2, "w": 2})
    with pytest.raises(RuntimeCannotLoad, match=r"killed by SIGSEGV.*backend torch"):
        backend.compile(_source(module))
    assert package.exists() and backend.is_built(_source(module)), "the built package is kept"


def test_a_package_is_opened_in_a_child_process_once(
    built: tuple[Path, TinyNet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sv_engine.engine import aoti_backend

    cache, module = built
    copy = _copy_without_the_open_check(cache, tmp_path)
    probes = []
    real_probe = aoti_backend.probe_load
    monkeypatch.setattr(aoti_backend, "probe_load", lambda path: (probes.append(path), real_probe(path)))
    for _ in range(2):  # two processes' backends on the same cache
        model = get_backend("aoti", device="cpu", cache_dir=copy, multiples={"h": 2, "w": 2}).compile(_source(module))
    assert len(probes) == 1, "the entry records that its package opens"
    out, x = _run(model, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(out, module(x, torch.tensor([0.5]))[0], rtol=1e-4, atol=1e-5)


SHARE_CHECK = """
import ctypes, torch
from sv_engine.engine.aoti_backend import share_libstdcxx
classic = "_ZNSt6locale7classicEv"  # std::locale::classic(), defined by libstdc++ only
before = hasattr(ctypes.CDLL(None), classic)
path = share_libstdcxx()
print(before, hasattr(ctypes.CDLL(None), classic), path)
"""


def test_the_process_libstdcxx_is_made_global_before_a_package_opens() -> None:
    """Python opens torch's libraries (and the libstdc++ they bring) locally; a wrapper .so with a
    static libstdc++ then splits its calls between two copies and crashed in std::regex on the H200
    image. After share_libstdcxx the process's own copy (not a second one) is in the global scope."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SHARE_CHECK], capture_output=True, text=True, check=True)
    before, after, path = out.stdout.split()
    assert before == "False", "torch's libstdc++ starts local (else this test proves nothing)"
    assert after == "True" and "libstdc++.so" in path


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "--backend", "aoti", "somedir"], "takes no export folder"),
        (["build", "--backend", "trt"], "needs the folder `sv-engine export` wrote"),
        (["build", "--backend", "torch"], "supports --backend trt, ort, aoti or torch-compile"),
        (["build", "--backend", "aoti"], "No model weights given"),
        (["build", "--backend", "torch-compile", "somedir"], "takes no export folder"),
        (["build", "--backend", "torch-compile", "--tiny", "--shapes", "512"], "is not HEIGHTxWIDTH"),
        (["build", "--backend", "torch-compile", "--random-full", "--shapes", "500x512"], "outside the profile"),
        (["build", "--backend", "aoti", "--tiny", "--shapes", "512x512"], "--shapes is for --backend torch-compile"),
        (["build", "--backend", "torch-compile"], "No model weights given"),
    ],
)
def test_build_usage_errors_are_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, args: list[str], message: str
) -> None:
    import logging
    import sys

    from sv_engine.cli import main

    monkeypatch.setattr(sys, "argv", ["sv-engine", *args])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert message in "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
