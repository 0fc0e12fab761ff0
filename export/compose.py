"""The composition root: how the applications (CLI, render service, benchmarks, parity) choose an
edit's backend: ``auto`` and the CUDA-graph default on a GPU."""

from __future__ import annotations

import logging

import torch
from sv_engine.engine.registry import default_backend
from sv_engine.export.runtime import AcceleratedModels, accelerate
from sv_engine.export.spec import DEFAULT_SHAPES, ShapeRange
from sv_engine.stablevideo.models.components import SDComponents

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)


#: The tiny random models run the CPU demo at small sizes; the production profile starts at SD's 512 px.
TINY_MODEL_SHAPES = ShapeRange(height=(64, 256, 1024), width=(64, 256, 1536), multiple=64)


def check_cuda_graphs(backend: str, cuda_graphs: bool | None) -> None:
    """``--cuda-graphs`` goes with eager torch only (also checked before the service starts workers)."""
    if cuda_graphs and backend not in ("auto", "torch"):
        raise SvEngineError(
            f"--cuda-graphs is an option of the torch backend, not {backend!r}.",
            "drop --cuda-graphs (torch-compile captures its own graphs), or use --backend torch.",
        )


def accelerate_for_edit(
    components: SDComponents,
    backend: str,
    precision: str,
    device: torch.device,
    tiny: bool = False,
    cuda_graphs: bool | None = None,
) -> AcceleratedModels:
    """What ``sv-engine edit --backend B [--cuda-graphs/--no-cuda-graphs]`` and the render service's
    workers run.

    ``auto`` is the fastest backend available on a GPU (announced) and eager torch on the CPU.
    ``cuda_graphs`` (default: on for torch on a GPU) runs the registry's ``torch-cuda-graph`` choice;
    ``False`` runs it eagerly."""
    check_cuda_graphs(backend, cuda_graphs)
    if backend == "auto":
        backend = "torch" if cuda_graphs or device.type != "cuda" else default_backend(device)
        log.info("backend: %s (pass --backend to choose)", backend)
    if cuda_graphs is None:
        cuda_graphs = backend == "torch" and device.type == "cuda"
        if cuda_graphs:
            log.info(
                "torch on %s: UNet+ControlNet steps replayed from CUDA graphs (--no-cuda-graphs runs them eagerly)",
                device,
            )
    return accelerate(
        components,
        "torch-cuda-graph" if cuda_graphs else backend,
        precision,
        device,
        shapes=TINY_MODEL_SHAPES if tiny else DEFAULT_SHAPES,
    )
