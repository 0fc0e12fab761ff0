"""``sv-engine batch``: many edits from a YAML file across every GPU, resumable."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from sv_engine.cli.app import app
from sv_engine.cli.extras import require_extra
from sv_engine.cli.options import CudaGraphs, EditBackend

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
    ray_address: Annotated[
        str,
        typer.Option("--ray-address", help="'local' starts Ray here; 'auto' or an address joins a running cluster."),
    ] = "local",
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Model weights folder (see README: weight formats).")
    ] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Tiny random-weight models (testing without weights).")] = False,
    random_full: Annotated[
        bool, typer.Option("--random-full", help="Full-size random-weight models (throughput tests).")
    ] = False,
    precision: Annotated[str, typer.Option(help="fp32 or fp16 (GPU).")] = "fp32",
    backend: EditBackend = "auto",
    cuda_graphs: CudaGraphs = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Warm workers (default: one per GPU, one on CPU).")
    ] = None,
    max_retries: Annotated[
        int, typer.Option("--max-retries", min=0, help="Resubmissions of a job whose worker died.")
    ] = 2,
) -> None:
    """Run many edits on warm workers (one Ray actor per GPU); jobs already done in OUT/results.jsonl are skipped.

    Exit code 0 when every job is done, 2 when a job is invalid (its reason on stderr, nothing run for it),
    1 when a job failed while running."""
    require_extra("serve")
    from sv_engine.export.compose import RuntimeConfig
    from sv_engine.service.batch import run_batch

    model = RuntimeConfig(
        tiny=tiny,
        weights=str(weights) if weights else None,
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
