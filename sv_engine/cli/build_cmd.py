"""``sv-engine build``: build TensorRT engines / ONNX Runtime sessions for an export directory."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from sv_engine.cli.app import app

log = logging.getLogger("sv_engine.cli.build")


@app.command("build")
def build_command(
    export_dir: Path = typer.Argument(..., help="Directory written by `sv-engine export` (has manifest.json)."),
    backend: str = typer.Option("trt", "--backend", help="trt (TensorRT engines) or ort (ONNX Runtime sessions)."),
    cache: Path | None = typer.Option(None, "--cache", help="Engine cache directory (default: DIR/engines)."),
    device: str | None = typer.Option(None, "--device", help="cuda (default when present) or cpu (ort only)."),
    precision: str | None = typer.Option(None, "--precision", help="Engine precision (default: the export's)."),
    models: str | None = typer.Option(None, "--models", help="Comma list (default: every model in the manifest)."),
) -> None:
    """Build (or load from the cache) one engine/session per exported model and check it runs."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sv_engine.engine.backend import load_manifest
    from sv_engine.engine.registry import get_backend
    from sv_engine.errors import SvEngineError

    if backend not in ("trt", "ort"):
        raise SvEngineError(
            f"`build` supports --backend trt or ort, not {backend!r}.",
            "torch backends compile at run time; use trt or ort.",
        )
    sources = load_manifest(export_dir)
    names = list(sources) if not models else [m.strip() for m in models.split(",")]
    missing = [n for n in names if n not in sources]
    if missing:
        raise SvEngineError(
            f"{missing} not in {export_dir}/manifest.json (has {list(sources)}).",
            "Re-export with those models or drop them from --models.",
        )
    options = {"save_optimized": True} if backend == "ort" else {}
    if precision and backend == "trt":  # an ORT session runs the export's precision
        options["precision"] = precision
    be = get_backend(backend, device=device, cache_dir=cache or (export_dir / "engines"), **options)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task("building", total=len(names))
        for name in names:
            progress.update(task, description=f"building {name}")
            be.compile(sources[name])
            progress.advance(task)
    log.info("built %d %s engines into %s", len(names), backend, be.cache_dir)
