"""Option types shared by several commands (one definition each)."""

from pathlib import Path
from typing import Annotated

import typer

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
