"""One shape-keyed CUDA-graph cache for every backend that replays graphs (torch, TensorRT, ONNX Runtime).

A replay needs its inputs at fixed addresses: each input-shape signature gets static input buffers,
the backend's ``capture`` turns them into static outputs plus a ``replay`` callable, and every call
copies its inputs in, replays and clones the outputs out (the next replay overwrites the static
outputs, which is also why the torch graphs may share one memory pool).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future

import torch

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]
#: ``capture(static inputs) -> (static outputs, replay)``.
Capture = Callable[[Tensors], tuple[Tensors, Callable[[], None]]]


def shape_key(inputs: Tensors) -> tuple:
    return tuple((n, tuple(t.shape), t.dtype) for n, t in inputs.items())


class CudaGraphCache:
    """Static buffers and a replay per input-shape signature.

    ``max_shapes``: how many signatures stay captured (``None``: all); the oldest is dropped first.
    ``recapture=False``: a second signature is refused (ONNX Runtime captures once per session).
    ``outputs``: the output names handed out (default: every static output).
    """

    def __init__(
        self,
        name: str,
        capture: Capture,
        max_shapes: int | None = None,
        recapture: bool = True,
        outputs: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        # A backend's own method is held weakly: the backend holds this cache, and a cycle would keep a
        # dropped model's graphs and GPU memory until a collection (gc_paused's freeze may prevent one).
        self._capture = weakref.WeakMethod(capture) if inspect.ismethod(capture) else lambda: capture
        self.max_shapes = max_shapes
        self.recapture = recapture
        self.outputs = list(outputs) if outputs is not None else None
        self._entries: dict[tuple, tuple[Tensors, Tensors, Callable[[], None]]] = {}
        self._pending: dict[tuple, Future] = {}  # captures started by prepare, not yet waited for
        self._lock = threading.Lock()  # the two dicts: prepare's helper thread adds entries too

    def __len__(self) -> int:
        return len(self._entries)

    def prepare(self, inputs: Tensors, executor: Executor) -> None:
        """Captures the graph for the shapes of ``inputs`` on ``executor``'s thread, for replays on the
        calling thread's stream: a new shape's one-off (cuDNN's plans, the capture: 0.5-0.9 s for the
        UNet+ControlNet on an H200) runs beside the caller's work. The first call with those shapes waits
        for it; a capture that failed is redone there, where its error is reported."""
        key = shape_key(inputs)
        with self._lock:
            if key in self._entries or key in self._pending or (self._entries and not self.recapture):
                return
            static_in = {n: t.clone() for n, t in inputs.items()}
            device = next(iter(inputs.values())).device
            caller = torch.cuda.current_stream(device) if device.type == "cuda" else None
            self._pending[key] = executor.submit(self._capture_ahead, key, static_in, caller)

    def _capture_ahead(self, key: tuple, static_in: Tensors, caller: torch.cuda.Stream | None) -> None:
        # On the caller's GPU (the helper thread's current device may be another one), after the static
        # inputs' clones on the caller's stream, in inference mode as the callers' replays.
        with torch.cuda.device(caller.device) if caller is not None else contextlib.nullcontext():
            if caller is not None:
                torch.cuda.current_stream(caller.device).wait_stream(caller)
            with torch.inference_mode():
                static_out, replay = self._capture()(static_in)
        with self._lock:
            self._store(key, (static_in, static_out, replay))

    def _store(self, key: tuple, entry: tuple[Tensors, Tensors, Callable[[], None]]) -> None:
        if self.max_shapes is not None and len(self._entries) >= self.max_shapes:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = entry

    def _wait_for_prepared(self, key: tuple) -> None:
        with self._lock:
            pending = self._pending.pop(key, None)
        if pending is None:
            return
        try:
            pending.result()
        except Exception as exc:  # noqa: BLE001 - the call below captures again and reports its own error
            log.info("%s: the capture ahead failed (%s); capturing on first use", self.name, exc)

    def __call__(self, inputs: Tensors) -> Tensors:
        key = shape_key(inputs)
        self._wait_for_prepared(key)
        if key not in self._entries:
            if self._entries and not self.recapture:
                captured = next(iter(self._entries))
                raise SvEngineError(
                    f"{self.name!r} replays a CUDA graph captured for input shapes "
                    f"{[(n, s) for n, s, _ in captured]}; got {[(n, s) for n, s, _ in key]}.",
                    "Create one session per shape, or drop the cuda_graphs option for dynamic shapes.",
                )
            static_in = {n: t.clone() for n, t in inputs.items()}
            static_out, replay = self._capture()(static_in)
            with self._lock:
                self._store(key, (static_in, static_out, replay))
        static_in, static_out, replay = self._entries[key]
        for n, t in inputs.items():
            static_in[n].copy_(t)
        replay()
        names = self.outputs if self.outputs is not None else list(static_out)
        return {n: static_out[n].clone() for n in names}


#: One capture at a time in the process: ``torch.cuda.graph`` synchronizes the device on entry, which
#: CUDA refuses while any other stream is capturing (cudaErrorStreamCaptureUnsupported, seen on an H200
#: with two threads capturing one model on two streams).
_CAPTURE_LOCK = threading.Lock()


def capture_cuda_graph(
    step: Callable[[], object], device: torch.device, warmup_calls: int, pool: object | None = None
) -> tuple[object, Callable[[], None]]:
    """``(what step returned inside the capture, replay)``: ``step`` runs ``warmup_calls`` times on a
    side stream first (cuDNN/cuBLAS/TensorRT choose algorithms and allocate workspaces outside the
    capture), then once under capture into ``pool``. Captures are serialized (:data:`_CAPTURE_LOCK`),
    the warm-up calls are not: they are most of a new shape's one-off (cuDNN's plans), and threads
    warming up different shapes do it in parallel. The capture mode is thread-local, so another thread's
    launches meanwhile (warm-up calls, replays of the background edit beside the keyframe loop) neither
    break it nor are refused."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(warmup_calls):
            step()
    current.wait_stream(side)
    with _CAPTURE_LOCK:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            captured = step()
    return captured, graph.replay
