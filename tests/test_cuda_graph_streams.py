"""CudaGraphModel keeps graphs per CUDA stream (engine/torch_backend.py), checked on the CPU against a
stand-in for the CUDA runtime whose "replay" re-runs the module on the static buffers, as a graph does.
The real graphs are tested on the GPU (tests/test_engine_gpu.py)."""

from __future__ import annotations

import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from sv_engine.engine import torch_backend
from sv_engine.engine.backend import ModelSource
from sv_engine.engine.torch_backend import CudaGraphModel


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    state = SimpleNamespace(stream=1, captures=[], pools=[], threads=[], fail_next=False)

    def capture(step, device, warmup_calls, pool):
        if state.fail_next:
            state.fail_next = False
            raise RuntimeError("capture failed")
        state.captures.append((state.stream, pool))
        state.threads.append(threading.current_thread().name)
        out = step()
        return out, lambda: out.copy_(step())  # a replay writes the static outputs from the static inputs

    def pool_handle():
        state.pools.append(object())
        return state.pools[-1]

    monkeypatch.setattr(torch_backend, "capture_cuda_graph", capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", pool_handle)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=state.stream))
    return state


def _model() -> CudaGraphModel:
    source = ModelSource(name="double", input_names=["x"], output_names=["y"], input_shapes={"x": ["N"]})
    return CudaGraphModel(source, torch.device("cpu"), Double())


def test_each_stream_has_its_own_graphs_and_pool(fake_cuda: SimpleNamespace) -> None:
    model = _model()
    assert model.thread_safe
    x = torch.arange(4.0)
    assert torch.equal(model._run({"x": x})["y"], x * 2)
    assert torch.equal(model._run({"x": x + 1})["y"], (x + 1) * 2), "a replay uses the new inputs"
    assert len(fake_cuda.captures) == 1
    fake_cuda.stream = 2  # the background's side stream
    assert torch.equal(model._run({"x": x + 2})["y"], (x + 2) * 2)
    assert len(fake_cuda.captures) == 2 and fake_cuda.captures[0][1] is not fake_cuda.captures[1][1]
    fake_cuda.stream = 1
    assert torch.equal(model._run({"x": x + 3})["y"], (x + 3) * 2)
    assert len(fake_cuda.captures) == 2, "the first stream's graph is replayed again, not captured"


def test_a_stream_beyond_the_kept_ones_drops_the_oldest(fake_cuda: SimpleNamespace) -> None:
    model = _model()
    x = torch.ones(3)
    for stream in range(1, CudaGraphModel.MAX_STREAMS + 2):
        fake_cuda.stream = stream
        model._run({"x": x})
    assert len(model._per_stream) == CudaGraphModel.MAX_STREAMS and 1 not in model._per_stream


def test_a_dropped_model_is_freed_without_the_cycle_collector(fake_cuda: SimpleNamespace) -> None:
    """Graphs pin GBs of pool memory on a GPU: they must go when the model goes, by reference counting.
    A cycle (model -> graphs -> capture -> model) would wait for a collection, and a collection never
    comes for objects gc_paused's freeze took in meanwhile (sv_engine/gc_pause.py): the engine bench saw
    the peak grow by a pipeline's weights with every variant built in one process."""
    model = _model()
    model._run({"x": torch.arange(4.0)})
    fake_cuda.stream = 2
    model._run({"x": torch.arange(4.0)})
    gone = weakref.ref(model)
    module = weakref.ref(model._module)
    gc.disable()
    try:
        del model
        assert gone() is None and module() is None, "a reference cycle keeps the CUDA-graph model alive"
    finally:
        gc.enable()


def test_a_shape_prepared_ahead_is_captured_on_the_helper_thread_for_the_callers_stream(
    fake_cuda: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = ThreadPoolExecutor(1, thread_name_prefix="ahead")
    monkeypatch.setattr(torch_backend, "capture_ahead_executor", lambda: helper)
    model = _model()
    model.prepare(x=torch.zeros(6))  # the values are not used: zeros, as ControlledDenoiser.prepare's
    model.prepare(x=torch.zeros(6))  # once per shape
    x = torch.arange(6.0)
    assert torch.equal(model._run({"x": x})["y"], x * 2)
    assert fake_cuda.threads == ["ahead_0"], "captured once, on the helper thread"
    fake_cuda.stream = 2  # another stream's calls get their own graphs, not the prepared one
    assert torch.equal(model._run({"x": x})["y"], x * 2) and len(fake_cuda.captures) == 2
    fake_cuda.stream = 1
    assert torch.equal(model._run({"x": torch.arange(3.0)})["y"], torch.arange(3.0) * 2)
    assert fake_cuda.threads[1:] == [threading.current_thread().name] * 2, "unprepared: on first use"
    assert fake_cuda.captures[0][1] is fake_cuda.captures[2][1], "the prepared graph is in the stream's pool"


def test_a_failed_capture_ahead_is_redone_on_first_use(fake_cuda: SimpleNamespace, monkeypatch) -> None:
    helper = ThreadPoolExecutor(1)
    monkeypatch.setattr(torch_backend, "capture_ahead_executor", lambda: helper)
    model = _model()
    fake_cuda.fail_next = True
    model.prepare(x=torch.zeros(5))
    x = torch.arange(5.0)
    assert torch.equal(model._run({"x": x})["y"], x * 2)
    assert fake_cuda.threads == [threading.current_thread().name]
