"""AOTInductor backend: ahead-of-time compiled engines that persist like TensorRT's.

``torch.export`` (dynamic height and width over the model's profile, ``Dim`` ranges) ->
``torch._inductor.aoti_compile_and_package`` -> one ``.pt2`` package per model architecture in the
engine cache, loaded by a later process in seconds instead of compiling for minutes.

The weights stay outside the package (``aot_inductor.package_constants_in_so=False``): at load time
the package is pointed at the pipeline's own GPU tensors (``load_constants(..., user_managed=True)``,
pytorch/pytorch#142246, #141997, #155078). So

* the package holds kernels only (12.6 MB for the UNet+ControlNet against 2.45 GB with its weights),
* no weight is held twice on the GPU, and
* the UNet+canny and UNet+depth steps, being one architecture, share one package: the engine key is
  the architecture's fingerprint (module classes, their source code, parameter names, shapes and
  dtypes), the profile, the precision, the GPU and the torch version; weight values are not in it.

Before a package opens, the process's libstdc++ is made global (:func:`share_libstdcxx`): without it
every package, CPU or CUDA, crashed with SIGSEGV in its constructor on the H200 image, whose compiler
links libstdc++ into the wrapper statically. A package's first load still opens it in a child process
(:func:`probe_load`, recorded in its cache entry), so a loader that crashes gives the edit (or the
server) an error naming the fix instead of killing it.

Options: :class:`~sv_engine.engine.registry.AotiOptions` (CUDA-graph replay, dynamic or static
shapes, the multiples the dynamic sizes keep).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import inspect
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sv_engine.engine.backend import Backend, CompiledModel, ModelSource, eval_dim, torch_dtype
from sv_engine.engine.engine_cache import RuntimeCannotLoad, engine_key
from sv_engine.engine.registry import AotiOptions
from sv_engine.engine.torch_backend import CudaGraphModel

from sv_engine.errors import SvEngineError

logger = logging.getLogger(__name__)

#: Inductor settings of a build: the weights stay outside the package (see the module docstring); the
#: C++ wrapper only launches kernels (replayed from CUDA graphs by default), so it is compiled at -O0,
#: the C++ compile of the UNet+ControlNet wrapper being a large part of the build.
BUILD_CONFIGS = {"aot_inductor.package_constants_in_so": False, "aot_inductor.compile_wrapper_opt_level": "O0"}

#: Bumped when the way packages are built changes (so old cache entries are not taken for new ones).
PACKAGE_FORMAT = 2


@functools.lru_cache(maxsize=256)
def _source_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def _code_of(obj: Any) -> str:
    try:
        return _source_digest(inspect.getsourcefile(obj) or "")
    except TypeError:  # built-in
        return "builtin"


#: Inductor writes 1-D tensors of at most this many elements into the generated code as literals
#: (``can_inline_constant``): those few values are compiled in, not loaded with the weights.
INLINED_NUMEL = 8


def _inlined(t: torch.Tensor) -> bool:
    return t.dim() == 1 and t.numel() <= INLINED_NUMEL


def architecture_fingerprint(module: torch.nn.Module) -> str:
    """What an engine compiled with the weights outside depends on: every submodule's class and the
    source file it is defined in (forwards replaced per instance too), and every parameter's and
    buffer's name, shape and dtype. Weight values are not part of it, except those of the tiny
    tensors inductor compiles in (:data:`INLINED_NUMEL`)."""
    digest = hashlib.sha256()
    for name, sub in module.named_modules():
        cls = type(sub)
        digest.update(f"{name}:{cls.__module__}.{cls.__qualname__}:{_code_of(cls)}".encode())
        forward = sub.__dict__.get("forward")
        if forward is not None:
            digest.update(f"forward:{_code_of(getattr(forward, '__func__', forward))}".encode())
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if _inlined(t):
            digest.update(t.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _symbol_ranges(source: ModelSource) -> dict[str, tuple[int, int, int]]:
    """``{symbol: (min, opt, max)}`` read off the profile where the symbol is a whole dimension."""
    ranges: dict[str, tuple[int, int, int]] = {}
    for name, dims in source.input_shapes.items():
        if name not in source.profiles:
            continue
        lo, opt, hi = source.profiles[name]
        for i, dim in enumerate(dims):
            if isinstance(dim, str) and dim.isidentifier():
                ranges.setdefault(dim, (lo[i], opt[i], hi[i]))
    return ranges


def served_profile(source: ModelSource, ranges: dict[str, tuple[int, int, int]]) -> dict:
    """The profile the package serves: ``source.profiles`` with every symbol's range replaced by ``ranges``."""
    profiles = {}
    for name, dims in source.input_shapes.items():
        points = []
        for k in range(3):
            symbols = {s: r[k] for s, r in ranges.items()}
            points.append(tuple(eval_dim(d, symbols) for d in dims))
        profiles[name] = tuple(points)
    return profiles


@functools.lru_cache(maxsize=1)
def share_libstdcxx() -> str | None:
    """Puts the process's libstdc++ in the global symbol scope before a package's wrapper is opened;
    returns its path (``None`` where there is none to share, as off Linux).

    A toolchain that links libstdc++ statically into the wrapper ``.so`` (the H200 image's
    ``/opt/gcc`` g++: the wrapper names no libstdc++) leaves the wrapper's calls split between its own
    copy and the process's, unless the process's copy is global: there, ``std::regex`` in the
    wrapper's ``parse_device_str`` crashed with SIGSEGV in every package's constructor, CPU and CUDA
    alike, and loaded with ``LD_PRELOAD`` of the system libstdc++ (benchmarks/aoti_load_probe.py).
    Python opens torch's libraries locally; dlopen with ``RTLD_NOLOAD | RTLD_GLOBAL`` promotes the
    copy they brought to the global scope without loading another."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
        except OSError as exc:
            logger.debug("libstdc++ %s not shared: %s", path, exc)
            continue
        return path
    return None


#: What the load probe runs in a child process: the loader's constructor, where a package whose wrapper
#: does not fit the process crashes (SIGSEGV on the H200 image before :func:`share_libstdcxx`).
PROBE_SOURCE = (
    "import sys, torch; from sv_engine.engine.aoti_backend import share_libstdcxx; share_libstdcxx(); "
    "torch._C._aoti.AOTIModelPackageLoader(sys.argv[1], 'model', False, 1, -1)"
)
PROBE_TIMEOUT_S = 300.0


def probe_load(path: Path) -> None:
    """Opens the package in a child process, so that a torch whose package loader crashes fails the
    edit with a message naming the fix instead of killing the process (and the server it runs in)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE_SOURCE, str(path)], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        how = f"no answer in {PROBE_TIMEOUT_S:.0f} s"
    else:
        if proc.returncode == 0:
            return
        if proc.returncode < 0:
            how = f"killed by {signal.Signals(-proc.returncode).name}"
        else:
            how = f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['no message'])[-1]}"
    raise RuntimeCannotLoad(
        f"torch {torch.__version__} cannot open AOTInductor packages here: its package loader failed "
        f"({how}) on {path.name}, which is kept.",
        "use $backend torch (CUDA graphs on a GPU) or torch-compile, or a torch build whose AOTInductor "
        "loader works on this machine.",
        mentions=("backend",),
    )


class PackageRunner:
    """A loaded package, called with the model's flat input tensors (the models take and return
    tensors only), through torch's C++ package loader itself: ``torch._inductor.aoti_load_package``
    wraps the same loader but imports torch._dynamo and inductor first, about a second of a cold start."""

    def __init__(self, path: Path, single_threaded: bool = False) -> None:
        """``single_threaded``: the container runs without its per-run CUDA event and lock, as a CUDA-graph
        capture needs (its event query between runs is a call a capture refuses); one caller at a time."""
        share_libstdcxx()
        # model name, run single-threaded, runners, device index (-1: the current device), as aoti_load_package
        self._loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", single_threaded, 1, -1)

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        return self._loader.boxed_run(list(inputs))  # boxed: the loader may free the list it is given

    def get_constant_fqns(self) -> list[str]:
        return self._loader.get_constant_fqns()

    def load_constants(self, constants: dict[str, torch.Tensor], check_full_update: bool, user_managed: bool) -> None:
        try:  # (map, use the inactive buffer, check full update, user managed[, allow h2d copy since torch 2.12])
            self._loader.load_constants(constants, False, check_full_update, user_managed)
        except TypeError:
            self._loader.load_constants(constants, False, check_full_update, user_managed, False)


class AotiModel(CompiledModel):
    """A loaded AOTInductor package running on the module's live weights (optionally from CUDA graphs)."""

    def __init__(
        self,
        source: ModelSource,
        device: torch.device,
        runner: Any,
        multiples: dict[str, int],
        cuda_graph: bool,
        module: torch.nn.Module,
    ) -> None:
        super().__init__(source, device)
        self._runner = runner
        self._module = module  # keeps the user-managed weights alive as long as the package uses them
        self._multiples = multiples
        self._graphs = CudaGraphModel(source, device, runner) if cuda_graph else None
        self.thread_safe = not cuda_graph

    def _check_multiples(self, inputs: dict[str, torch.Tensor]) -> None:
        symbols = self.source.bind_symbols(inputs)
        bad = {s: v for s, v in symbols.items() if v % self._multiples.get(s, 1)}
        if bad:
            raise SvEngineError(
                f"{self.name!r}: sizes {bad} are not multiples of {self._multiples} (the compiled engine's profile).",
                "use an image resolution and clip size in multiples of 64 px (the UNet's latent multiple of 8).",
            )

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._check_multiples(inputs)
        if self._graphs is not None:
            return self._graphs._run(inputs)
        with torch.inference_mode():
            outs = self._runner(*[inputs[n] for n in self.source.input_names])
        outs = (outs,) if isinstance(outs, torch.Tensor) else outs
        return dict(zip(self.source.output_names, outs, strict=True))


class AotiBackend(Backend):
    """Builds (once per architecture, profile, precision, GPU and torch version) and loads AOTInductor
    packages from the engine cache (default ``<cache>/engines``)."""

    name = "aoti"
    pip_package = "torch"
    needs = "module"
    options: AotiOptions

    @classmethod
    def availability(cls, device: torch.device | None = None) -> tuple[bool, str]:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            return False, "no CUDA GPU"
        # the loader, not torch._inductor: importing that here would cost every cold start about a second
        if not hasattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader"):
            return False, "this torch has no AOTInductor package loader (torch._C._aoti)"
        if not (shutil.which("c++") or shutil.which("g++")):
            return False, "AOTInductor needs a C++ compiler (c++ / g++) on PATH"
        return True, ""

    def __init__(
        self, device: str | torch.device | None = None, cache_dir: str | Path | None = None, options: Any = None
    ) -> None:
        super().__init__(device=device, cache_dir=cache_dir, options=options)
        self.cache = self.engine_cache("engines", suffix=".pt2")
        self.last_entry: dict[str, Any] = {}

    # ---- the key ---------------------------------------------------------------------------------

    def _ranges(self, source: ModelSource) -> dict[str, tuple[int, int, int]]:
        """The symbols the package is dynamic in; the batch stays at its opt value (classifier-free
        guidance always runs 2 images), as do symbols that are not sizes of the profile."""
        ranges = _symbol_ranges(source)
        dynamic = self.options.dynamic
        return {s: (r if dynamic and s != "B" and r[0] < r[2] else (r[1], r[1], r[1])) for s, r in ranges.items()}

    def _multiples(self, source: ModelSource) -> dict[str, int]:
        ranges = self._ranges(source)
        return {s: int(n) for s, n in self.options.multiples.items() if s in ranges}

    def engine_key(self, source: ModelSource, module: torch.nn.Module) -> str:
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return engine_key(
            architecture_fingerprint(module),
            served_profile(source, self._ranges(source)),
            source.precision,
            gpu,
            f"torch-{torch.__version__}",
            extra={"backend": "aoti", "format": PACKAGE_FORMAT, "multiples": self._multiples(source)},
        )

    @staticmethod
    def entry_name(source: ModelSource) -> str:
        """The cache entry's name: models of one architecture (UNet+canny, UNet+depth) share it."""
        return f"aoti-{source.name.removesuffix('_canny').removesuffix('_depth')}"

    def is_built(self, source: ModelSource) -> bool:
        """Whether a valid package for ``source`` is in the cache (``sv-engine build`` is then a no-op)."""
        return self.cache.valid_file(self.entry_name(source), self.engine_key(source, self._require_module(source)))

    # ---- build and load --------------------------------------------------------------------------

    def _example_inputs(self, source: ModelSource, ranges: dict[str, tuple[int, int, int]]) -> tuple:
        gen = torch.Generator().manual_seed(0)
        args = []
        for name in source.input_names:
            shape = tuple(eval_dim(d, {s: r[1] for s, r in ranges.items()}) for d in source.input_shapes[name])
            dtype = torch_dtype(source.input_dtypes.get(name, "float32"))
            t = torch.rand(shape, generator=gen) if dtype.is_floating_point else torch.zeros(shape)
            args.append(t.to(dtype).to(self.device))
        return tuple(args)

    def _dynamic_shapes(self, source: ModelSource, ranges: dict[str, tuple[int, int, int]]) -> dict:
        from torch.export import Dim

        multiples = self._multiples(source)
        dims = {}
        for s, (lo, _opt, hi) in ranges.items():
            if lo == hi:
                continue
            n = multiples.get(s, 1)
            base = Dim(f"_{s}", min=-(-lo // n), max=hi // n)
            dims[s] = base * n if n > 1 else base
        spec: dict[str, dict[int, Any] | None] = {}
        for name in source.input_names:
            axes = {}
            for i, d in enumerate(source.input_shapes[name]):
                if not isinstance(d, str):
                    continue
                sym, _, factor = d.partition("*")
                if sym in dims and (not factor or factor.isdigit()):
                    axes[i] = dims[sym] * int(factor) if factor else dims[sym]
            spec[name] = axes or None
        return spec

    def _build(self, source: ModelSource, module: torch.nn.Module, out: Path) -> dict[str, Any]:
        import torch._inductor  # only a build compiles: loading needs none of it

        ranges = self._ranges(source)
        args = self._example_inputs(source, ranges)
        t0 = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            program = torch.export.export(
                module, args, dynamic_shapes=self._dynamic_shapes(source, ranges), strict=False
            )
        export_s = time.perf_counter() - t0
        torch._inductor.aoti_compile_and_package(program, package_path=str(out), inductor_configs=BUILD_CONFIGS)
        compile_s = time.perf_counter() - t0 - export_s
        logger.info("AOTInductor %s: export %.1f s, compile %.1f s", source.name, export_s, compile_s)
        return {"export_s": round(export_s, 2), "compile_s": round(compile_s, 2)}

    def _load(self, path: Path, module: torch.nn.Module, name: str, key: str) -> Any:
        if not self.cache.meta(name, key).get("opens"):  # once per package: recorded in its entry
            probe_load(path)
            self.cache.add_meta(name, key, opens=True)
        runner = PackageRunner(path, single_threaded=self._cuda_graph())
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        fqns = runner.get_constant_fqns()
        missing = [f for f in fqns if f not in tensors]
        if missing:
            raise RuntimeError(f"the package needs constants the module lacks: {missing[:5]}")
        compiled_in = [n for n, t in tensors.items() if n not in set(fqns) and not _inlined(t)]
        if compiled_in:  # their values would silently be the build's: refuse (the key does not cover them)
            raise RuntimeError(f"the package compiled in weights the key does not cover: {compiled_in[:5]}")
        runner.load_constants({f: tensors[f] for f in fqns}, check_full_update=True, user_managed=True)
        return runner

    def compile(self, source: ModelSource) -> CompiledModel:
        module = self._require_module(source).to(self.device).eval()
        ranges = self._ranges(source)
        key = self.engine_key(source, module)
        name = self.entry_name(source)
        if not self.cache.valid_file(name, key):
            logger.warning(
                "no AOTInductor engine for %s on this device/torch/profile: compiling it now (minutes); "
                "`sv-engine build --backend aoti` builds it ahead of the edit",
                source.name,
            )
        runner, entry = self.cache.get_or_build_file(
            name,
            key,
            lambda out: self._build(source, module, out),
            lambda path: self._load(path, module, name, key),
            meta={"model": source.name, "precision": source.precision, "torch": torch.__version__, "ranges": ranges},
        )
        self.last_entry = {"path": str(entry.path), "rebuilt": entry.rebuilt, **self.cache.meta(name, key)}
        served = dataclasses.replace(source, profiles=served_profile(source, ranges))
        return AotiModel(served, self.device, runner, self._multiples(source), self._cuda_graph(), module)

    def _cuda_graph(self) -> bool:
        return self.options.cuda_graphs and self.device.type == "cuda"
