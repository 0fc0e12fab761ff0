"""``sv-engine build``: TensorRT engines / ONNX Runtime sessions for an export folder, or engines
compiled from the models themselves: AOTInductor packages (``--backend aoti --weights DIR``) or
torch.compile's stored artifacts (``--backend torch-compile --weights DIR --shapes 512x512,...``)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from sv_engine.cli.app import app

log = logging.getLogger("sv_engine.cli.build")


@app.command("build")
def build_command(
    export_dir: Path | None = typer.Argument(
        None, help="Directory written by `sv-engine export` (has manifest.json); trt and ort only."
    ),
    backend: str = typer.Option(
        "trt",
        "--backend",
        help="trt (TensorRT engines), ort (ONNX Runtime sessions), aoti (AOTInductor) or torch-compile.",
    ),
    cache: Path | None = typer.Option(None, "--cache", help="Engine cache directory (default: DIR/engines)."),
    device: str | None = typer.Option(None, "--device", help="cuda (default when present) or cpu (ort only)."),
    precision: str | None = typer.Option(None, "--precision", help="Engine precision (default: the export's)."),
    models: str | None = typer.Option(None, "--models", help="Comma list (default: every model in the manifest)."),
    weights: Path | None = typer.Option(
        None, "--weights", help="aoti / torch-compile: the model weights folder the edits use."
    ),
    tiny: bool = typer.Option(False, "--tiny", help="aoti / torch-compile: tiny random models (tests)."),
    random_full: bool = typer.Option(
        False, "--random-full", help="aoti / torch-compile: full-size random models (benchmarks)."
    ),
    shapes: str | None = typer.Option(
        None,
        "--shapes",
        help="torch-compile: image sizes HxW to compile ahead (default 512x512); edits store the others they meet.",
    ),
) -> None:
    """Build (or load from the cache) one engine/session per model and check it runs."""
    from sv_engine.engine.registry import canonical_name
    from sv_engine.errors import SvEngineError

    backend = canonical_name(backend)
    if shapes is not None and backend != "torch-compile":
        raise SvEngineError(
            f"--shapes is for --backend torch-compile, not {backend!r}.",
            "drop --shapes (AOTInductor and TensorRT engines serve the whole profile).",
        )
    if backend in ("aoti", "torch-compile"):
        if export_dir is not None:
            raise SvEngineError(
                f"`build --backend {backend}` compiles the models themselves and takes no export folder.",
                "pass --weights DIR (the weights your edits use) instead of the folder.",
            )
        _build_module_engines(backend, weights, tiny, random_full, precision, device, cache, models, shapes)
        _precompile_kernels(device)
        return
    if backend not in ("trt", "ort"):
        raise SvEngineError(
            f"`build` supports --backend trt, ort, aoti or torch-compile, not {backend!r}.",
            "torch runs the modules as they are; use trt, ort, aoti or torch-compile.",
        )
    if export_dir is None:
        raise SvEngineError(
            f"`build --backend {backend}` needs the folder `sv-engine export` wrote.",
            "run `sv-engine export --out DIR` and pass DIR.",
        )
    _build_onnx_engines(export_dir, backend, cache, device, precision, models)
    _precompile_kernels(device)


def _precompile_kernels(device: str | None) -> None:
    """The UV-mapping kernels' cubins for this GPU, kept beside the engines: an edit after ``build``
    then runs no NVRTC either. Nothing to do on a CPU (the kernels' torch references run there)."""
    from sv_engine.device import resolve_device

    torch_device = resolve_device(device or "auto")
    if torch_device.type != "cuda":
        return
    from sv_engine.kernels import precompile
    from sv_engine.kernels._nvrtc import device_arch

    arch = device_arch(torch_device)
    log.info("CUDA kernels for %s kept in %s", arch, precompile(arch)[0].parent)


def _build_module_engines(
    backend: str,
    weights: Path | None,
    tiny: bool,
    random_full: bool,
    precision: str | None,
    device: str | None,
    cache: Path | None,
    models: str | None,
    shapes: str | None,
) -> None:
    from rich.console import Console
    from rich.table import Table

    from sv_engine.device import resolve_device
    from sv_engine.export.compose import TINY_MODEL_SHAPES
    from sv_engine.export.runtime import DEFAULT_COMPILE_SIZES, build_engines, parse_sizes
    from sv_engine.export.spec import DEFAULT_SHAPES
    from sv_engine.stablevideo.model_source import check_model_source, load_components

    profile = TINY_MODEL_SHAPES if tiny else DEFAULT_SHAPES
    sizes = parse_sizes(shapes, profile) if shapes is not None else DEFAULT_COMPILE_SIZES
    if shapes is None and tiny:
        sizes = ((profile.height[1], profile.width[1]),)
    check_model_source(tiny, random_full, weights)  # before any model loads
    torch_device = resolve_device(device or "auto")
    precision = precision or ("fp16" if torch_device.type == "cuda" else "fp32")  # the edit's precision there
    components = load_components(torch_device, tiny=tiny, weights=weights, random_full=random_full, precision=precision)
    names = tuple(m.strip() for m in models.split(",")) if models else None
    console = Console(stderr=True)
    with console.status("building") as status:
        rows = build_engines(
            components,
            backend,
            precision,
            torch_device,
            shapes=profile,
            models=names,
            cache_dir=cache,
            progress=lambda name: status.update(f"building {name} (minutes for a new engine)"),
            sizes=sizes,
        )
    table = Table("model", "engine", "seconds", "MB")
    for row in rows:
        size = f"{row['bytes'] / 1e6:.1f}" if row["bytes"] else "-"
        table.add_row(row["model"], "built" if row["built"] else "present (nothing to do)", str(row["seconds"]), size)
    console.print(table)


def _build_onnx_engines(
    export_dir: Path, backend: str, cache: Path | None, device: str | None, precision: str | None, models: str | None
) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sv_engine.engine.backend import load_manifest
    from sv_engine.engine.registry import get_backend
    from sv_engine.errors import SvEngineError

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
