"""``sv-engine batch``: many edits from a YAML file across every GPU, resumable."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from sv_engine.cli.app import app
from sv_engine.cli.extras import require_extra
from sv_engine.cli.options import (
    CudaGraphs,
    EditBackend,
    MaxRetries,
    Precision,
    RandomFull,
    RayAddress,
    Tiny,
    Weights,
    Workers,
    runtime_config,
)

log = logging.getLogger(__name__)


@app.command("batch")
def batch(
    jobs_file: Annotated[
        Path,
        typer.Argument(
            help="YAML: `defaults:` (optional) and `jobs:` (list of {name, data, fg_prompt, bg_prompt, steps, ...})."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Outputs go to OUT/<name>/; one line per finished job in OUT/results.jsonl.")
    ] = Path("sv-batch"),
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Job `data:` folders are relative to this (default: the YAML file's folder)."),
    ] = None,
    ray_address: RayAddress = "local",
    weights: Weights = None,
    tiny: Tiny = False,
    random_full: RandomFull = False,
    precision: Precision = "fp32",
    backend: EditBackend = "auto",
    cuda_graphs: CudaGraphs = None,
    workers: Workers = None,
    max_retries: MaxRetries = 2,
) -> None:
    """Run many edits on warm workers (one Ray actor per GPU); jobs already done in OUT/results.jsonl are skipped.

    Exit code 0 when every job is done, 2 when a job is invalid (its reason on stderr, nothing run for it),
    1 when a job failed while running."""
    require_extra("serve")
    from sv_engine.service.batch import run_batch

    model = runtime_config(
        weights=weights,
        tiny=tiny,
        random_full=random_full,
        precision=precision,
        backend=backend,
        cuda_graphs=cuda_graphs,
    )
    summary = run_batch(
        jobs_file,
        out,
        model=model,
        data_root=data_root,
        ray_address=ray_address,
        workers=workers,
        max_retries=max_retries,
    )
    typer.echo(json.dumps(summary.as_dict(), indent=2))
    for name, reason in summary.failures.items():
        log.error("job %s: %s", name, " ".join(reason.split()))
    if summary.invalid:
        log.error(
            "%d of %d jobs are invalid (fix them in %s and run again).", summary.invalid, summary.total, jobs_file
        )
        raise typer.Exit(2)
    if summary.failed:
        raise typer.Exit(1)
