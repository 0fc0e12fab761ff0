"""torch.compile backend (inductor).

Options and their defaults: :class:`~sv_engine.engine.registry.CompileOptions` (on CUDA
``"reduce-overhead"``, inductor + CUDA graphs where shapes are static; on CPU plain inductor, which
needs a C++ compiler: :meth:`availability` probes a one-op compile once and reports the reason when
that fails).
"""

from __future__ import annotations

import functools
import logging

import torch
from sv_engine.engine.backend import Backend, CompiledModel, ModelSource
from sv_engine.engine.registry import CompileOptions
from sv_engine.engine.torch_backend import TorchModel

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _probe_inductor(device_type: str) -> tuple[bool, str]:
    try:
        import torch._inductor  # noqa: F401

        fn = torch.compile(lambda x: torch.relu(x) * 2.0 + 1.0, backend="inductor", dynamic=False)
        x = torch.randn(8, device=device_type)
        y = fn(x)
        if not torch.allclose(y, torch.relu(x) * 2.0 + 1.0):
            return False, "inductor produced wrong results in the probe"
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any compiler/toolchain failure means "not usable"
        return (
            False,
            f"inductor cannot compile on {device_type}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
        )


class TorchCompileBackend(Backend):
    """``torch.compile(module, mode=..., dynamic=...)``."""

    name = "torch-compile"
    pip_package = "torch"
    needs = "module"
    options: CompileOptions

    @classmethod
    def availability(cls, device=None):
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            return False, "no CUDA GPU"
        return _probe_inductor(dev.type)

    def compile(self, source: ModelSource) -> CompiledModel:
        module = self._require_module(source).to(self.device).eval()
        mode = self.options.mode
        if mode is None and self.device.type == "cuda":
            mode = "reduce-overhead"
        dynamic = self.options.dynamic
        logger.info("torch.compile %s (mode=%s, dynamic=%s)", source.name, mode, dynamic)
        compiled = torch.compile(module, mode=mode, dynamic=dynamic, fullgraph=False)
        if mode == "reduce-overhead":
            # CUDA-graph outputs are overwritten by the next replay: hand out clones.
            def fn(*args):
                torch.compiler.cudagraph_mark_step_begin()
                outs = compiled(*args)
                outs = (outs,) if isinstance(outs, torch.Tensor) else outs
                return tuple(o.clone() for o in outs)

            model = TorchModel(source, self.device, fn)
            model.thread_safe = False  # CUDA-graph trees replay into shared static buffers
            return model
        return TorchModel(source, self.device, compiled)
