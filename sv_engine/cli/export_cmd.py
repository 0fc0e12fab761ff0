"""``sv-engine export``: ONNX files + manifest.json for every (or the listed) model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from sv_engine.cli.app import app
from sv_engine.errors import SvEngineError

log = logging.getLogger("sv_engine.cli.export")


def load_bundle(
    tiny: bool, weights: Path | None, random_full: bool = False, seed: int = 0, nla_checkpoint: Path | None = None
) -> tuple[Any, Any, str]:
    """``(SDComponents, NLAModel | None, description)`` from the CLI flags (shared by export/parity)."""
    import torch

    from sv_engine.stablevideo.model_source import check_model_source
    from sv_engine.stablevideo.nla import NLAModel

    check_model_source(tiny, random_full, weights)
    if tiny or random_full:
        from sv_engine.stablevideo.models.tiny import build_random_components, build_tiny_components

        components = build_tiny_components(seed) if tiny else build_random_components(seed, size="full")
        nla = NLAModel.random(seed)
    else:
        from sv_engine.stablevideo.models.loaders import load_components

        components = load_components(weights)
        nla = None
    if nla_checkpoint is not None:
        if not nla_checkpoint.is_file():
            raise SvEngineError(
                f"NLA checkpoint {nla_checkpoint} not found.", "Pass the path of the trained atlas .pth."
            )
        nla = NLAModel.random(seed)
        nla.load_state_dict(torch.load(nla_checkpoint, map_location="cpu", weights_only=False))
    return components, nla, getattr(components, "description", "")


def shape_range(tiny: bool, max_side: int | None = None, max_batch: int | None = None):
    import dataclasses

    from sv_engine.export.spec import DEFAULT_SHAPES, TINY_SHAPES

    shapes = TINY_SHAPES if tiny else DEFAULT_SHAPES
    if max_side:
        if max_side % shapes.multiple or max_side < shapes.height[0]:
            raise SvEngineError(
                f"--max-side {max_side} must be a multiple of {shapes.multiple} and >= {shapes.height[0]}.",
                f"Use e.g. {shapes.height[2]}.",
            )
        shapes = dataclasses.replace(
            shapes,
            height=(shapes.height[0], shapes.height[1], max_side),
            width=(shapes.width[0], shapes.width[1], max_side),
        )
    if max_batch:
        shapes = dataclasses.replace(shapes, batch=(1, min(2, max_batch), max_batch))
    return shapes


@app.command("export")
def export_command(
    out: Path = typer.Option(..., "--out", help="Output directory for the ONNX files and manifest.json."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny random models (tests, CPU)."),
    random_full: bool = typer.Option(
        False, "--random", "--random-full", help="Full-size random-weight models (benchmarks)."
    ),
    weights: Path | None = typer.Option(None, "--weights", help="Directory with the real model weights."),
    nla: Path | None = typer.Option(None, "--nla", help="Trained NLA checkpoint (.pth) for nla_field/nla_atlas."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (fp16 keeps GroupNorm/softmax in fp32)."),
    models: str = typer.Option("all", "--models", help="Comma list of models (default: all)."),
    max_side: int | None = typer.Option(None, "--max-side", help="Largest image side of the profile (default 1024)."),
    max_batch: int | None = typer.Option(None, "--max-batch", help="Largest batch of the profile (default 2)."),
    device: str = typer.Option("cpu", "--device", help="Device used for tracing (cuda speeds up full-size fp16)."),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out."),
    attention: str = typer.Option(
        "onnx",
        "--attention",
        help="onnx: standard operators (every runtime, TensorRT); ort: ONNX Runtime's fused "
        "MultiHeadAttention (what --backend ort exports for itself).",
    ),
) -> None:
    """Export the models to ONNX (opset 17, dynamic batch/size profiles) and write manifest.json."""
    from rich.console import Console

    from sv_engine.export.onnx_export import disk_usage, export_all, prepare_out_dir
    from sv_engine.export.ort_attention import ATTENTION_FORMS
    from sv_engine.export.registry import build_specs, parse_model_list
    from sv_engine.stablevideo.model_source import check_model_source

    names = parse_model_list(models)
    if attention not in ATTENTION_FORMS:
        raise SvEngineError(f"Unknown --attention {attention!r}.", f"Use one of {', '.join(ATTENTION_FORMS)}.")
    check_model_source(tiny, random_full, weights)  # before the output folder is made
    prepare_out_dir(out, force)  # fail before loading any model
    components, nla_model, description = load_bundle(tiny, weights, random_full, seed, nla)
    specs = build_specs(
        components,
        nla_model,
        names=None if models == "all" else names,
        precision=precision,
        shapes=shape_range(tiny, max_side, max_batch),
        device=device,
    )
    console = Console(stderr=True)
    with console.status("exporting") as status:
        sources = export_all(
            specs,
            out,
            force=True,
            extra={"description": description, "precision": precision},
            progress=lambda n: status.update(f"exporting {n}"),
            attention=attention,
        )
    for name, src in sources.items():
        console.print(
            f"  {name:24s} {src.onnx_path.name}  ({src.precision}, {src.attention} attention, sha256 {src.sha256[:12]})"
        )
    console.print(f"wrote {len(sources)} models, {disk_usage(out) / 2**20:.1f} MiB, manifest {out / 'manifest.json'}")
