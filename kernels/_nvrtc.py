"""Shared NVRTC plumbing: compile CUDA C++ at run time, load it once per device, launch on torch's stream.

Three pieces, used by every op module:

* :func:`compile_cubin` turns a ``.cu`` source into a cubin for one ``sm_XX`` target. It needs no
  GPU, so CI compiles every kernel for sm_80 and sm_90 on a CPU machine. :meth:`KernelSource.compile`
  keeps the cubins on disk (``<cache>/kernels``, keyed by the source, its headers, the options, the
  target and NVRTC's version): a new process's three kernels took 0.56 s of NVRTC and 0.015 s from
  the kept cubins (2-core CPU, benchmarks/results/kernel-cubin-cache-cpu-2core-*.json).
* :func:`get_function` loads the cubin for a device (cached per device, source and options) and
  returns a kernel handle.
* :func:`launch` calls ``cuLaunchKernel`` on ``torch.cuda.current_stream()`` with typed arguments
  (tensors' ``data_ptr()`` for pointers).

We emit cubin rather than PTX: PTX from a newer NVRTC than the driver can be refused by the
driver's JIT, while a cubin for the exact ``sm_XX`` loads on any driver of the same major release.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from sv_engine.atomic_write import atomic_write_bytes
from sv_engine.errors import SvEngineError
from sv_engine.paths import cache_root

log = logging.getLogger(__name__)

# Options every kernel is built with; op modules may add more (e.g. --fmad=false where exact
# agreement with an unfused torch reference matters).
BASE_OPTIONS: tuple[str, ...] = ("-std=c++17",)


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SvEngineError(
            f"NVRTC is not available ({exc}).",
            "pip install 'cuda-python>=12.4' 'nvidia-cuda-nvrtc>=13,<14', or use backend='torch'.",
        ) from exc
    return nvrtc


def _check_nvrtc(result, call: str) -> None:
    nvrtc = _nvrtc()
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise SvEngineError(f"NVRTC call {call} failed: {result}.", "Check the NVRTC installation.")


def _check_cu(result, call: str) -> None:
    from cuda.bindings import driver

    if result != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(result)
        raise SvEngineError(
            f"CUDA driver call {call} failed: {name.decode() if name else result}.",
            "Check that the GPU, driver and torch agree (nvidia-smi, torch.cuda.is_available()); "
            "use backend='torch' to run the reference implementation instead.",
        )


def read_source(filename: str) -> str:
    """The text of a ``.cu`` file shipped in this package (``kernels/<filename>``)."""
    return resources.files(__package__).joinpath(filename).read_text()


@functools.cache
def compile_cubin(
    source: str,
    name: str,
    arch: str,
    options: tuple[str, ...] = (),
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Compile CUDA C++ ``source`` for ``arch`` (e.g. ``"sm_90"``) and return the cubin bytes.

    ``name`` is the file name shown in diagnostics; ``headers`` are ``(include name, text)`` pairs
    that ``#include "name"`` resolves to. Raises :class:`SvEngineError` carrying the full NVRTC log
    when compilation fails. Cached per argument tuple for the process.
    """
    nvrtc = _nvrtc()
    err, prog = nvrtc.nvrtcCreateProgram(
        source.encode(),
        name.encode(),
        len(headers),
        [text.encode() for _, text in headers],
        [include.encode() for include, _ in headers],
    )
    _check_nvrtc(err, "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in (*BASE_OPTIONS, f"--gpu-architecture={arch}", *options)]
        (compile_err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        err, log_size = nvrtc.nvrtcGetProgramLogSize(prog)
        _check_nvrtc(err, "nvrtcGetProgramLogSize")
        # NVRTC writes into these buffers: they must be fresh mutable objects. (`b" " * 1` is CPython's
        # cached one-byte object; an empty log (size 1) written into it corrupts b" " process-wide.)
        log_buf = bytearray(log_size)
        _check_nvrtc(nvrtc.nvrtcGetProgramLog(prog, log_buf)[0], "nvrtcGetProgramLog")
        build_log = bytes(log_buf).rstrip(b"\x00 ").decode(errors="replace")
        if compile_err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise SvEngineError(
                f"NVRTC could not compile {name} for {arch} ({compile_err}). Log:\n{build_log}",
                "This is a bug in the kernel source or an NVRTC too old for this GPU; "
                "use backend='torch' meanwhile and report the log.",
            )
        if build_log:
            log.debug("NVRTC log for %s (%s):\n%s", name, arch, build_log)
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        _check_nvrtc(err, "nvrtcGetCUBINSize")
        cubin = bytearray(size)
        _check_nvrtc(nvrtc.nvrtcGetCUBIN(prog, cubin)[0], "nvrtcGetCUBIN")
        return bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


ELF_MAGIC = b"\x7fELF"


@functools.cache
def nvrtc_version() -> str:
    nvrtc = _nvrtc()
    err, major, minor = nvrtc.nvrtcVersion()
    _check_nvrtc(err, "nvrtcVersion")
    return f"{major}.{minor}"


def cubin_cache_dir() -> Path:
    return cache_root() / "kernels"


def device_arch(device: torch.device) -> str:
    """The NVRTC target for ``device``, e.g. ``"sm_90"`` for an H100."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


@functools.cache
def _primary_context(device_index: int):
    """torch's context of ``device_index`` (the device's primary context), retained once."""
    from cuda.bindings import driver

    torch.cuda.init()
    _check_cu(driver.cuInit(0)[0], "cuInit")  # idempotent; torch's runtime has normally done it
    err, dev = driver.cuDeviceGet(device_index)
    _check_cu(err, "cuDeviceGet")
    err, ctx = driver.cuDevicePrimaryCtxRetain(dev)
    _check_cu(err, "cuDevicePrimaryCtxRetain")
    return ctx


def _ensure_context(device_index: int) -> None:
    """Make the primary context of ``device_index`` current on this thread (torch may not have yet)."""
    from cuda.bindings import driver

    ctx = _primary_context(device_index)
    err, current = driver.cuCtxGetCurrent()
    _check_cu(err, "cuCtxGetCurrent")
    if int(current) != int(ctx):
        _check_cu(driver.cuCtxSetCurrent(ctx)[0], "cuCtxSetCurrent")


@functools.cache
def _load_module(device_index: int, source: KernelSource):
    from cuda.bindings import driver

    arch = device_arch(torch.device("cuda", device_index))
    _ensure_context(device_index)
    err, module = driver.cuModuleLoadData(source.compile(arch))
    if err != driver.CUresult.CUDA_SUCCESS:  # a kept cubin the driver refuses (e.g. truncated): made again
        log.warning("the kept cubin of %s did not load (%s); compiling it again", source.filename, err)
        err, module = driver.cuModuleLoadData(source.compile(arch, refresh=True))
    _check_cu(err, f"cuModuleLoadData({source.filename})")
    log.info("loaded %s for %s on cuda:%d", source.filename, arch, device_index)
    return module


@functools.cache
def _get_function_cached(device_index: int, source: KernelSource, kernel: str):
    from cuda.bindings import driver

    module = _load_module(device_index, source)
    err, func = driver.cuModuleGetFunction(module, kernel.encode())
    _check_cu(err, f"cuModuleGetFunction({kernel})")
    return func


@dataclass(frozen=True)
class KernelSource:
    """One ``.cu`` file of this package and the extra NVRTC options it is always built with."""

    filename: str
    options: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()  # package files the source #includes, e.g. "sample.cuh"
    #: Kernels :meth:`load` also looks up: a first lookup while another thread captures a CUDA graph
    #: is a driver call inside the capture's window, so graph-captured ops resolve theirs up front.
    kernels: tuple[str, ...] = ()

    @functools.cached_property
    def text(self) -> str:
        return read_source(self.filename)

    @functools.cached_property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return tuple((name, read_source(name)) for name in self.includes)

    def cubin_path(self, arch: str) -> Path:
        """Where the cubin for ``arch`` is kept: named by everything that makes it."""
        digest = hashlib.sha256()
        for part in (self.text, *(f"{n}\0{t}" for n, t in self.headers), *BASE_OPTIONS, *self.options, arch):
            digest.update(part.encode() + b"\0")
        digest.update(f"nvrtc {nvrtc_version()}".encode())
        return cubin_cache_dir() / f"{Path(self.filename).stem}-{arch}-{digest.hexdigest()[:20]}.cubin"

    def compile(self, arch: str, refresh: bool = False) -> bytes:
        """Cubin for ``arch``, from the disk cache when it has it (a file that is not a cubin, or with
        ``refresh`` any file, is compiled again and replaced); used by the CI compile test and by
        :meth:`function`."""
        path = self.cubin_path(arch)
        if not refresh and path.is_file():
            cubin = path.read_bytes()
            if cubin[:4] == ELF_MAGIC:
                return cubin
            log.warning("%s is not a cubin; compiling %s again", path, self.filename)
        cubin = compile_cubin(self.text, self.filename, arch, self.options, self.headers)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, cubin)
        except OSError as err:  # a read-only cache: the kernel still runs, compiled per process
            log.warning("cannot keep the %s cubin in %s (%s)", self.filename, path.parent, err)
        return cubin

    def load(self, device: torch.device) -> None:
        """The module loaded on ``device`` (compiled on first use) before any of its kernels is called."""
        _load_module(_device_index(device), self)
        for kernel in self.kernels:
            self.function(device, kernel)

    def function(self, device: torch.device, kernel: str):
        """The ``extern "C"`` kernel ``kernel`` loaded on ``device`` (compiled on first use)."""
        return _get_function_cached(_device_index(device), self, kernel)


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    """A kernel pointer argument: ``t.data_ptr()``, or NULL for ``None``."""
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def launch(
    func,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: list,
    device: torch.device,
    shared_bytes: int = 0,
) -> None:
    """Launch ``func`` on ``torch.cuda.current_stream(device)``.

    ``args`` are ctypes values of the kernel's parameter types, in its order (``ctypes.c_int(n)``,
    :func:`ptr` for a tensor, a ``ctypes.Structure`` for a struct passed by value); the driver
    copies each one from the address we pass. ``shared_bytes`` of dynamic shared memory (more than
    48 KB is allowed per function first, once).
    """
    from cuda.bindings import driver

    index = device.index if device.index is not None else torch.cuda.current_device()
    _ensure_context(index)
    if shared_bytes > 48 * 1024:
        _allow_shared(func, shared_bytes)
    params = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
    stream = driver.CUstream(torch.cuda.current_stream(device).cuda_stream)
    (err,) = driver.cuLaunchKernel(func, *grid, *block, shared_bytes, stream, ctypes.addressof(params), 0)
    _check_cu(err, "cuLaunchKernel")


_SHARED_ALLOWED: dict[int, int] = {}


def _allow_shared(func, shared_bytes: int) -> None:
    """Raises ``func``'s dynamic shared memory limit to ``shared_bytes`` (the default cap is 48 KB)."""
    from cuda.bindings import driver

    key = int(func)
    if _SHARED_ALLOWED.get(key, 0) >= shared_bytes:
        return
    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    _check_cu(driver.cuFuncSetAttribute(func, attr, shared_bytes)[0], "cuFuncSetAttribute")
    _SHARED_ALLOWED[key] = shared_bytes
