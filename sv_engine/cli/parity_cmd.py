"""``sv-engine parity``: per-component error of a backend vs the PyTorch fp32 reference, and with
``--e2e`` the PSNR of one whole edit's frames against the torch fp32 edit (same seed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from sv_engine.cli.app import app

log = logging.getLogger("sv_engine.cli.parity")


@app.command("parity")
def parity_command(
    backend: str = typer.Option("ort", "--backend", help="torch, torch-compile, ort or trt (or an alias)."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny random models (CPU)."),
    random_full: bool = typer.Option(False, "--random", "--random-full", help="Full-size random-weight models (GPU)."),
    weights: Path | None = typer.Option(None, "--weights", help="Directory with the real model weights."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 engines/graphs."),
    models: str = typer.Option("all", "--models", help="Comma list of models (default: all)."),
    device: str | None = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)."),
    onnx_dir: Path | None = typer.Option(None, "--onnx-dir", help="Keep/reuse the ONNX here (default: temp)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the full report as JSON here."),
    seed: int = typer.Option(0, "--seed"),
    e2e: bool = typer.Option(
        False,
        "--e2e",
        help="Also edit a clip with the backend and with torch fp32 (same seed) and compare the frames (PSNR).",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="--e2e: the clip's data folder (default: the bundled demo clip)."
    ),
    steps: int = typer.Option(20, "--steps", help="--e2e: DDIM steps of both edits."),
) -> None:
    """Max abs / max relative error and cosine similarity per model output (and --e2e: the edit's PSNR);
    exit 1 if any fails."""
    from rich.console import Console
    from rich.table import Table

    from sv_engine.benchmarks.e2e import edit_params
    from sv_engine.cli.export_cmd import load_bundle, shape_range
    from sv_engine.export.parity_run import run_edit_parity, run_parity, summary_rows
    from sv_engine.export.registry import parse_model_list
    from sv_engine.stablevideo.data import read_config
    from sv_engine.stablevideo.demo import demo_data_dir

    names = parse_model_list(models)
    if not (tiny or random_full or weights):
        tiny = True  # the only source that needs nothing
    if e2e:  # the cheap inputs are checked before any model is loaded; the bench's e2e edit parameters
        params = edit_params(steps, 0.8, tiny, seed)
        params.validate()
        data = Path(data).expanduser().resolve() if data else demo_data_dir()
        read_config(data)
    components, nla, _ = load_bundle(tiny, weights, random_full, seed)
    report = run_parity(
        components,
        nla,
        backend=backend,
        precision=precision,
        models=None if models == "all" else names,
        shapes=shape_range(tiny),
        device=device,
        onnx_dir=onnx_dir,
    )
    if e2e:
        # Its own ONNX folder: the edit exports only the models it accelerates.
        report["edit"] = run_edit_parity(
            components,
            data,
            params,
            backend=backend,
            precision=precision,
            shapes=shape_range(tiny),
            device=device,
            onnx_dir=onnx_dir / "edit" if onnx_dir else None,
        )
        report["ok"] = report["ok"] and report["edit"]["ok"]
    table = Table(title=f"parity {backend} {precision} vs torch fp32 ({report['device']})")
    for col in ("model", "output", "max abs", "max rel", "cosine", "status"):
        table.add_column(col)
    for row in summary_rows(report):
        table.add_row(*row)
    if e2e:
        edit = report["edit"]
        table.add_row(
            "whole edit",
            f"{edit['frames'][0]} frames",
            "-",
            "-",
            f"PSNR {edit['psnr_db']:.1f} dB",
            "ok" if edit["ok"] else f"FAIL < {edit['min_db']:.0f} dB",
        )
    Console().print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1, default=str))
        log.info("wrote %s", json_path)
    if not report["ok"]:
        raise typer.Exit(1)
