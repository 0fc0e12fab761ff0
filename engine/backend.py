"""One backend interface for every runtime (eager torch, torch.compile, ONNX Runtime, TensorRT).

The engine layer is a leaf: it takes a :class:`ModelSource` (an ONNX file and/or a torch module
plus the I/O contract) and returns a :class:`CompiledModel` — a callable that takes and returns
torch tensors **on the device** (no host round trips inside the denoising loop)::

    backend = get_backend("ort", device="cuda")
    unet = backend.compile(sources["unet_controlnet_canny"])
    out = unet(sample=x, timestep=t, encoder_hidden_states=e, controlnet_cond=c, control_scale=s)
    noise = out["noise_pred"]

It never imports ``sv_engine.stablevideo`` or ``sv_engine.export``; the exporter writes the
manifest JSON that :func:`load_manifest` reads back into :class:`ModelSource` objects.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import operator
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from sv_engine.engine.engine_cache import EngineCache

from sv_engine.device import resolve_device
from sv_engine.errors import SvEngineError
from sv_engine.paths import cache_root

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]
#: (min, opt, max) shapes of one input.
ProfileShapes = tuple[Shape, Shape, Shape]

MANIFEST_NAME = "manifest.json"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float16"`` -> ``torch.float16`` (torch dtypes pass through)."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise SvEngineError(f"Unknown tensor dtype {name!r}.", f"Use one of {sorted(_DTYPES)}.") from None


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise SvEngineError(f"Unsupported tensor dtype {dtype}.", f"Use one of {sorted(_DTYPES)}.")


# --------------------------------------------------------------------------------------------------
# Symbolic output shapes ("B", "(h+1)//2", 320 ...) evaluated safely
# --------------------------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def eval_dim(expr: int | str, symbols: dict[str, int]) -> int:
    """Evaluates one dimension: an int, a symbol name or ``+ - * //`` arithmetic over symbols."""
    if isinstance(expr, int):
        return expr

    def _eval(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return _eval(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in symbols:
                raise KeyError(node.id)
            return symbols[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](_eval(node.left), _eval(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -_eval(node.operand)
        raise ValueError(f"unsupported dimension expression {expr!r}")

    return _eval(ast.parse(str(expr), mode="eval"))


# --------------------------------------------------------------------------------------------------
# What a backend compiles
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSource:
    """The I/O contract of one model plus where to get it (ONNX file and/or torch module).

    Attributes:
        name: model name (``"unet_controlnet_canny"``, ``"vae_decoder"`` ...).
        input_names / output_names: graph I/O, in order (a torch ``module`` takes the inputs
            positionally in this order and returns a tuple in ``output_names`` order).
        onnx_path: the ONNX file (ORT / TensorRT backends).
        module: the torch module (torch / torch.compile backends).
        input_shapes: symbolic input shapes, e.g. ``{"sample": ["B", 4, "h", "w"]}``.
        output_shapes: symbolic output shapes over the same symbols (``"(h+1)//2"`` allowed).
        input_dtypes / output_dtypes: dtype names (``"float16"``, ``"int32"`` ...).
        profiles: ``{input: (min, opt, max)}`` shapes the engine must serve.
        precision: ``"fp32"`` or ``"fp16"`` (what the graph was exported in).
        sha256: hash of the ONNX file (+ external data) if known (engine cache key).
        external_data: external-data file names next to ``onnx_path`` (part of the hash).
        attention: how the ONNX graph expresses attention: ``"onnx"`` (standard operators, every
            runtime) or ``"ort"`` (ONNX Runtime's fused ``com.microsoft.MultiHeadAttention``).
    """

    name: str
    input_names: list[str]
    output_names: list[str]
    onnx_path: Path | None = None
    module: torch.nn.Module | None = None
    input_shapes: dict[str, list[int | str]] = dataclasses.field(default_factory=dict)
    output_shapes: dict[str, list[int | str]] = dataclasses.field(default_factory=dict)
    input_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)
    output_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)
    profiles: dict[str, ProfileShapes] = dataclasses.field(default_factory=dict)
    precision: str = "fp32"
    sha256: str | None = None
    external_data: list[str] = dataclasses.field(default_factory=list)
    attention: str = "onnx"

    def bind_symbols(self, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
        """Symbol values (``B``, ``h`` ...) read off the actual input shapes."""
        symbols: dict[str, int] = {}
        for name, dims in self.input_shapes.items():
            if name not in inputs:
                continue
            for dim, size in zip(dims, inputs[name].shape, strict=False):
                if isinstance(dim, str) and dim.isidentifier():
                    symbols.setdefault(dim, int(size))
        return symbols

    def resolve_output_shapes(self, inputs: dict[str, torch.Tensor]) -> dict[str, Shape] | None:
        """Concrete output shapes for these inputs, or ``None`` when not derivable from the contract."""
        if not self.output_shapes or any(n not in self.output_shapes for n in self.output_names):
            return None
        symbols = self.bind_symbols(inputs)
        try:
            return {n: tuple(eval_dim(d, symbols) for d in self.output_shapes[n]) for n in self.output_names}
        except (KeyError, ValueError):
            return None

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        """Raises :class:`SvEngineError` for missing/unknown inputs or shapes outside the profile."""
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise SvEngineError(
                f"Model {self.name!r} got inputs {sorted(inputs)}; missing {missing}, unexpected {extra}.",
                f"Pass exactly {self.input_names} as keyword tensors.",
            )
        for name, (lo, _opt, hi) in self.profiles.items():
            shape = tuple(inputs[name].shape)
            if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=False)):
                raise SvEngineError(
                    f"Input {name!r} of {self.name!r} has shape {shape}, outside the engine profile "
                    f"min {tuple(lo)} .. max {tuple(hi)}.",
                    "Re-export with a profile that covers this shape (`sv-engine export` profile options) "
                    "and rebuild the engine, or resize the clip to a supported size.",
                )

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.onnx_path.name if self.onnx_path else None,
            "inputs": [
                {
                    "name": n,
                    "dtype": self.input_dtypes.get(n),
                    "shape": self.input_shapes.get(n),
                    "profile": [list(s) for s in self.profiles[n]] if n in self.profiles else None,
                }
                for n in self.input_names
            ],
            "outputs": [
                {"name": n, "dtype": self.output_dtypes.get(n), "shape": self.output_shapes.get(n)}
                for n in self.output_names
            ],
            "precision": self.precision,
            "sha256": self.sha256,
            "external_data": list(self.external_data),
            "attention": self.attention,
        }

    @classmethod
    def from_manifest(cls, entry: dict[str, Any], directory: Path) -> ModelSource:
        inputs, outputs = entry["inputs"], entry["outputs"]
        return cls(
            name=entry["name"],
            input_names=[i["name"] for i in inputs],
            output_names=[o["name"] for o in outputs],
            onnx_path=Path(directory) / entry["file"] if entry.get("file") else None,
            input_shapes={i["name"]: i["shape"] for i in inputs if i.get("shape") is not None},
            output_shapes={o["name"]: o["shape"] for o in outputs if o.get("shape") is not None},
            input_dtypes={i["name"]: i["dtype"] for i in inputs if i.get("dtype")},
            output_dtypes={o["name"]: o["dtype"] for o in outputs if o.get("dtype")},
            profiles={i["name"]: tuple(tuple(s) for s in i["profile"]) for i in inputs if i.get("profile")},
            precision=entry.get("precision", "fp32"),
            sha256=entry.get("sha256"),
            external_data=list(entry.get("external_data") or []),
            attention=entry.get("attention", "onnx"),  # manifests before the field had only this form
        )


def load_manifest(directory: str | Path) -> dict[str, ModelSource]:
    """Reads ``<directory>/manifest.json`` (written by ``sv-engine export``) -> ``{name: ModelSource}``."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise SvEngineError(
            f"No export manifest at {path}.",
            "Run `sv-engine export --out DIR` first and pass that DIR.",
        )
    try:
        data = json.loads(path.read_text())
        return {e["name"]: ModelSource.from_manifest(e, directory) for e in data["models"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise SvEngineError(
            f"The export manifest {path} is unreadable ({exc}).",
            "Re-run `sv-engine export --force` into that directory.",
        ) from exc


# --------------------------------------------------------------------------------------------------
# The callable and the backend
# --------------------------------------------------------------------------------------------------


class CompiledModel(ABC):
    """A compiled model/session: ``model(**inputs) -> {output name: tensor}`` on the backend's device.

    Inputs are validated (names, profile) and float inputs are cast to the dtype the graph expects
    (so an fp16 engine accepts fp32 tensors); outputs keep the engine's dtype.

    ``thread_safe``: whether two threads may call the model at once, each on its own CUDA stream
    (the pipeline overlaps the background edit with the keyframe loop only then). Engines with
    captured CUDA graphs, a fixed execution stream or one execution context set it to False.
    """

    thread_safe: bool = True

    def __init__(self, source: ModelSource, device: torch.device) -> None:
        self.source = source
        self.device = device

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def input_names(self) -> list[str]:
        return list(self.source.input_names)

    @property
    def output_names(self) -> list[str]:
        return list(self.source.output_names)

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(self._checked_inputs(inputs))

    def prepare(self, **inputs: torch.Tensor) -> None:
        """Gets ready for calls with the shapes and dtypes of ``inputs`` ahead of the first (their values
        are not used): engines with per-shape work (CUDA-graph captures) start it now, on a helper thread,
        and the first such call waits for it if it is not done. Default: nothing to do."""
        self._get_ready(self._checked_inputs(inputs))

    def _get_ready(self, inputs: dict[str, torch.Tensor]) -> None:
        return None

    def _checked_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs`` checked against the source, cast to its input dtypes, on the device, contiguous."""
        self.source.check_inputs(inputs)
        prepared = {}
        for name in self.source.input_names:
            t = inputs[name]
            if not isinstance(t, torch.Tensor):
                raise SvEngineError(
                    f"Input {name!r} of {self.name!r} is a {type(t).__name__}, not a torch tensor.",
                    "Pass torch tensors (on the backend's device).",
                )
            want = self.source.input_dtypes.get(name)
            if want is not None:
                wdt = torch_dtype(want)
                if t.dtype != wdt:
                    t = t.to(wdt)
            if t.device != self.device:
                t = t.to(self.device)
            prepared[name] = t.contiguous()
        return prepared

    @abstractmethod
    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement _run()")


class Backend(ABC):
    """A runtime that turns a :class:`ModelSource` into a :class:`CompiledModel`.

    Subclasses set :attr:`name` (the registry's canonical name), :attr:`pip_package` (named in
    not-installed errors) and implement :meth:`availability` and :meth:`compile`; their options class,
    aliases and defaults live in :mod:`sv_engine.engine.registry`.
    """

    name: ClassVar[str] = ""
    pip_package: ClassVar[str] = ""
    #: Which source field the backend needs: ``"onnx"`` or ``"module"``.
    needs: ClassVar[str] = "onnx"
    #: The attention form of the ONNX graphs to export for this backend (``ModelSource.attention``).
    onnx_attention: str = "onnx"

    def __init__(
        self, device: str | torch.device | None = None, cache_dir: str | Path | None = None, options: Any = None
    ) -> None:
        from sv_engine.engine.registry import available_backends, make_options

        self.device = resolve_device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        #: The backend's typed options (:mod:`sv_engine.engine.registry`), defaults when not given.
        self.options = make_options(self.name, options)
        ok, reason = type(self).availability(self.device)
        if not ok:
            raise SvEngineError(
                f"Backend {self.name!r} is not usable here: {reason}.",
                f"Install it (`pip install {self.pip_package}`) or pick another backend "
                f"(available: {available_backends(self.device)}).",
            )

    def engine_cache(self, folder: str, suffix: str = ".engine") -> EngineCache:
        """The cache of the engines this backend builds: in ``cache_dir``, which defaults to the project
        cache's ``folder`` when the caller gave none; ``suffix``: the engine files' (loaders may insist)."""
        if self.cache_dir is None:
            self.cache_dir = cache_root() / folder
        return EngineCache(self.cache_dir, suffix=suffix)

    @classmethod
    @abstractmethod
    def availability(cls, device: torch.device | None = None) -> tuple[bool, str]:
        """``(True, "")`` when usable on ``device``, else ``(False, reason)``."""
        raise NotImplementedError(f"{cls.__name__} must implement availability()")

    @abstractmethod
    def compile(self, source: ModelSource) -> CompiledModel:
        """Builds/loads the model for this backend (may use the cache directory)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compile()")

    # shared checks -------------------------------------------------------------------------------

    def _require_onnx(self, source: ModelSource) -> Path:
        if source.onnx_path is None or not Path(source.onnx_path).is_file():
            raise SvEngineError(
                f"The ONNX file for {source.name!r} is missing ({source.onnx_path}).",
                "Run `sv-engine export --out DIR` (it writes the ONNX files and manifest.json) and point "
                "the backend at that DIR.",
            )
        return Path(source.onnx_path)

    def _require_module(self, source: ModelSource) -> torch.nn.Module:
        if source.module is None:
            raise SvEngineError(
                f"Backend {self.name!r} needs the torch module of {source.name!r}.",
                "Build the ModelSource from the export spec (spec.model_source()).",
            )
        return source.module

    @staticmethod
    def check_graph_io(source: ModelSource, input_names: Sequence[str], output_names: Sequence[str]) -> None:
        """Raises when a graph's I/O names are not the contract's (e.g. the ONNX of another model)."""
        if list(input_names) != list(source.input_names) or not set(source.output_names) <= set(output_names):
            raise SvEngineError(
                f"The graph at {source.onnx_path} does not match model {source.name!r}: it has inputs "
                f"{list(input_names)} / outputs {list(output_names)}, expected {source.input_names} / "
                f"{source.output_names}.",
                "Point to the ONNX exported for this model (see manifest.json), or re-export it.",
            )
