"""Eager PyTorch backend: runs the export spec's torch module as is (the reference path)."""

from __future__ import annotations

import torch

from sv_engine.engine.backend import Backend, CompiledModel, ModelSource


class TorchModel(CompiledModel):
    def __init__(self, source: ModelSource, device: torch.device, fn) -> None:
        super().__init__(source, device)
        self._fn = fn

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outs = self._fn(*[inputs[n] for n in self.source.input_names])
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        return dict(zip(self.source.output_names, outs))


def _module_dtype(module: torch.nn.Module) -> torch.dtype | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


class TorchBackend(Backend):
    """Eager torch; the module is moved to the backend device (its dtype is kept)."""

    name = "torch"
    pip_package = "torch"
    needs = "module"
    speed_rank = (30, 10)

    @classmethod
    def availability(cls, device=None):
        return True, ""

    def _prepare(self, source: ModelSource) -> torch.nn.Module:
        module = self._require_module(source).to(self.device).eval()
        return module

    def compile(self, source: ModelSource) -> CompiledModel:
        return TorchModel(source, self.device, self._prepare(source))
