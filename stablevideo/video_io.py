"""Writing results: the mp4 (imageio/ffmpeg), optional PNG frames, and a preview contact sheet."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

# imageio's default for mimwrite, which StableVideo uses.
DEFAULT_FPS = 10


def check_writable(path: Path, force: bool) -> None:
    """Refuses to overwrite an existing output unless ``force``; the user's files are never lost silently."""
    if path.exists() and not force:
        raise SvEngineError(f"Output {path} already exists.", "choose another --out or pass --force to overwrite it.")
    path.parent.mkdir(parents=True, exist_ok=True)


def write_mp4(path: Path, frames: np.ndarray, fps: int = DEFAULT_FPS) -> None:
    """frames: (T, H, W, 3) uint8. Written to a temporary name, then renamed (no half-written output)."""
    import imageio.v2 as imageio

    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        # macro_block_size=1 keeps odd sizes exact instead of resizing (SV clips are 768x432 anyway).
        imageio.mimwrite(tmp, list(frames), format="FFMPEG", fps=fps, macro_block_size=1)
    except (ImportError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise SvEngineError(f"Cannot write mp4 ({err}).", "pip install imageio-ffmpeg (it ships an ffmpeg binary).") from err
    tmp.replace(path)
    log.info("wrote %s (%d frames, %dx%d)", path, frames.shape[0], frames.shape[2], frames.shape[1])


def write_png_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    log.info("wrote %d PNG frames to %s", frames.shape[0], folder)


def contact_sheet(tiles: list[tuple[str, np.ndarray]], tile_height: int = 180, columns: int = 4) -> Image.Image:
    """A labelled grid of images (each (H, W, 3) uint8), every tile scaled to ``tile_height``."""
    scaled = []
    for label, image in tiles:
        img = Image.fromarray(image)
        w = max(1, round(img.width * tile_height / img.height))
        scaled.append((label, img.resize((w, tile_height), Image.BILINEAR)))
    cell_w = max(img.width for _, img in scaled)
    rows = (len(scaled) + columns - 1) // columns
    sheet = Image.new("RGB", (cell_w * columns, (tile_height + 16) * rows), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (label, img) in enumerate(scaled):
        x, y = (i % columns) * cell_w, (i // columns) * (tile_height + 16)
        sheet.paste(img, (x, y + 16))
        draw.text((x + 4, y + 2), label, fill=(230, 230, 230))
    return sheet
