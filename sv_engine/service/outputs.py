"""What each job kind writes into its own folder, on the worker that runs it.

Besides ``edit.mp4``, ``preview.png`` and ``report.json`` (:mod:`sv_engine.service.workers`), a job
leaves its intermediate results as soon as they exist, for the studio to show while it runs:

* edit: ``fg_atlas.png`` / ``bg_atlas.png`` (the original atlases, once the video is open),
  ``keyframe_<i>.png`` (each keyframe edit), ``fg_atlas_edited.png`` / ``bg_atlas_edited.png``;
* atlas: ``fg_atlas.png``, ``bg_atlas.png``, ``atlas.json`` (as ``sv-engine atlas export``);
* render: ``fg_atlas_kept.png`` (the edited fg atlas with the keep-mask applied) and the video;
* fit: ``fit_preview.png`` of the new data folder.

``progress.json`` holds the running stage and the fraction done (``GET /jobs/{id}`` reads it).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sv_engine.atomic_write import atomic_write_bytes
from sv_engine.service.jobs import PREVIEW_NAME, PROGRESS_NAME, VIDEO_NAME
from sv_engine.stablevideo.pipeline import EditListener

log = logging.getLogger(__name__)

FG_ATLAS, BG_ATLAS = "fg_atlas.png", "bg_atlas.png"
FG_EDITED, BG_EDITED = "fg_atlas_edited.png", "bg_atlas_edited.png"
MASK, FG_KEPT, PLACEMENT = "mask.png", "fg_atlas_kept.png", "atlas.json"


def write_png(path: Path, image: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_atlas(path: Path, atlas: torch.Tensor) -> None:
    from sv_engine.stablevideo.images import tensor_to_image

    write_png(path, tensor_to_image(atlas))


def write_progress(out: Path, stage: str, fraction: float) -> None:
    atomic_write_bytes(out / PROGRESS_NAME, json.dumps({"stage": stage, "fraction": round(fraction, 3)}).encode())


class EditProgress(EditListener):
    """Writes an edit's stage, fraction done, original atlases, keyframe edits and edited atlases as they come.

    The fraction counts the diffusion runs (one per keyframe, one for the background): they are
    nearly all of an edit's time.
    """

    def __init__(self, out: Path, edit_background: bool) -> None:
        self.out = out
        self.edit_background = edit_background
        self.lock = threading.Lock()
        self.stage = "open video (maps, atlases)"
        self.done, self.total = 0, None

    def _report(self) -> None:
        fraction = 0.02 if self.total is None else 0.05 + 0.9 * self.done / self.total
        write_progress(self.out, self.stage, fraction)

    def stage_started(self, stage: str) -> None:
        with self.lock:
            self.stage = stage
            self._report()

    def video_opened(self, session, keyframes: list[int]) -> None:
        write_atlas(self.out / FG_ATLAS, session.atlas.cropped_fg_atlas)
        write_atlas(self.out / BG_ATLAS, session.atlas.bg_grid_atlas)
        with self.lock:
            self.total = len(keyframes) + int(self.edit_background)
            self._report()

    def keyframe_edited(self, index: int, frame: int, image: np.ndarray) -> None:
        write_png(self.out / f"keyframe_{index}.png", image)
        with self.lock:
            self.done += 1
            self._report()

    def atlas_edited(self, layer: str, atlas: torch.Tensor) -> None:
        write_atlas(self.out / (FG_EDITED if layer == "fg" else BG_EDITED), atlas)
        if layer == "bg":
            with self.lock:
                self.done += 1
                self._report()


def export_atlases(sessions, data_dir: str, out: Path) -> dict[str, Any]:
    """The atlas job: the original atlases and their placement, as ``sv-engine atlas export``; the
    video stays open in the worker's ``sessions`` for the edits that follow."""
    from sv_engine.stablevideo.session import atlas_placement

    write_progress(out, "open video (maps, atlases)", 0.05)
    session = sessions.open(data_dir)
    write_atlas(out / FG_ATLAS, session.atlas.cropped_fg_atlas)
    write_atlas(out / BG_ATLAS, session.atlas.bg_grid_atlas)
    placement = atlas_placement(session)
    atomic_write_bytes(out / PLACEMENT, json.dumps(placement, indent=2).encode())
    return {"frames": session.video.config.num_frames, "atlas": placement}


def render_with_mask(session, atlases: Path, out: Path, fps: int) -> dict[str, Any]:
    """The render job: the edit's atlases from ``atlases`` (its folder), the keep-mask ``out/mask.png``
    when the client sent one, rendered into every frame without diffusion (``sv-engine render``)."""
    from sv_engine.stablevideo.images import image_to_tensor, read_png, tensor_to_image
    from sv_engine.stablevideo.render import mix_user_mask, render_video
    from sv_engine.stablevideo.video_io import contact_sheet, write_mp4

    write_progress(out, "render", 0.1)
    atlas = session.atlas
    fg = image_to_tensor(read_png(atlases / FG_EDITED)).to(atlas.alpha.device)
    bg = image_to_tensor(read_png(atlases / BG_EDITED)).to(atlas.alpha.device)
    mask = None
    if (out / MASK).is_file():
        mask = image_to_tensor(read_png(out / MASK, "L")[..., None]).to(atlas.alpha.device)
    kept = mix_user_mask(fg, atlas.cropped_fg_atlas, mask)  # also checks the mask's size
    frames = render_video(atlas, fg, bg, mask).cpu().numpy()
    write_atlas(out / FG_KEPT, kept)
    write_progress(out, "write video", 0.9)
    write_mp4(out / VIDEO_NAME, frames, fps)
    tiles = [("fg atlas edited", tensor_to_image(fg)), ("fg atlas kept", tensor_to_image(kept))]
    if mask is not None:
        tiles.insert(1, ("keep-mask", tensor_to_image(mask.expand(3, -1, -1))))
    t = frames.shape[0]
    tiles += [(f"frame {i}", frames[i]) for i in sorted({0, t // 3, (2 * t) // 3, t - 1})]
    buf = io.BytesIO()
    contact_sheet(tiles).save(buf, format="PNG")
    atomic_write_bytes(out / PREVIEW_NAME, buf.getvalue())
    return {"frames": int(t), "masked": mask is not None}


def fit_upload(video: Path, target: Path, spec: dict[str, Any], out: Path, device: str) -> dict[str, Any]:
    """The fit job: the uploaded ``video`` fitted into the new data folder ``target`` (``sv-engine fit``)."""
    import shutil

    from sv_engine.stablevideo.fit import FitOptions, fit_arrays
    from sv_engine.stablevideo.fit.video_input import read_frames

    write_progress(out, "read video, optical flow", 0.01)
    frames, _, _ = read_frames(video, spec["frames"], (spec["width"], spec["height"]))
    minutes, iters = spec["minutes"], spec.get("iters")
    started = time.monotonic()

    def on_record(entry: dict) -> None:
        fraction = (time.monotonic() - started) / (minutes * 60.0)
        if iters:
            fraction = max(fraction, entry.get("iteration", 0) / iters)
        write_progress(out, f"fit: PSNR {entry.get('psnr_db', 0):.1f} dB", min(0.98, fraction))

    options = FitOptions(out=target, minutes=minutes, iters=iters, device=device, progress=False, eval_seconds=5.0)
    result = fit_arrays(frames, None, options, on_record)
    if (target / "fit_preview.png").is_file():
        shutil.copyfile(target / "fit_preview.png", out / "fit_preview.png")
    return {"frames": int(frames.shape[0]), "psnr_db": round(result.psnr_db, 2), "iterations": result.iterations}
