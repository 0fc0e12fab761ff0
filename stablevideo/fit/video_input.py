"""Reading the user's frames (mp4/mov/... via imageio, or a folder of images) and optional masks."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MIN_FRAMES = 3


def parse_size(text: str) -> tuple[int, int]:
    """'768x432' -> (768, 432) (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError as err:
        raise SvEngineError(f"Bad size {text!r}.", "give WIDTHxHEIGHT, e.g. 768x432.", field="size") from err
    if w < 8 or h < 8:
        raise SvEngineError(f"Size {w}x{h} is too small.", "use at least 8x8 (StableVideo uses 768x432).", field="size")
    return w, h


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise SvEngineError(f"Cannot read image {path}.", "replace or remove the unreadable file.")
    return img


def _read_video(path: Path, limit: int | None) -> list[np.ndarray]:
    import imageio.v2 as imageio

    frames: list[np.ndarray] = []
    try:
        reader = imageio.get_reader(str(path))
        try:
            for frame in reader:
                frames.append(np.asarray(frame))
                if limit is not None and len(frames) >= limit:
                    break
        finally:
            reader.close()
    except Exception as err:  # imageio/ffmpeg raise many types for broken or foreign files
        raise SvEngineError(
            f"Cannot read video {path}: {type(err).__name__}: {_one_line(err)}.",
            "pass a readable mp4/mov file (re-encode it with ffmpeg) or a folder of jpg/png frames.",
        ) from err
    return frames


def _one_line(err: Exception) -> str:
    """imageio-ffmpeg's errors carry ffmpeg's whole stderr (~20 lines of banner): their first line and ffmpeg's last."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("===")]
    if len(lines) < 2:
        return lines[0] if lines else ""
    return f"{lines[0]} ({lines[-1].rstrip('.')})"


def _to_rgb_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    if frame.shape[2] == 4:
        frame = frame[..., :3]
    if frame.dtype == np.uint16:
        frame = (frame // 257).astype(np.uint8)
    elif frame.dtype != np.uint8:
        frame = np.clip(frame.astype(np.float32) * 255.0, 0, 255).astype(np.uint8)
    return frame


def read_frames(
    source: str | Path, max_frames: int | None = None, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int], int]:
    """Reads a video file or a frames folder.

    Returns (frames (T, H, W, 3) uint8 RGB resized to ``size`` (w, h) if given, the source size (w, h),
    the number of frames the source holds (counted up to ``max_frames``)). Takes the first ``max_frames``.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise SvEngineError(f"Input not found: {path}.", "pass an existing video file (mp4/mov) or a folder of frames.")
    if path.is_dir():
        files = _image_files(path)
        if max_frames is not None:
            files = files[:max_frames]
        raw = [cv2.cvtColor(_to_rgb_uint8(_read_image(f, cv2.IMREAD_COLOR)), cv2.COLOR_BGR2RGB) for f in files]
    else:
        raw = [_to_rgb_uint8(f) for f in _read_video(path, max_frames)]
    if len(raw) < MIN_FRAMES:
        raise SvEngineError(
            f"{path} holds {len(raw)} frame(s); fitting needs at least {MIN_FRAMES}.",
            "pass a longer clip (StableVideo clips are ~70 frames).",
        )
    src_h, src_w = raw[0].shape[:2]
    if any(f.shape[:2] != (src_h, src_w) for f in raw):
        raise SvEngineError(f"Frames of {path} differ in size.", "use frames of one size.")
    frames = np.stack([_resize(f, size, cv2.INTER_AREA) for f in raw])
    log.info(
        "read %d frames %dx%d from %s%s",
        len(frames),
        src_w,
        src_h,
        path,
        f" -> {frames.shape[2]}x{frames.shape[1]}" if size else "",
    )
    return frames, (src_w, src_h), len(raw)


def _resize(img: np.ndarray, size: tuple[int, int] | None, interp: int) -> np.ndarray:
    if size is None or (img.shape[1], img.shape[0]) == size:
        return img
    if size[0] > img.shape[1]:
        interp = cv2.INTER_CUBIC if interp == cv2.INTER_AREA else interp
    return cv2.resize(img, size, interpolation=interp)


def read_masks(source: str | Path, num_frames: int, source_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Reads foreground masks (video or image folder) -> (T, H, W) bool at ``size`` (w, h).

    There must be one mask per used frame (more masks than frames is fine when ``--frames`` cut the
    clip: the first T are used), of the source frames' size or of the fitted size.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise SvEngineError(
            f"Mask input not found: {path}.", "pass a mask video or a folder of PNG masks (one per frame)."
        )
    if path.is_dir():
        files = _image_files(path)
        if len(files) < num_frames:
            raise SvEngineError(
                f"{path} holds {len(files)} mask(s) for {num_frames} frames.",
                "give exactly one mask per frame (same order as the frames).",
            )
        raw = [_read_image(f, cv2.IMREAD_UNCHANGED) for f in files[:num_frames]]
    else:
        raw = _read_video(path, num_frames)
        if len(raw) < num_frames:
            raise SvEngineError(
                f"Mask video {path} holds {len(raw)} frame(s) for {num_frames} frames.",
                "give one mask frame per video frame.",
            )
    masks = []
    for i, m in enumerate(raw):
        if m.ndim == 3:
            m = m[..., 3] if m.shape[2] == 4 and m[..., 3].min() < 255 else m[..., :3].max(axis=2)
        hw = (m.shape[1], m.shape[0])
        if hw not in (source_size, size):
            raise SvEngineError(
                f"Mask {i} is {hw[0]}x{hw[1]} but the frames are {source_size[0]}x{source_size[1]}.",
                "give masks of the same size as the video frames.",
            )
        m = m.astype(np.float32)
        m = m / (m.max() if m.max() > 1 else 1.0) if m.max() > 0 else m
        masks.append(_resize(m, size, cv2.INTER_AREA) > 0.5)
    result = np.stack(masks)
    if not result.any():
        log.warning("the masks are all empty: the foreground layer will stay empty")
    return result
