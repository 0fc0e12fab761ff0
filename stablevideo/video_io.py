"""Writing results: the mp4 (imageio-ffmpeg, else OpenCV), optional PNG frames, and a preview contact sheet."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

# imageio's default for mimwrite, which StableVideo uses.
DEFAULT_FPS = 10


def check_writable(path: Path, force: bool, folder: bool = False, field: str = "out") -> None:
    """Refuses to overwrite an existing output unless ``force``; the user's files are never lost silently.

    ``folder``: the output is a folder (PNG frames); a file output never replaces a folder, nor the reverse.
    ``field``: the input that named the output."""
    if path.exists() and path.is_dir() != folder:
        is_kind, wanted = ("a file", "a folder") if folder else ("a folder", "a file name")
        raise SvEngineError(
            f"Output {path} is {is_kind}.",
            f"give {wanted} there ($force does not replace it).",
            field=field,
            mentions=("force",),
        )
    if path.exists() and not force:
        raise SvEngineError(
            f"Output {path} already exists.",
            "choose another one or pass $force to overwrite it.",
            field=field,
            mentions=("force",),
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SvEngineError(
            f"Cannot create the folder for output {path}: {err.strerror}.",
            "choose one in a folder you can write.",
            field=field,
        ) from err


#: x264's "veryfast" preset at imageio's quality 7 against imageio's defaults ("medium", quality 5), 70
#: frames of a panned photo at 768x432 on the 2-core CPU (the bench's video_encode stage,
#: benchmarks/results/video-encode-cpu-2core-*-ea6d332.json): 0.35 s against 0.64 s, 37.4 dB against
#: 36.8 dB PSNR of the decoded frames, 1.5x the bytes. An edit's output is written once and watched:
#: latency first, quality kept.
H264_OPTIONS: dict[str, object] = {"quality": 7, "output_params": ["-preset", "veryfast"]}


def write_mp4(path: Path, frames: np.ndarray, fps: int = DEFAULT_FPS, h264_options: dict | None = None) -> str:
    """frames: (T, H, W, 3) uint8. Written to a temporary name, then renamed (no half-written output).

    H.264 through imageio-ffmpeg (what StableVideo writes) with ``h264_options`` (imageio's writer
    keywords, default :data:`H264_OPTIONS`); without it, MPEG-4 Part 2 through OpenCV's bundled FFmpeg,
    with a warning. Returns the encoder used.
    """
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401 - without it imageio silently picks another plugin for .mp4

        # macro_block_size=1 keeps odd sizes exact instead of resizing (SV clips are 768x432 anyway).
        options = H264_OPTIONS if h264_options is None else h264_options
        imageio.mimwrite(tmp, list(frames), format="FFMPEG", fps=fps, macro_block_size=1, **options)
        encoder = "h264 (imageio-ffmpeg)"
    except (ImportError, ValueError, OSError) as err:
        tmp.unlink(missing_ok=True)
        if not _write_mp4_opencv(tmp, frames, fps):
            tmp.unlink(missing_ok=True)
            raise SvEngineError(
                f"Cannot write mp4 ({err}).", "pip install imageio-ffmpeg (it ships an ffmpeg binary)."
            ) from err
        encoder = "mpeg4 (OpenCV)"
        log.warning(
            "imageio-ffmpeg is unavailable (%s); wrote MPEG-4 Part 2 with OpenCV instead of H.264 "
            "(pip install imageio-ffmpeg for H.264)",
            err,
        )
    tmp.replace(path)
    log.info("wrote %s (%d frames, %dx%d, %s)", path, frames.shape[0], frames.shape[2], frames.shape[1], encoder)
    return encoder


def _write_mp4_opencv(path: Path, frames: np.ndarray, fps: int) -> bool:
    import cv2

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        return False
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path.is_file() and path.stat().st_size > 0


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
