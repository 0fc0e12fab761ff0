"""TensorRT backend (Python API): ``tensorrt`` or, where only that exists, ``tensorrt_rtx``.

Build: ONNX parser -> network -> builder config with one optimisation profile (the manifest's
min/opt/max shapes), precision, timing cache (``<cache>/timing.cache``), serialized into the
:class:`~sv_engine.engine.engine_cache.EngineCache` keyed by hash(ONNX, profile, precision, GPU name,
TensorRT version). Precision handling for the two APIs:

* ``tensorrt`` (10.x): fp32 ONNX + ``BuilderFlag.FP16`` (weakly typed) for ``precision="fp16"``;
  an ONNX exported in fp16 is parsed as a strongly typed network (``STRONGLY_TYPED`` flag).
* ``tensorrt_rtx``: networks are strongly typed and there is no FP16 builder flag — the ONNX's own
  dtypes decide, so fp16 needs an fp16 export (``sv-engine export --precision fp16``).

Run: torch device tensors bound with ``set_tensor_address``; outputs preallocated as torch
tensors from ``context.get_tensor_shape``; ``execute_async_v3`` on torch's current stream. Optional
CUDA graph (``cuda_graphs``) captured per input-shape signature with static I/O buffers. Options and
their defaults: :class:`~sv_engine.engine.registry.TrtOptions`.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from sv_engine.engine.backend import Backend, CompiledModel, ModelSource
from sv_engine.engine.cuda_graphs import CudaGraphCache, capture_cuda_graph
from sv_engine.engine.engine_cache import engine_key, file_sha256
from sv_engine.engine.registry import TrtOptions

from sv_engine.errors import SvEngineError

logger = logging.getLogger(__name__)


def import_tensorrt() -> tuple[Any, str]:
    """``(module, "tensorrt" | "tensorrt_rtx")``; raises :class:`SvEngineError` when neither imports.

    TensorRT-RTX's standalone per-CUDA wheels (``tensorrt-rtx-cu13-bindings``) install the module as
    ``tensorrt_rtx_bindings``; the ``tensorrt-rtx`` meta package as ``tensorrt_rtx``. Same API.
    """
    errors = []
    for name, flavor in (
        ("tensorrt", "tensorrt"),
        ("tensorrt_rtx", "tensorrt_rtx"),
        ("tensorrt_rtx_bindings", "tensorrt_rtx"),
    ):
        try:
            return importlib.import_module(name), flavor
        except Exception as exc:  # noqa: BLE001 - a broken install is as good as none
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise SvEngineError(
        f"Neither tensorrt nor tensorrt_rtx can be imported ({'; '.join(errors)}).",
        "pip install tensorrt (datacenter/any NVIDIA GPU) or tensorrt-rtx (RTX GPUs).",
    )


#: Compute capabilities TensorRT-RTX engines run on (it builds on others, e.g. Hopper 9.0, but refuses to run).
RTX_RUNNABLE_CAPABILITIES = {(8, 0), (8, 6), (8, 9)}


def trt_available() -> tuple[bool, str]:
    try:
        _, flavor = import_tensorrt()
    except SvEngineError as exc:
        return False, exc.what
    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    capability = torch.cuda.get_device_capability()
    if flavor == "tensorrt_rtx" and capability not in RTX_RUNNABLE_CAPABILITIES and capability[0] < 12:
        return (
            False,
            f"TensorRT-RTX engines cannot run on compute capability {capability[0]}.{capability[1]} (they build "
            "there); use ort or torch-compile, or install full tensorrt",
        )
    return True, ""


def _trt_to_torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
        "UINT8": torch.uint8,
        "INT8": torch.int8,
    }
    for key, value in table.items():
        if hasattr(trt.DataType, key) and dt == getattr(trt.DataType, key):
            return value
    raise SvEngineError(
        f"TensorRT tensor dtype {dt} has no torch equivalent.", "Export the model with float/int32 I/O."
    )


class _Logger:
    """A trt.ILogger forwarding to Python logging (created lazily per module)."""

    _instances: dict[str, Any] = {}

    @classmethod
    def get(cls, trt: Any) -> Any:
        if trt.__name__ not in cls._instances:

            class PyLogger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity, msg):  # noqa: D401 - TensorRT callback
                    if severity <= trt.ILogger.Severity.ERROR:
                        logger.error("[TRT] %s", msg)
                    elif severity == trt.ILogger.Severity.WARNING:
                        logger.warning("[TRT] %s", msg)
                    else:
                        logger.debug("[TRT] %s", msg)

            cls._instances[trt.__name__] = PyLogger()
        return cls._instances[trt.__name__]


def build_serialized_engine(
    trt: Any,
    flavor: str,
    onnx_path: Path,
    source: ModelSource,
    precision: str,
    timing_cache_path: Path | None = None,
    workspace_gb: float | None = None,
    builder_optimization_level: int | None = None,
) -> bytes:
    """Parses ``onnx_path`` and builds a serialized engine (bytes) for the source's profile."""
    trt_logger = _Logger.get(trt)
    builder = trt.Builder(trt_logger)
    flags = 0
    onnx_is_fp16 = source.precision == "fp16"
    strongly_typed = flavor == "tensorrt_rtx" or onnx_is_fp16
    if strongly_typed and flavor == "tensorrt" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SvEngineError(
            f"TensorRT could not parse {onnx_path}: {errs}",
            "Re-export the ONNX (opset 17+) with `sv-engine export --force`.",
        )
    in_names = [network.get_input(i).name for i in range(network.num_inputs)]
    out_names = [network.get_output(i).name for i in range(network.num_outputs)]
    Backend.check_graph_io(source, in_names, out_names)

    config = builder.create_builder_config()
    if workspace_gb and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if builder_optimization_level is not None and hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = builder_optimization_level
    if precision == "fp16" and not strongly_typed:
        if hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        else:  # pragma: no cover - only RTX lacks the flag and it is strongly typed above
            raise SvEngineError(
                "This TensorRT has no FP16 builder flag.", "Export with `sv-engine export --precision fp16`."
            )
    if precision == "fp16" and flavor == "tensorrt_rtx" and not onnx_is_fp16:
        logger.warning(
            "tensorrt_rtx is strongly typed: an fp32 ONNX builds an fp32 engine; `sv-engine export "
            "--precision fp16` exports for an fp16 engine"
        )

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name in source.profiles:
            lo, opt, hi = source.profiles[name]
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        elif any(d < 0 for d in network.get_input(i).shape):
            raise SvEngineError(
                f"Input {name!r} of {source.name!r} is dynamic but has no profile.",
                "Re-export so manifest.json lists min/opt/max shapes for every dynamic input.",
            )
    config.add_optimization_profile(profile)

    timing_cache = None
    if timing_cache_path is not None and hasattr(config, "create_timing_cache"):
        blob = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
        try:
            timing_cache = config.create_timing_cache(blob)
        except Exception:  # noqa: BLE001 - a corrupt timing cache is just dropped
            logger.warning("timing cache %s unreadable: starting a fresh one", timing_cache_path)
            timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(timing_cache, ignore_mismatch=False)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SvEngineError(
            f"TensorRT failed to build an engine for {source.name!r} (see the [TRT] log lines).",
            "Check the GPU memory/workspace and the ONNX; try $precision fp32.",
            mentions=("precision",),
        )
    logger.info("built %s engine for %s in %.1fs", flavor, source.name, time.perf_counter() - t0)
    if timing_cache is not None and timing_cache_path is not None:
        try:
            timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
            timing_cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        except Exception as exc:  # noqa: BLE001 - the timing cache is an optimisation only
            logger.warning("could not save the timing cache: %s", exc)
    return bytes(serialized)


class TrtModel(CompiledModel):
    thread_safe = False  # one execution context: its bound addresses/shapes are per call, not per thread

    def __init__(self, source: ModelSource, device: torch.device, trt: Any, engine: Any, cuda_graph: bool) -> None:
        super().__init__(source, device)
        self.trt = trt
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise SvEngineError(
                f"TensorRT could not create an execution context for {source.name!r}.",
                "Free GPU memory or rebuild the engine.",
            )
        self.cuda_graph = cuda_graph
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: _trt_to_torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        source.input_dtypes = {
            **source.input_dtypes,
            **{n: str(self._dtypes[n]).replace("torch.", "") for n in self._inputs},
        }
        # One live shape: a context's bound addresses and shapes are per context, not per graph.
        self._graphs = CudaGraphCache(source.name, self._capture, max_shapes=1, outputs=source.output_names)

    def _bind(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for n in self._inputs:
            t = inputs[n]
            self.context.set_input_shape(n, tuple(t.shape))
            self.context.set_tensor_address(n, t.data_ptr())
        outs = {}
        for n in self._outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise SvEngineError(
                    f"TensorRT could not infer the shape of output {n!r} of {self.name!r}.",
                    "Check the input shapes against the engine profile.",
                )
            outs[n] = torch.empty(shape, dtype=self._dtypes[n], device=self.device)
            self.context.set_tensor_address(n, outs[n].data_ptr())
        return outs

    def _execute(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise SvEngineError(
                f"TensorRT execution of {self.name!r} failed (see the [TRT] log lines).",
                "Check the input shapes/dtypes; rebuild the engine if the GPU changed.",
            )

    def _execute_on_current_stream(self) -> None:
        self._execute(torch.cuda.current_stream(self.device).cuda_stream)

    def _capture(self, static_in: dict[str, torch.Tensor]):
        static_out = self._bind(static_in)
        # One warm-up run outside the capture: TensorRT allocates and initialises lazily.
        _, replay = capture_cuda_graph(self._execute_on_current_stream, self.device, warmup_calls=1)
        return static_out, replay

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.cuda_graph:
            return self._graphs({n: inputs[n] for n in self._inputs})
        outs = self._bind(inputs)
        self._execute_on_current_stream()
        return {n: outs[n] for n in self.source.output_names}


def check_parsable(source: ModelSource) -> None:
    """Refuses graphs in ONNX Runtime's attention form (``com.microsoft`` operators) before the parser
    fails on them with a less helpful message."""
    if source.attention != "onnx":
        raise SvEngineError(
            f"{source.onnx_path} was exported with ONNX Runtime's fused attention operator, which TensorRT cannot "
            "parse.",
            "Export for TensorRT with `sv-engine export --attention onnx` (the default) and build from that folder.",
        )


class TrtBackend(Backend):
    """TensorRT; engines are cached in ``cache_dir`` (default ``<sv-engine cache>/trt``)."""

    name = "trt"
    pip_package = "tensorrt (or tensorrt-rtx)"
    needs = "onnx"
    options: TrtOptions

    @classmethod
    def availability(cls, device=None):
        dev = torch.device(device) if device is not None else torch.device("cuda")
        if dev.type != "cuda":
            return False, "TensorRT runs on CUDA devices only"
        return trt_available()

    def __init__(self, device=None, cache_dir=None, options: TrtOptions | None = None) -> None:
        super().__init__(device=device, cache_dir=cache_dir, options=options)
        self.trt, self.flavor = import_tensorrt()
        self.cache = self.engine_cache("trt")
        self.last_build_s: float | None = None

    def engine_key(self, source: ModelSource, precision: str) -> str:
        onnx_path = self._require_onnx(source)
        onnx_hash = source.sha256 or file_sha256([onnx_path, *[onnx_path.parent / f for f in source.external_data]])
        gpu = torch.cuda.get_device_name(self.device)
        return engine_key(
            onnx_hash,
            source.profiles,
            precision,
            gpu,
            f"{self.flavor}-{self.trt.__version__}",
            extra={"onnx_precision": source.precision, "opt_level": self.options.builder_optimization_level},
        )

    def build(self, source: ModelSource) -> tuple[Any, bool]:
        """``(deserialized engine, rebuilt?)`` from the cache, building on a miss."""
        precision = self.options.precision or source.precision
        onnx_path = self._require_onnx(source)
        check_parsable(source)
        key = self.engine_key(source, precision)
        runtime = self.trt.Runtime(_Logger.get(self.trt))

        def build() -> bytes:
            t0 = time.perf_counter()
            data = build_serialized_engine(
                self.trt,
                self.flavor,
                onnx_path,
                source,
                precision,
                timing_cache_path=self.cache_dir / f"timing-{self.flavor}.cache",
                workspace_gb=self.options.workspace_gb,
                builder_optimization_level=self.options.builder_optimization_level,
            )
            self.last_build_s = time.perf_counter() - t0
            return data

        def load(data: bytes) -> Any:
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise RuntimeError("deserialize_cuda_engine returned None")
            return engine

        engine, entry = self.cache.get_or_build(
            source.name,
            key,
            build,
            load,
            meta={
                "model": source.name,
                "precision": precision,
                "flavor": self.flavor,
                "trt_version": self.trt.__version__,
                "gpu": torch.cuda.get_device_name(self.device),
            },
        )
        self._runtime = runtime  # keep alive with the engine
        return engine, entry.rebuilt

    def compile(self, source: ModelSource) -> CompiledModel:
        engine, _ = self.build(source)
        return TrtModel(source, self.device, self.trt, engine, self.options.cuda_graphs)
