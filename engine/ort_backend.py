"""ONNX Runtime backend.

* CPU: ``CPUExecutionProvider``; torch CPU tensors are shared with ORT through numpy (no copies).
* CUDA: ``CUDAExecutionProvider`` with **IO binding**: inputs are bound by their torch
  ``data_ptr()``, outputs are preallocated torch tensors (shapes from the manifest's symbolic
  output shapes, or one probe run per new input-shape signature), ORT runs on torch's current
  stream (``user_compute_stream``) so nothing goes through the host.
* Optional CUDA graphs (``cuda_graphs``) for fixed shapes: inputs are copied into static buffers and
  the graph ORT captured is replayed; outputs are cloned out of the static buffers.

Options, their defaults and why: :class:`~sv_engine.engine.registry.OrtOptions`. Why the fused
attention form (:mod:`sv_engine.export.ort_attention`): ORT runs the standard form as written, every
fp32 score matrix materialised; its transformer optimizer (``optimize_model(model_type="unet")``)
fuses GroupNorm and NHWC convolutions in these graphs but not their attention (ORT 1.32), so the
export emits the fused operator itself.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch
from sv_engine.engine.backend import Backend, CompiledModel, ModelSource, torch_dtype
from sv_engine.engine.cuda_graphs import CudaGraphCache
from sv_engine.engine.registry import OrtOptions

from sv_engine.errors import SvEngineError

logger = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}
_NP_TYPES = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.bool: np.bool_,
    torch.uint8: np.uint8,
    torch.int8: np.int8,
}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise SvEngineError(
            "onnxruntime is not installed.", "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)."
        ) from exc
    return ort


class OrtModel(CompiledModel):
    def __init__(self, source: ModelSource, device: torch.device, session: Any, enable_cuda_graph: bool) -> None:
        super().__init__(source, device)
        self.session = session
        self.cuda_graph = enable_cuda_graph
        # CUDA: the session runs on the stream fixed at creation (or its own for CUDA graphs), not
        # on the calling thread's stream, so two threads on two streams would race.
        self.thread_safe = device.type != "cuda"
        self._graph_ort_inputs = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}
        self._graph_ort_outputs = {o.name: _ORT_TYPES.get(o.type) for o in session.get_outputs()}
        self._shape_cache: dict[tuple, dict[str, tuple[int, ...]]] = {}
        # ORT captures the graph itself, once per session: a second input shape is refused.
        self._graphs = CudaGraphCache(source.name, self._capture, recapture=False)

    # ---- CPU ------------------------------------------------------------------------------------
    def _run_cpu(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {n: t.detach().numpy() for n, t in inputs.items()}
        outs = self.session.run(self.source.output_names, feeds)
        names = self.source.output_names
        return {n: torch.from_numpy(np.ascontiguousarray(o)) for n, o in zip(names, outs, strict=True)}

    # ---- CUDA -----------------------------------------------------------------------------------
    def _out_dtype(self, name: str) -> torch.dtype:
        return torch_dtype(self._graph_ort_outputs.get(name) or self.source.output_dtypes.get(name, "float32"))

    def _output_shapes(self, inputs: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        key = tuple((n, tuple(t.shape)) for n, t in inputs.items())
        if key in self._shape_cache:
            return self._shape_cache[key]
        shapes = self.source.resolve_output_shapes(inputs)
        if shapes is None:
            # Probe: let ORT allocate the outputs on the device once, read their shapes.
            binding = self.session.io_binding()
            self._bind_inputs(binding, inputs)
            for n in self.source.output_names:
                binding.bind_output(n, "cuda", self.device.index or 0)
            self.session.run_with_iobinding(binding)
            outputs = binding.get_outputs()
            shapes = {n: tuple(v.shape()) for n, v in zip(self.source.output_names, outputs, strict=True)}
        self._shape_cache[key] = shapes
        return shapes

    def _bind_inputs(self, binding, inputs: dict[str, torch.Tensor]) -> None:
        for n, t in inputs.items():
            binding.bind_input(n, "cuda", self.device.index or 0, _NP_TYPES[t.dtype], list(t.shape), t.data_ptr())

    def _bind_outputs(self, binding, outs: dict[str, torch.Tensor]) -> None:
        for n, t in outs.items():
            binding.bind_output(n, "cuda", self.device.index or 0, _NP_TYPES[t.dtype], list(t.shape), t.data_ptr())

    def _alloc_outputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        shapes = self._output_shapes(inputs)
        return {
            n: torch.empty(shapes[n], dtype=self._out_dtype(n), device=self.device) for n in self.source.output_names
        }

    def _run_cuda(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.cuda_graph:
            return self._graphs(inputs)
        outs = self._alloc_outputs(inputs)
        binding = self.session.io_binding()
        self._bind_inputs(binding, inputs)
        self._bind_outputs(binding, outs)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outs

    def _capture(self, static_in: dict[str, torch.Tensor]):
        static_out = self._alloc_outputs(static_in)
        binding = self.session.io_binding()
        self._bind_inputs(binding, static_in)
        self._bind_outputs(binding, static_out)

        session, device = self.session, self.device  # not self: the cache holding replay is self's

        def replay() -> None:  # ORT captures on its first runs and replays on its own stream
            torch.cuda.current_stream(device).synchronize()
            session.run_with_iobinding(binding)

        return static_out, replay

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            return self._run_cuda(inputs)
        return self._run_cpu(inputs)


class OrtBackend(Backend):
    """ONNX Runtime: CPU EP on cpu devices, CUDA EP (IO binding) on cuda devices."""

    name = "ort"
    pip_package = "onnxruntime (CPU) / onnxruntime-gpu (CUDA)"
    needs = "onnx"
    options: OrtOptions

    @property
    def onnx_attention(self) -> str:  # type: ignore[override]
        return self.options.attention

    @classmethod
    def availability(cls, device=None):
        try:
            import onnxruntime as ort
        except ImportError:
            return False, "onnxruntime is not installed"
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return False, "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
            if not torch.cuda.is_available():
                return False, "no CUDA GPU"
        return True, ""

    def session_options(self, source: ModelSource):
        ort = _import_ort()
        so = ort.SessionOptions()
        level = self.options.graph_optimization
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[level]
        cuda = self.device.type == "cuda"
        threads = self.options.intra_op_threads
        if threads is None:
            threads = 1 if cuda else 0
        if threads:
            so.intra_op_num_threads = int(threads)
        allow_spinning = self.options.allow_spinning
        spinning = "1" if (not cuda if allow_spinning is None else allow_spinning) else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        so.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        so.log_severity_level = 3
        for dim, value in self.options.free_dimensions.items():
            so.add_free_dimension_override_by_name(dim, int(value))
        if self.options.save_optimized and self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            so.optimized_model_filepath = str(self.cache_dir / f"{source.name}.{self.device.type}.ort.onnx")
        return so

    def providers(self, source: ModelSource | None = None) -> list:
        if self.device.type != "cuda":
            return ["CPUExecutionProvider"]
        opts: dict[str, Any] = {
            "device_id": self.device.index or 0,
            "has_user_compute_stream": "1",
            "user_compute_stream": str(torch.cuda.current_stream(self.device).cuda_stream),
            "cudnn_conv_algo_search": self.options.cudnn_conv_algo_search,
            "do_copy_in_default_stream": "1",
        }
        if source is not None and source.precision == "fp32":
            opts["use_tf32"] = "0"  # fp32 means fp32: TF32 convs/matmuls would cost ~1e-3 relative
        if self.options.cuda_graphs:
            opts["enable_cuda_graph"] = "1"
            del opts["user_compute_stream"], opts["has_user_compute_stream"]  # ORT captures on its own stream
        opts.update(self.options.provider_options)
        return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]

    def compile(self, source: ModelSource) -> CompiledModel:
        ort = _import_ort()
        path = self._require_onnx(source)
        try:
            session = ort.InferenceSession(
                str(path), sess_options=self.session_options(source), providers=self.providers(source)
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            if self.options.cuda_graphs and "graph capture" in str(exc):
                raise SvEngineError(
                    f"ONNX Runtime cannot capture a CUDA graph of {source.name}: some of its nodes run on the CPU "
                    "(the shape arithmetic of symbolic dimensions).",
                    "Fix every symbolic dimension with the free_dimensions option ({ONNX dim name: value}), "
                    "or drop the cuda_graphs option.",
                ) from exc
            raise SvEngineError(
                f"ONNX Runtime could not load {path}: {exc}",
                "Re-export the model (`sv-engine export --force`) and check the file is complete.",
            ) from exc
        self.check_graph_io(source, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise SvEngineError(
                "ONNX Runtime did not enable the CUDA execution provider.",
                "Install onnxruntime-gpu matching your CUDA version.",
            )
        # The graph's own input dtypes win over the manifest (inputs are cast to them).
        source = dataclasses.replace(source)
        source.input_dtypes = {
            **source.input_dtypes,
            **{i.name: _ORT_TYPES[i.type] for i in session.get_inputs() if i.type in _ORT_TYPES},
        }
        logger.info("ORT session %s on %s (%s)", source.name, self.device, session.get_providers()[0])
        return OrtModel(source, self.device, session, self.options.cuda_graphs)
