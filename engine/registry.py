"""The backend registry: every runtime's canonical name, aliases, typed options and their defaults.

This file is the one vocabulary of backends. The CLI (``--backend``), the render service, ``sv-engine
bench`` (``--backends``) and ``sv-engine parity`` all resolve their names here::

    choice = resolve_choice("torch-cuda-graph")   # BackendChoice("torch", TorchOptions(cuda_graphs=True, ...))
    backend = get_backend(choice.backend, device="cuda", options=choice.options)

Each knob of an options class says what it trades, with the measurement behind its default (the
committed device runs under benchmarks/results/ and the README's results table hold the numbers).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sv_engine.errors import SvEngineError

if TYPE_CHECKING:  # torch is imported where a device is needed: the CLI reads names and options
    import torch
    from sv_engine.engine.backend import Backend

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Options, one typed class per backend
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TorchOptions:
    """Eager PyTorch (the reference path: the export spec's module as it is).

    Attributes:
        cuda_graphs: replay each call from a CUDA graph captured once per input shape (CUDA only).
            An edit's UNet steps are ~136 k kernel launches and an H100 profile showed the GPU busy
            only ~20 % of a warm edit while the host launched them; capture costs two warm-up calls
            per shape, not a compile. Costs one graph's static buffers per shape (all graphs share
            one memory pool) and makes the model single-threaded.
        channels_last: convolution weights in NHWC, the layout of cuDNN's fast fp16 kernels (the H100
            profile spent 0.34 s of a warm edit's 2.1 s of kernels converting NCHW to NHWC). With CUDA
            graphs a warm edit took 3.13 s against 3.72 s without it (2x H200); fp16 results move
            within the fp16 parity bar (NHWC sums in another order).
    """

    cuda_graphs: bool = False
    channels_last: bool = False


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """``torch.compile`` (inductor).

    Attributes:
        mode: torch.compile's mode; ``None`` = ``"reduce-overhead"`` on CUDA (inductor + CUDA-graph
            trees where shapes are static) and inductor's default on the CPU. Fastest warm whole
            edit measured (2.28 s vs 5.77 s eager torch, 2x H200) and fastest CFG step (10.2 ms vs
            14.6 ms for torch's CUDA graphs at 512², H200), but a new process compiles each shape
            (~86-94 s for the fused UNet+ControlNet; ~18 s with its stored artifacts, ``persist``).
        dynamic: ``False`` compiles one static graph per input shape. The automatic-dynamic recompile
            a second shape triggers (``None``) took 329 s against ~94 s per static shape on an H100,
            and one clip's keyframe crops come in two or three sizes, so static graphs compile sooner.
        persist: keep the compiled code in the engine cache (``torch.compiler`` cache artifacts) and
            load it in later processes, which then compile in ~13 s instead of ~90 s per shape
            (engine/torch_compile_backend.py); ``sv-engine build --backend torch-compile`` compiles ahead.
    """

    mode: str | None = None
    dynamic: bool | None = False
    persist: bool = True


@dataclasses.dataclass(frozen=True)
class OrtOptions:
    """ONNX Runtime: CPU execution provider on the CPU, CUDA EP with IO binding on a GPU.

    Attributes:
        cuda_graphs: ORT's own CUDA-graph capture (``enable_cuda_graph``) for one fixed input shape;
            needs every symbolic dimension fixed (``free_dimensions``: with symbolic dims ORT keeps the
            shape arithmetic on the CPU EP and refuses to capture, as the H100 showed for the
            UNet+ControlNet graphs).
        graph_optimization: ``"all"``, ``"extended"``, ``"basic"`` or ``"none"`` (ORT's levels).
        intra_op_threads: ``None`` = one thread on CUDA (the graph runs on the GPU; the CPU only
            launches kernels: a whole edit took the same time, 26.7 s vs 27.3 s on an H100, and the
            cores stay free for the other workers), ORT's default (one per core) on the CPU.
        allow_spinning: ``None`` = no busy-waiting on CUDA (five sessions per pipeline would each spin
            a pool of threads), ORT's default (spinning) on the CPU.
        cudnn_conv_algo_search: ``"HEURISTIC"``: with ``"EXHAUSTIVE"`` every change of a session's input
            shape cost ~5 s in its next run (cuDNN re-plans; only the last shape's plan is kept), and
            a clip's keyframes come in 2-3 shapes.
        attention: the ONNX attention form this backend's exports use: ``"ort"`` = ORT's fused
            ``com.microsoft.MultiHeadAttention`` (flash/memory-efficient kernels: a warm edit 4.47 s
            against 9.93 s with the standard form, 2x H200), ``"onnx"`` = standard operators (every
            fp32 score matrix materialised).
        save_optimized: write ORT's optimised model into the backend's cache directory.
        provider_options: extra CUDA execution provider options (override the above).
        free_dimensions: ``{ONNX dim name: value}``: fixes symbolic dimensions (needed by ``cuda_graphs``).
    """

    cuda_graphs: bool = False
    graph_optimization: str = "all"
    intra_op_threads: int | None = None
    allow_spinning: bool | None = None
    cudnn_conv_algo_search: str = "HEURISTIC"
    attention: str = "ort"
    save_optimized: bool = False
    provider_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    free_dimensions: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrtOptions:
    """TensorRT (tested to engine build here: TensorRT-RTX builds on Hopper but refuses to run, so it
    is never a default without a passing parity check).

    Attributes:
        precision: engine precision, ``None`` = the ONNX's own (``"fp16"`` on an fp32 ONNX sets the
            FP16 builder flag; TensorRT-RTX is strongly typed and needs an fp16 export).
        cuda_graphs: replay ``execute_async_v3`` from a CUDA graph; one live input shape at a time
            (the execution context's bound addresses are per context), recaptured on a shape change.
        workspace_gb: the builder's workspace limit (``None``: TensorRT's default, the GPU's memory).
        builder_optimization_level: TensorRT's 0-5 (``None``: its default 3); higher builds longer.
    """

    precision: str | None = None
    cuda_graphs: bool = False
    workspace_gb: float | None = None
    builder_optimization_level: int | None = None


@dataclasses.dataclass(frozen=True)
class AotiOptions:
    """AOTInductor: engines compiled ahead of time (``sv-engine build --backend aoti``), kept in the
    engine cache and loaded by later processes instead of compiled (engine/aoti_backend.py).

    Attributes:
        cuda_graphs: replay each input shape from a CUDA graph (CUDA only; the package launches its
            kernels from C++, but one by one). The package is then loaded single-threaded: the
            container's threaded run queries a CUDA event each call, which a capture refuses
            (cudaErrorStreamCaptureInvalidated). On by default: on the H200 the UNet+ControlNet step
            took 15.5 ms with graphs against 18.3 ms without at 512², the warm edit 1.97 s against
            2.22 s at the same frames (60.8 dB against eager), for 3.1 GB more peak memory
            (benchmarks/results/engines-aoti-warm-nvidia-h200-2026-12-02-9e2a057.json).
        dynamic: one package for the profile's whole height/width range (``torch.export`` ``Dim``
            ranges, as a TensorRT profile); ``False`` = one package for the profile's opt shape.
        multiples: ``{symbol: n}``: the dynamic sizes are multiples of n (the UNet's latents: 8, three
            down-samplings); sizes that are not are refused before the engine runs.
    """

    cuda_graphs: bool = True
    dynamic: bool = True
    multiples: Mapping[str, int] = dataclasses.field(default_factory=dict)


BackendOptions = TorchOptions | CompileOptions | OrtOptions | TrtOptions | AotiOptions


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BackendEntry:
    """One runtime: its canonical name, the other names it answers to, its options and implementation.

    ``speed_rank``: rank of a whole edit's latency on (cuda, cpu) for :func:`default_backend` (higher is
    faster), from the committed device runs: torch with CUDA graphs (the edit's GPU default) 3.1 s
    warm, ONNX Runtime 4.5 s; torch.compile is fastest warm (2.3 s) but compiles each shape in every
    new process (~18 s a shape from stored artifacts, ~90 s without). TensorRT ranks first, unmeasured
    (it cannot run on the lent Hopper GPUs).
    """

    name: str
    implementation: str  # "module:Class"
    options: type
    aliases: tuple[str, ...] = ()
    speed_rank: tuple[int, int] = (0, 0)


BACKENDS: dict[str, BackendEntry] = {
    entry.name: entry
    for entry in (
        BackendEntry(
            "torch", "sv_engine.engine.torch_backend:TorchBackend", TorchOptions, ("eager",), speed_rank=(30, 10)
        ),
        BackendEntry(
            "torch-compile",
            "sv_engine.engine.torch_compile_backend:TorchCompileBackend",
            CompileOptions,
            ("torch_compile", "compile"),
            speed_rank=(10, 5),
        ),
        BackendEntry("ort", "sv_engine.engine.ort_backend:OrtBackend", OrtOptions, ("onnxruntime",), (20, 20)),
        BackendEntry("trt", "sv_engine.engine.trt_backend:TrtBackend", TrtOptions, ("tensorrt",), (40, -1)),
        # Not ranked: no whole edit has been timed with it on a GPU yet.
        BackendEntry("aoti", "sv_engine.engine.aoti_backend:AotiBackend", AotiOptions, ("aotinductor",), (0, 0)),
    )
}
_ALIASES = {alias: entry.name for entry in BACKENDS.values() for alias in entry.aliases}


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """A backend with its options: what ``--backend NAME`` and a bench column stand for."""

    backend: str
    options: Any  # the backend's options class


#: Named (backend, options) choices. ``torch-cuda-graph`` is eager torch's fast path on a GPU and the
#: GPU default of ``sv-engine edit``/``serve``/``batch`` with torch: a 70-frame edit warm 3.13 s against
#: 4.68 s eager (3.72 s with graphs alone), first edit 6.6 s against 15.0 s, peak memory 6.48 GB
#: against 6.23 GB, 60.9 dB against eager (2x H200).
CHOICES: dict[str, BackendChoice] = {
    "torch-cuda-graph": BackendChoice("torch", TorchOptions(cuda_graphs=True, channels_last=True)),
}


def backend_names() -> list[str]:
    """Every name ``--backend`` accepts: each backend followed by its named choices."""
    return [n for b in BACKENDS for n in (b, *(c for c, choice in CHOICES.items() if choice.backend == b))]


def canonical_name(name: str) -> str:
    """``"torch_compile"`` / ``"compile"`` -> ``"torch-compile"``; raises for a name no backend has."""
    key = _ALIASES.get(name, name)
    if key not in BACKENDS:
        raise SvEngineError(f"Unknown backend {name!r}.", f"Use one of {', '.join(backend_names())}.")
    return key


def _coerce(value: Any, key: str, cls: type) -> Any:
    """A ``key=value`` string (bench variants, JSON) as the field's type; typed values pass through."""
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(cls)[key]
    kinds = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    if value.lower() in ("none", "") and type(None) in kinds:
        return None
    if bool in kinds:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(value)
            except ValueError:
                pass
    if str in kinds:
        return value
    raise SvEngineError(f"Option {key}={value!r} of {cls.__name__} is not a {hint}.", "Give a value of that type.")


def make_options(backend: str, base: Any = None, **changes: Any) -> Any:
    """The options of ``backend`` (default: the registry's defaults) with ``changes`` applied; unknown
    keys are refused with the ones the backend has."""
    entry = BACKENDS[canonical_name(backend)]
    options = base if base is not None else entry.options()
    if not isinstance(options, entry.options):
        raise SvEngineError(
            f"Backend {entry.name!r} takes {entry.options.__name__}, not {type(options).__name__}.",
            f"Pass {entry.options.__name__}(...) or leave the options out.",
        )
    if not changes:
        return options
    fields = {f.name for f in dataclasses.fields(entry.options)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise SvEngineError(
            f"Backend {entry.name!r} has no option {', '.join(unknown)}.",
            f"Its options are {', '.join(sorted(fields))}.",
        )
    typed = {k: _coerce(v, k, entry.options) for k, v in changes.items()}
    return dataclasses.replace(options, **typed)


def resolve_choice(name: str, **changes: Any) -> BackendChoice:
    """A backend or named choice, with option ``changes`` applied (``"torch-cuda-graph"`` ->
    torch with its preset options)."""
    if name in CHOICES:
        preset = CHOICES[name]
        return BackendChoice(preset.backend, make_options(preset.backend, preset.options, **changes))
    backend = canonical_name(name)
    return BackendChoice(backend, make_options(backend, **changes))


def parse_choice(text: str) -> BackendChoice:
    """``"ort:intra_op_threads=0:allow_spinning=1"`` -> the ORT choice with those options."""
    name, *pairs = text.split(":")
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SvEngineError(f"Backend option {pair!r} of {text!r} is not key=value.", "Write name:key=value:...")
        changes[key] = value
    return resolve_choice(name, **changes)


def backend_class(name: str) -> type[Backend]:
    module_name, cls_name = BACKENDS[canonical_name(name)].implementation.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def get_backend(name: str, device: str | torch.device | None = None, options: Any = None, **changes: Any) -> Backend:
    """The backend (or named choice) ``name`` on ``device``, with typed ``options`` (default: the
    registry's) and keyword ``changes`` to them (``get_backend("ort", "cpu", free_dimensions={...})``).
    ``cache_dir`` is passed to the backend, not an option.

    Raises :class:`SvEngineError` for an unknown name or option, or a backend whose package is not
    installed / cannot run on the device (the fix names the pip package).
    """
    cache_dir = changes.pop("cache_dir", None)
    if name in CHOICES and options is None:
        choice = resolve_choice(name, **changes)
    else:
        backend = canonical_name(name)
        choice = BackendChoice(backend, make_options(backend, options, **changes))
    return backend_class(choice.backend)(device=device, cache_dir=cache_dir, options=choice.options)


def _device(device: str | torch.device | None) -> torch.device:
    """The device whose availability is asked (not validated: "cuda" without a GPU is a fair question)."""
    import torch

    from sv_engine.device import default_device

    return torch.device(device) if device is not None else default_device()


def ranked_backends(device: str | torch.device | None = None) -> list[str]:
    """Every backend's name, the fastest whole edit on ``device``'s kind first; availability unchecked
    (checking it may import a runtime or, for torch-compile, compile a probe)."""
    col = 0 if _device(device).type == "cuda" else 1
    return sorted(BACKENDS, key=lambda n: -BACKENDS[n].speed_rank[col])


def is_available(name: str, device: str | torch.device | None = None) -> bool:
    """Whether backend ``name`` runs on ``device``; a runtime that fails to import is unavailable."""
    try:
        ok, _ = backend_class(name).availability(_device(device))
    except Exception:  # noqa: BLE001 - an optional runtime that fails to import is simply unavailable
        ok = False
    return ok


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends usable on ``device`` (default: cuda if present else cpu), fastest first."""
    return [name for name in ranked_backends(device) if is_available(name, device)]


def backend_status(device: str | torch.device | None = None) -> dict[str, str]:
    """``{name: "ok" | reason}`` for every registered backend (for `sv-engine info`)."""
    dev = _device(device)
    out = {}
    for name in BACKENDS:
        try:
            ok, reason = backend_class(name).availability(dev)
        except Exception as exc:  # noqa: BLE001
            ok, reason = False, str(exc)
        out[name] = "ok" if ok else reason
    return out


def default_backend(device: str | torch.device | None = None) -> str:
    """The fastest available backend name on ``device`` (logged)."""
    names = available_backends(device)
    choice = names[0] if names else "torch"
    logger.info("default backend: %s (available: %s)", choice, ", ".join(names))
    return choice
