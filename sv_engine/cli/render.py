"""``sv-engine render``: a video from (possibly hand-edited) atlases."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from sv_engine.cli.app import app
from sv_engine.cli.options import DataDir, Device, Force

log = logging.getLogger(__name__)


@app.command("render")
def render(
    data_dir: DataDir,
    fg_atlas: Annotated[Path, typer.Option("--fg-atlas", help="Foreground atlas PNG (as written by `atlas export`).")],
    bg_atlas: Annotated[Path, typer.Option("--bg-atlas", help="Background atlas PNG (as written by `atlas export`).")],
    out: Annotated[Path, typer.Option("--out", help="Output mp4.")],
    mask: Annotated[
        Path | None, typer.Option("--mask", help="Grayscale PNG, fg atlas size: white keeps the original fg atlas.")
    ] = None,
    frames_dir: Annotated[Path | None, typer.Option("--frames-dir", help="Also write PNG frames here.")] = None,
    fps: Annotated[int, typer.Option(help="Frames per second of the mp4.")] = 10,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Render every frame from the two atlases and alpha-composite them into an mp4."""
    from sv_engine.device import resolve_device
    from sv_engine.stablevideo.images import image_to_tensor, read_png
    from sv_engine.stablevideo.render import render_video
    from sv_engine.stablevideo.session import open_video
    from sv_engine.stablevideo.video_io import check_writable, write_mp4, write_png_frames

    check_writable(out, force)
    if frames_dir is not None:
        check_writable(frames_dir, force, folder=True, field="frames_dir")
    fg = image_to_tensor(read_png(fg_atlas))
    bg = image_to_tensor(read_png(bg_atlas))
    user_mask = image_to_tensor(read_png(mask, "L")[..., None]) if mask is not None else None
    session = open_video(data_dir, resolve_device(device))
    frames = render_video(session.atlas, fg, bg, user_mask).cpu().numpy()
    write_mp4(out, frames, fps)
    if frames_dir is not None:
        write_png_frames(frames_dir, frames)
