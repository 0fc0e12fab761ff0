"""Every kernel compiles through NVRTC for sm_80 and sm_90 (no GPU needed), and compile errors are clear."""

from pathlib import Path

import pytest
from requires import in_ci
from sv_engine.kernels import bias, geglu, group_norm, nla_mlp, render, splat, warp
from sv_engine.kernels._nvrtc import compile_cubin

from sv_engine.errors import SvEngineError


def _nvrtc_loads() -> bool:
    try:
        from cuda.bindings import nvrtc

        return nvrtc.nvrtcVersion()[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS
    except Exception:  # ImportError, or the NVRTC shared library is missing
        return False


# nvidia-cuda-nvrtc is a dependency: in CI (CI=true) these tests run, and fail, without it.
pytestmark = pytest.mark.skipif(
    not _nvrtc_loads() and not in_ci(), reason="NVRTC's library cannot be loaded (pip install nvidia-cuda-nvrtc)"
)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize(
    "module", [render, warp, splat, group_norm, geglu, bias, nla_mlp], ids=lambda m: m.SOURCE.filename
)
def test_kernels_compile(module, arch):
    cubin = module.SOURCE.compile(arch)
    assert cubin[:4] == b"\x7fELF"


def test_compile_error_carries_the_log():
    with pytest.raises(SvEngineError, match="broken.cu") as info:
        compile_cubin('extern "C" __global__ void k() { undeclared_name = 1; }', "broken.cu", "sm_90")
    assert "undeclared_name" in str(info.value)


def cached_space_problems(tmp_path) -> list[str]:
    """What an overwritten one-byte b" " (CPython's cached object, shared process-wide) breaks."""
    import pickle

    import torch

    problems = []
    space = bytes([32])  # the cached object itself (content read at run time, not a compiled constant)
    if space[0] != 32 or space.decode() != " ":
        problems.append(f"b' ' reads {space!r}")
    torch.save(torch.zeros(32, 3), tmp_path / "t.pt")
    if torch.load(tmp_path / "t.pt").shape != (32, 3):
        problems.append("torch.load changed a tensor's shape")
    if pickle.loads(pickle.dumps([32, 32])) != [32, 32]:
        problems.append("pickle changed 32")
    return problems


def test_compiling_leaves_python_objects_intact(tmp_path):
    """Regression: NVRTC once wrote an empty log into CPython's cached b" ", turning every 32 read
    back by pickle (tensor shapes from torch.load) into 0."""
    compile_cubin('extern "C" __global__ void k() {}', "empty_log.cu", "sm_80")
    assert cached_space_problems(tmp_path) == []


def test_the_check_sees_an_overwritten_space(tmp_path):
    """The check above fails when b" " is overwritten the way the NVRTC bug did (in a child process)."""
    import subprocess
    import sys

    script = f"""
import ctypes, pathlib, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_kernels_nvrtc import cached_space_problems
space = bytes([32])
ctypes.memmove(id(space) + bytes.__basicsize__ - 1, b"\\x00", 1)  # NVRTC's empty log, written into it
print(cached_space_problems(pathlib.Path({str(tmp_path)!r})))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "b' ' reads" in out.stdout, out.stdout + out.stderr


def test_cubins_are_kept_on_disk_and_a_bad_file_is_compiled_again(tmp_path, monkeypatch):
    """The second compile of a kernel in a new process reads the kept cubin (NVRTC is not called); a
    damaged file, another option or another target is compiled afresh."""
    from sv_engine.kernels import _nvrtc

    monkeypatch.setenv("SV_ENGINE_CACHE", str(tmp_path))
    calls = []
    real = _nvrtc.compile_cubin.__wrapped__  # the uncached function: every call compiles

    def counted(*args):
        calls.append(args[1:3])
        return real(*args)

    monkeypatch.setattr(_nvrtc, "compile_cubin", counted)
    source = warp.SOURCE
    first = source.compile("sm_90")
    path = source.cubin_path("sm_90")
    assert path.read_bytes() == first and path.parent == tmp_path / "kernels"
    assert source.compile("sm_90") == first and len(calls) == 1, "the kept cubin is read, not compiled"

    path.write_bytes(b"not a cubin")
    assert source.compile("sm_90") == first and len(calls) == 2
    assert path.read_bytes() == first, "the damaged file is replaced"
    assert source.compile("sm_90", refresh=True) == first and len(calls) == 3

    other = _nvrtc.KernelSource("warp.cu", options=("--fmad=false",), includes=("sample.cuh",))
    assert other.cubin_path("sm_90") != path and source.cubin_path("sm_80") != path
    assert len({path, other.cubin_path("sm_90"), source.cubin_path("sm_80")}) == 3


def test_precompile_keeps_every_kernel_so_a_new_process_runs_no_nvrtc(tmp_path, monkeypatch):
    """What `sv-engine build` does for the GPU it builds on: every kernel's cubin into the cache; a
    second precompile (a later process's first use) reads them all back."""
    from sv_engine.kernels import SOURCES, _nvrtc, precompile

    monkeypatch.setenv("SV_ENGINE_CACHE", str(tmp_path))
    calls = []
    real = _nvrtc.compile_cubin.__wrapped__

    def counted(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(_nvrtc, "compile_cubin", counted)
    paths = precompile("sm_90")
    names = ["bias.cu", "geglu.cu", "group_norm.cu", "nla_mlp.cu", "render.cu", "splat.cu", "warp.cu"]
    assert sorted(calls) == sorted(s.filename for s in SOURCES) == names
    assert all(p.read_bytes()[:4] == b"\x7fELF" and p.parent == tmp_path / "kernels" for p in paths)
    assert precompile("sm_90") == paths and len(calls) == 7, "kept cubins are read, not compiled again"
