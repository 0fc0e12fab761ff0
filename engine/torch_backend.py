"""Eager PyTorch backend: runs the export spec's torch module as is (the reference path).

Options (:class:`~sv_engine.engine.registry.TorchOptions`, where each is explained): ``cuda_graphs``
replays each call from a CUDA graph captured once per input shape, ``channels_last`` keeps the
convolution weights in NHWC.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from sv_engine.engine.backend import Backend, CompiledModel, ModelSource
from sv_engine.engine.cuda_graphs import CudaGraphCache, capture_cuda_graph
from sv_engine.engine.registry import TorchOptions

from sv_engine.errors import SvEngineError


class TorchModel(CompiledModel):
    def __init__(self, source: ModelSource, device: torch.device, fn) -> None:
        super().__init__(source, device)
        self._fn = fn

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outs = self._fn(*[inputs[n] for n in self.source.input_names])
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        return dict(zip(self.source.output_names, outs, strict=False))


def _capture(
    module: torch.nn.Module,
    source: ModelSource,
    device: torch.device,
    warmup_calls: int,
    pool: object,
    static_in: dict[str, torch.Tensor],
):  # noqa: ANN202
    args = [static_in[n] for n in source.input_names]
    outs, replay = capture_cuda_graph(lambda: module(*args), device, warmup_calls, pool)
    outs = (outs,) if isinstance(outs, torch.Tensor) else outs
    return dict(zip(source.output_names, outs, strict=True)), replay


@functools.cache
def capture_ahead_executor() -> ThreadPoolExecutor:
    """The one helper thread that captures graphs ahead of their first use (CudaGraphCache.prepare)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="sv-capture-ahead")


class CudaGraphModel(CompiledModel):
    """The eager module replayed from one CUDA graph per input-shape signature (:class:`CudaGraphCache`)
    and CUDA stream.

    Each stream that calls the model gets its own graphs, static buffers and memory pool, so two
    threads may call it at once, each on its own stream (the background edit beside the keyframe loop
    on its side stream). Within a stream all graphs share the pool: outputs are cloned out right after
    each replay, so no graph's static outputs are needed once the next graph runs.
    """

    thread_safe = True  # per CUDA stream: see the class docstring
    #: Eager calls before a capture, where cuDNN/cuBLAS choose algorithms and allocate workspaces: one
    #: does it (a new shape's first call 0.53-0.55 s against 0.56-0.57 s with two, the replayed step the
    #: same; benchmarks/results/new-shape-*).
    WARMUP_CALLS = 1
    #: Streams whose graphs are kept (the pipeline uses two: the default one and the background's); a
    #: further stream drops the oldest one's graphs and their pool.
    MAX_STREAMS = 4

    def __init__(self, source: ModelSource, device: torch.device, module: torch.nn.Module) -> None:
        super().__init__(source, device)
        self._module = module
        self._per_stream: dict[int, CudaGraphCache] = {}
        self._lock = threading.Lock()

    def _graphs(self) -> CudaGraphCache:
        stream = torch.cuda.current_stream(self.device).cuda_stream
        with self._lock:
            graphs = self._per_stream.get(stream)
            if graphs is None:
                if len(self._per_stream) >= self.MAX_STREAMS:
                    del self._per_stream[next(iter(self._per_stream))]
                pool = torch.cuda.graph_pool_handle()
                # The capture holds the module, not self: no cycle keeps a dropped model's graphs (and
                # their GPU pool) alive until a collection that gc_paused's freeze may never allow.
                capture = functools.partial(_capture, self._module, self.source, self.device, self.WARMUP_CALLS, pool)
                graphs = CudaGraphCache(self.source.name, capture)
                self._per_stream[stream] = graphs
        return graphs

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Inference mode throughout, as TorchModel: the static buffers are inference tensors.
        with torch.inference_mode():
            return self._graphs()(inputs)

    def _get_ready(self, inputs: dict[str, torch.Tensor]) -> None:
        with torch.inference_mode():
            self._graphs().prepare(inputs, capture_ahead_executor())


class TorchBackend(Backend):
    """Eager torch; the module is moved to the backend device (its dtype is kept)."""

    name = "torch"
    pip_package = "torch"
    needs = "module"
    options: TorchOptions

    @classmethod
    def availability(cls, device=None):
        return True, ""

    def _prepare(self, source: ModelSource) -> torch.nn.Module:
        module = self._require_module(source).to(self.device).eval()
        if self.options.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def compile(self, source: ModelSource) -> CompiledModel:
        if self.options.cuda_graphs:
            if self.device.type != "cuda":
                raise SvEngineError(
                    f"CUDA graphs need a CUDA device; {source.name!r} is on {self.device}.",
                    "run on a GPU, or without CUDA graphs on the CPU.",
                )
            return CudaGraphModel(source, self.device, self._prepare(source))
        return TorchModel(source, self.device, self._prepare(source))
