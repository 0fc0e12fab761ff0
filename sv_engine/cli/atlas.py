"""``sv-engine atlas export``: the fg and bg atlases as PNG, exactly as StableVideo computes them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from sv_engine.cli.app import app
from sv_engine.cli.options import DataDir, Device, Force

log = logging.getLogger(__name__)

atlas_app = typer.Typer(
    help="Layered-atlas round trip: export atlases to edit in any image editor, then `sv-engine render`.",
    no_args_is_help=True,
)
app.add_typer(atlas_app, name="atlas")


@atlas_app.command("export")
def export(
    data_dir: DataDir,
    out: Annotated[Path, typer.Option("--out", help="Folder for fg_atlas.png, bg_atlas.png and atlas.json.")],
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Write fg_atlas.png (grid atlas cropped to its bounding box), bg_atlas.png and their placement JSON."""
    from PIL import Image

    from sv_engine.device import resolve_device
    from sv_engine.stablevideo.images import tensor_to_image
    from sv_engine.stablevideo.session import atlas_placement, open_video
    from sv_engine.stablevideo.video_io import check_writable

    files = [out / "fg_atlas.png", out / "bg_atlas.png", out / "atlas.json"]
    for path in files:
        check_writable(path, force)
    session = open_video(data_dir, resolve_device(device))
    atlas = session.atlas
    Image.fromarray(tensor_to_image(atlas.cropped_fg_atlas)).save(files[0])
    Image.fromarray(tensor_to_image(atlas.bg_grid_atlas)).save(files[1])
    placement = atlas_placement(session)
    files[2].write_text(json.dumps(placement, indent=2))
    log.info("wrote %s", ", ".join(str(p) for p in files))
