"""Option types shared by several commands (one definition each)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # imported lazily below: --help stays free of torch
    from sv_engine.export.compose import RuntimeConfig

DataDir = Annotated[
    Path,
    typer.Argument(
        metavar="DATA_DIR", help="StableVideo data folder: config.json, checkpoint, frames in <name>/<name>/."
    ),
]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N (default: cuda if available).")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
CudaGraphs = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs",
        help="torch on a GPU: replay the UNet+ControlNet steps from CUDA graphs "
        "(default there: on; --no-cuda-graphs runs them eagerly).",
    ),
]
EditBackend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="torch, torch-compile, aoti, ort or trt for the heavy models "
        "(auto: the fastest that passed its parity probe on a GPU, torch on a CPU).",
    ),
]

# The model source and runtime flags of the commands that edit (edit, serve, batch): one RuntimeConfig.
Weights = Annotated[Path | None, typer.Option("--weights", help="Model weights folder (see README: weight formats).")]
Tiny = Annotated[bool, typer.Option("--tiny", help="Tiny random-weight models (testing without weights).")]
RandomFull = Annotated[
    bool, typer.Option("--random-full", help="Full-size random-weight models (latency and throughput tests).")
]
Precision = Annotated[str, typer.Option("--precision", help="fp32 or fp16 (GPU).")]

# The warm workers of the commands that run them (serve, batch).
Workers = Annotated[
    int | None, typer.Option("--workers", min=1, help="Warm workers (default: one per GPU, one on CPU).")
]
MaxRetries = Annotated[int, typer.Option("--max-retries", min=0, help="Resubmissions of a job whose worker died.")]
RayAddress = Annotated[
    str, typer.Option("--ray-address", help="'local' starts Ray here; 'auto' or an address joins a running cluster.")
]


def runtime_config(
    *,
    weights: Path | None,
    tiny: bool,
    precision: str,
    backend: str,
    cuda_graphs: bool | None,
    random_full: bool = False,
    device: str = "auto",
) -> RuntimeConfig:
    """The :class:`~sv_engine.export.compose.RuntimeConfig` the flags above choose (not yet checked)."""
    from sv_engine.export.compose import RuntimeConfig

    return RuntimeConfig(
        tiny=tiny,
        weights=str(weights) if weights is not None else None,
        random_full=random_full,
        precision=precision,
        device=device,
        backend=backend,
        cuda_graphs=cuda_graphs,
    )
