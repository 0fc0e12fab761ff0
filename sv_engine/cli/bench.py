"""``sv-engine bench``: per-stage and end-to-end latency on every backend (table + JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sv_engine.cli.app import app
from sv_engine.cli.options import Device


@app.command("bench")
def bench(
    stages: Annotated[
        str,
        typer.Option(
            "--stages", help="all, or a comma list of stages/groups (unet, vae, aggregation, kernels, models)."
        ),
    ] = "all",
    backends: Annotated[
        str,
        typer.Option(
            "--backends",
            help="Comma list of torch, torch-cuda-graph, torch-compile, ort, trt (unavailable ones are recorded as skipped).",
        ),
    ] = "torch,torch-cuda-graph,torch-compile,ort,trt",
    e2e: Annotated[
        bool,
        typer.Option("--e2e", help="Also time a whole edit: warm (second edit in-process) and cold (a fresh process)."),
    ] = False,
    no_cold: Annotated[bool, typer.Option("--no-cold", help="With --e2e: skip the cold subprocess edit.")] = False,
    e2e_backend: Annotated[
        str,
        typer.Option(
            "--e2e-backend",
            help="UNet+ControlNet backend of the e2e edit: torch, torch-cuda-graph, torch-compile, ort or trt.",
        ),
    ] = "torch",
    e2e_steps: Annotated[int, typer.Option("--e2e-steps", help="DDIM steps of the e2e edit.")] = 20,
    e2e_data: Annotated[
        Path | None,
        typer.Option(
            "--e2e-data", help="Data folder for the e2e edit (default: synthesised, or the demo clip with --tiny)."
        ),
    ] = None,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile",
            help="With --e2e: profile one more warm edit (GPU busy time, kernels by category, top kernels).",
        ),
    ] = False,
    frames: Annotated[int | None, typer.Option("--frames", help="Clip frames (default 70; --tiny 4).")] = None,
    size: Annotated[
        str | None, typer.Option("--size", help="Clip WIDTHxHEIGHT (default 768x432; --tiny 64x48).")
    ] = None,
    tiny: Annotated[
        bool, typer.Option("--tiny", help="Tiny sizes, and tiny random models unless --weights (CPU smoke test).")
    ] = False,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            help="Benchmark these models (diffusers folder layout, see README: weight formats) instead of random ones.",
        ),
    ] = None,
    repeat: Annotated[
        int | None, typer.Option("--repeat", help="Timed repeats per implementation (default 20 GPU / 3 CPU).")
    ] = None,
    warmup: Annotated[
        int | None, typer.Option("--warmup", help="Untimed warm-up calls (default 3 GPU / 1 CPU).")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the JSON result here.")] = None,
    save_result: Annotated[
        bool, typer.Option("--save-result", help="Also write benchmarks/results/<gpu>-<date>-<commit>.json.")
    ] = False,
    time_budget: Annotated[
        float | None,
        typer.Option("--time-budget", help="Skip the remaining stages once this many seconds have passed."),
    ] = None,
    skip_slow_reference: Annotated[
        bool, typer.Option("--skip-slow-reference", help="Skip the ~20 s scipy griddata splat reference.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights and inputs.")] = 0,
    device: Device = "auto",
) -> None:
    """Benchmark every pipeline stage on every backend (speed-ups vs StableVideo's way) and optionally a whole edit."""
    from sv_engine.benchmarks.bench import BenchOptions, print_report, run_bench

    result = run_bench(
        BenchOptions(
            stages=stages,
            backends=backends,
            e2e=e2e,
            e2e_cold=not no_cold,
            e2e_backend=e2e_backend,
            e2e_steps=e2e_steps,
            e2e_data=e2e_data,
            profile=profile,
            frames=frames,
            size=size,
            tiny=tiny,
            weights=weights,
            repeat=repeat,
            warmup=warmup,
            device=device,
            json_path=json_path,
            save_result=save_result,
            time_budget=time_budget,
            skip_slow_reference=skip_slow_reference,
            seed=seed,
        )
    )
    print_report(result)
    if json_path:
        typer.echo(f"wrote {json_path}")
    if result.get("saved_to"):
        typer.echo(f"wrote {result['saved_to']}")
