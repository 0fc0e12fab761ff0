"""``sv-engine fit``: fit Neural Layered Atlases to your own video and write a StableVideo data folder."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from sv_engine.cli.app import app
from sv_engine.errors import SvEngineError, as_flag

log = logging.getLogger(__name__)


@app.command("fit")
def fit_command(
    video: Path = typer.Argument(..., help="Input video (mp4/mov/...) or a folder of frames (jpg/png)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="StableVideo data folder to write (config.json, frames, checkpoint)."
    ),
    mask: Path | None = typer.Option(
        None,
        "--mask",
        help="Foreground masks: a video or a folder of PNGs, one per frame (wins over the hints). "
        "Without: automatic fg/bg separation.",
    ),
    fg_box: list[str] = typer.Option(
        [],
        "--fg-box",
        help="X,Y,W,H[@FRAME] box around the moving object in pixels of --size (repeatable); "
        "without @FRAME it holds for every frame.",
    ),
    mask_model: Path | None = typer.Option(
        None,
        "--mask-model",
        help="SAM 2 checkpoint folder (Hugging Face layout, your own download): masks prompted by --fg-box / "
        "--fg-point and propagated through the clip, instead of the automatic separation.",
    ),
    fg_point: list[str] = typer.Option(
        [],
        "--fg-point",
        help="X,Y[@FRAME] point on the moving object in pixels of --size (repeatable; default frame 0).",
    ),
    frames: int | None = typer.Option(None, "--frames", help="Use the first N frames (StableVideo clips are ~70)."),
    size: str = typer.Option("768x432", "--size", help="Fit resolution WIDTHxHEIGHT (StableVideo: 768x432)."),
    minutes: float | None = typer.Option(
        None, "--minutes", help="Total time budget in minutes (default 10 unless --iters)."
    ),
    iters: int | None = typer.Option(
        None, "--iters", help="Total iteration budget (with --minutes: whichever ends first)."
    ),
    device: str = typer.Option("auto", "--device", help="cuda, cpu or auto."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted fit in --out (fit_state.pt) up to the budget."
    ),
    force: bool = typer.Option(
        False, "--force", help="Write into a non-empty --out (overwrites the fit's own files, keeps others)."
    ),
    arch: str = typer.Option(
        "auto",
        "--arch",
        help="hash: multi-resolution hash grids (fast: real footage in minutes on a CPU), then distilled into "
        "the original NLA MLPs for StableVideo (sv-engine renders the hash model); nla: the NLA MLPs only; "
        "auto: nla on a GPU, hash on a CPU.",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    batch: int | None = typer.Option(
        None, "--batch", help="Points per step (default: hash 262144 on CUDA, 16384 on CPU; nla 131072 / 1024)."
    ),
    checkpoint_minutes: float = typer.Option(3.0, "--checkpoint-minutes", help="Save fit_state.pt this often."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Fit layered atlases (NLA) to VIDEO and write a StableVideo data folder (+ fit_report.json, fit_preview.png)."""
    if arch not in ("auto", "hash", "nla"):  # trainer.ARCHS, checked before torch is imported
        raise SvEngineError(f"{arch} is not available.", "use auto, hash or nla.", field="arch")
    import torch

    from sv_engine.stablevideo.fit import FitOptions, fit_video
    from sv_engine.stablevideo.fit.separation import Hints, parse_box, parse_point, validate_hints
    from sv_engine.stablevideo.fit.video_input import parse_size

    if frames is not None and frames < 3:
        raise SvEngineError(f"--frames {frames} is too few.", "use --frames 3 or more.")
    if iters is not None and iters < 1:
        raise SvEngineError(f"--iters {iters} must be positive.", "pass --iters 1 or more.")
    if minutes is not None and minutes <= 0:
        raise SvEngineError(f"--minutes {minutes} must be positive.", "pass e.g. --minutes 10.")
    if resume and force:
        raise SvEngineError(
            "--resume and --force together are ambiguous.", "use --resume to continue, or --force to start over."
        )
    fit_size = parse_size(size)
    hints = Hints([parse_box(b) for b in fg_box], [parse_point(p) for p in fg_point])
    if hints:
        validate_hints(hints, frames or 1 << 30, *fit_size)  # frame numbers are checked once the video is read
        if mask is not None:
            log.warning("--mask given: the masks are used, --fg-box / --fg-point are ignored")
    if mask_model is not None and mask is None:
        from sv_engine.stablevideo.fit.sam2_masks import check_sam2_folder

        check_sam2_folder(mask_model)
        if not hints:
            raise SvEngineError(
                "--mask-model needs a prompt on the object.", "give --fg-box X,Y,W,H[@FRAME] or --fg-point X,Y[@FRAME]."
            )
    if device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 8))
    options = FitOptions(
        out=out,
        minutes=minutes,
        iters=iters,
        device=device,
        resume=resume,
        force=force,
        arch=arch,
        seed=seed,
        batch_size=batch,
        checkpoint_minutes=checkpoint_minutes,
        progress=progress,
        hints=hints if hints and mask is None else None,
        mask_model=mask_model if mask is None else None,
        spell=as_flag,
    )
    result = fit_video(video, options, mask_source=mask, max_frames=frames, size=fit_size)
    log.info(
        "wrote %s (PSNR %.2f dB, %d iterations); use it with `sv-engine edit --data %s ...`",
        result.out,
        result.psnr_db,
        result.iterations,
        result.out,
    )
    if result.interrupted:
        raise typer.Exit(130)
