"""``sv-engine edit``: text-driven edit of a video with a layered atlas."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer

from sv_engine.cli.app import END_AT_ONCE, app
from sv_engine.cli.options import (
    CudaGraphs,
    DataDir,
    Device,
    EditBackend,
    Force,
    Precision,
    Tiny,
    Weights,
    runtime_config,
)
from sv_engine.gc_pause import gc_paused
from sv_engine.process_clock import seconds_since_process_start

log = logging.getLogger(__name__)


def run_edit(
    data_dir: Path,
    fg_prompt: str,
    bg_prompt: str,
    out: Path,
    *,
    keyframes: str | None = None,
    strength: float = 0.8,
    steps: int = 20,
    seed: int = -1,
    weights: Path | None = None,
    tiny: bool = False,
    device: str = "auto",
    precision: str = "fp32",
    aggregation: str = "median",
    image_resolution: int = 512,
    backend: str = "auto",
    cuda_graphs: bool | None = None,
    frames_dir: Path | None = None,
    force: bool = False,
) -> None:
    """Shared by ``edit`` and ``demo``: checks outputs first, then loads models, edits and writes.

    The report's ``seconds_per_phase`` follow the process from its start (a cold edit is mostly not the
    edit): start python and the CLI (the process's age here: the whole command's when it is ``sv-engine``),
    import torch and the pipeline, check inputs, then the build's phases (init CUDA, import model
    libraries, load models, prepare backend), the edit (its stages in ``seconds_per_stage``) and writing
    the outputs."""
    phases = {"start python and the CLI": seconds_since_process_start()}
    # The imports and the model load: one pause, then what the command keeps until it ends is frozen
    # (sv_engine/gc_pause.py).
    with gc_paused(freeze=True):
        started = time.perf_counter()
        from PIL import Image

        from sv_engine.device import resolve_device
        from sv_engine.export.compose import build_pipeline
        from sv_engine.stablevideo.inputs import check_edit_inputs
        from sv_engine.stablevideo.keyframes import keyframe_indices
        from sv_engine.stablevideo.params import EditParams
        from sv_engine.stablevideo.stage_timer import StageTimer
        from sv_engine.stablevideo.video_io import check_writable, write_mp4, write_png_frames

        phases["import torch and the pipeline"] = time.perf_counter() - started
        started = time.perf_counter()
        preview = out.with_name(f"{out.stem}_preview.png")
        report = out.with_name(f"{out.stem}_report.json")
        for path in (out, preview, report):
            check_writable(path, force)
        if frames_dir:
            check_writable(frames_dir, force, folder=True, field="frames_dir")
        resolve_device(device)
        config = runtime_config(
            weights=weights, tiny=tiny, precision=precision, device=device, backend=backend, cuda_graphs=cuda_graphs
        )
        config.check()
        # Every input is checked before the (slow) model load: the same checks as the service's and batch's.
        params = EditParams(
            fg_prompt,
            bg_prompt,
            keyframes=keyframe_indices(keyframes) if keyframes else None,
            strength=strength,
            steps=steps,
            seed=seed,
            aggregation=aggregation,
            image_resolution=image_resolution,
        )
        check_edit_inputs(data_dir, params)
        phases["check inputs"] = time.perf_counter() - started
        runtime = build_pipeline(config, open_videos=(data_dir,))  # the clip opens while the models load
    phases.update(runtime.seconds_per_phase)
    timer = StageTimer(sync_cuda=False)
    with timer("edit"):
        result = runtime.pipeline.edit(data_dir, params)
    with timer("write outputs"), ThreadPoolExecutor(max_workers=1, thread_name_prefix="sv-preview") as pool:
        # The preview's PNG is compressed while ffmpeg encodes the video (both mostly outside the GIL).
        sheet = pool.submit(lambda: Image.fromarray(result.preview()).save(preview))
        write_mp4(out, result.frames)
        if frames_dir:
            write_png_frames(frames_dir, result.frames)
        sheet.result()
    phases.update(timer.as_dict())
    report.write_text(
        json.dumps(
            {
                **runtime.describe(),
                "seed": result.seed,
                "keyframes": result.keyframes,
                "seconds_per_phase": {k: round(v, 6) for k, v in phases.items() if v is not None},
                "seconds_per_stage": result.timings,
            },
            indent=2,
        )
    )
    log.info("done: %s, preview %s, report %s", out, preview, report)
    END_AT_ONCE.set()


@app.command("edit")
def edit(
    data_dir: DataDir,
    fg_prompt: Annotated[str, typer.Option("--fg-prompt", help="Prompt for the foreground object.")],
    bg_prompt: Annotated[str, typer.Option("--bg-prompt", help="Prompt for the background.")],
    keyframes: Annotated[
        str | None,
        typer.Option(
            "--keyframes",
            help="Comma-separated frame indices (default: three evenly spaced, SV's 20,40,60 for 70 frames).",
        ),
    ] = None,
    strength: Annotated[float, typer.Option(help="Noise strength for keyframes after the first.")] = 0.8,
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed (-1: random); the same seed gives the same video.")] = -1,
    weights: Weights = None,
    tiny: Tiny = False,
    precision: Precision = "fp32",
    aggregation: Annotated[str, typer.Option(help="median or net (train the aggregation network).")] = "median",
    image_resolution: Annotated[int, typer.Option(help="Short side of the diffusion images (multiple of 64).")] = 512,
    backend: EditBackend = "auto",
    cuda_graphs: CudaGraphs = None,
    out: Annotated[
        Path, typer.Option("--out", help="Output mp4; a _preview.png and _report.json are written beside it.")
    ] = Path("edit.mp4"),
    frames_dir: Annotated[Path | None, typer.Option("--frames-dir", help="Also write PNG frames here.")] = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Edit a video: foreground keyframes with canny ControlNet propagated through the atlas, background with
    depth ControlNet."""
    run_edit(
        data_dir,
        fg_prompt,
        bg_prompt,
        out,
        keyframes=keyframes,
        strength=strength,
        steps=steps,
        seed=seed,
        weights=weights,
        tiny=tiny,
        device=device,
        precision=precision,
        aggregation=aggregation,
        image_resolution=image_resolution,
        backend=backend,
        cuda_graphs=cuda_graphs,
        frames_dir=frames_dir,
        force=force,
    )
