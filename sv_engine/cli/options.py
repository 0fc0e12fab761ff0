"""Option types shared by several commands (one definition each)."""

from pathlib import Path
from typing import Annotated

import typer

DataDir = Annotated[Path, typer.Argument(help="StableVideo data folder: config.json, checkpoint, frames in <name>/<name>/.")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N (default: cuda if available).")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
