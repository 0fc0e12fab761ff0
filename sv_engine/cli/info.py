"""``sv-engine info``: what a data folder holds, and optionally its per-pixel maps."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from sv_engine.cli.app import app
from sv_engine.cli.options import DataDir, Device, Force

log = logging.getLogger(__name__)


@app.command("info")
def info(
    data_dir: DataDir,
    export_maps: Annotated[
        Path | None,
        typer.Option(
            "--export-maps", help="Write fg_uv, bg_uv (T,H,W,2) and alpha (T,H,W) in SV's conventions to this .npz."
        ),
    ] = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Frames, resolution, checkpoint summary and atlas sizes of a data folder."""
    from sv_engine.device import resolve_device
    from sv_engine.stablevideo.session import open_video
    from sv_engine.stablevideo.video_io import check_writable

    if export_maps is not None:
        check_writable(export_maps, force, field="export_maps")
    session = open_video(data_dir, resolve_device(device))
    video, atlas = session.video, session.atlas
    params = {name: sum(p.numel() for p in net.parameters()) for name, net in video.nla.modules().items()}
    summary = {
        "name": video.name,
        "frames": video.config.num_frames,
        "resolution": f"{video.config.resx}x{video.config.resy}",
        "checkpoint_sha256": video.checkpoint_sha256,
        "nla_parameters": params,
        "fg_grid_atlas": f"{atlas.fg.max_u}x{atlas.fg.max_v}",
        "fg_atlas_bbox": dict(zip(("top", "left", "height", "width"), atlas.fg_bbox, strict=False)),
        "bg_grid_atlas": f"{atlas.bg.max_u}x{atlas.bg.max_v}",
        "alpha_mean": round(float(session.maps.alpha.mean()), 4),
    }
    typer.echo(json.dumps(summary, indent=2))
    if export_maps is not None:
        session.maps.save_npz(export_maps)
        log.info("wrote maps to %s", export_maps)
