"""Writing the StableVideo data folder atomically (tmp file + rename), never deleting user files.

Same layout as :func:`sv_engine.stablevideo.data.write_video_data` (``config.json``,
``<name>/<name>/00000.jpg``..., ``checkpoint`` with the original NLA keys), so
:func:`~sv_engine.stablevideo.data.load_video_data` and StableVideo itself load it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from sv_engine.stablevideo.hash_nla import CHECKPOINT_KEY as HASH_CHECKPOINT_KEY
from sv_engine.stablevideo.hash_nla import HashNLAModel
from sv_engine.stablevideo.nla import NLAModel

from sv_engine.atomic_write import atomic_torch_save, atomic_write_bytes
from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

STATE_FILE = "fit_state.pt"
OUR_FILES = {"config.json", "checkpoint", STATE_FILE, "fit_report.json", "fit_preview.png"}


def prepare_out_dir(root: Path, resume: bool, force: bool) -> None:
    """Refuses an existing non-empty folder unless ``resume`` / ``force``; creates it otherwise."""
    if root.exists() and not root.is_dir():
        raise SvEngineError(f"{root} exists and is not a folder.", "pass a new folder.", field="out")
    contents = [p for p in root.iterdir()] if root.is_dir() else []
    if resume:
        if not (root / STATE_FILE).is_file():
            raise SvEngineError(
                f"no {STATE_FILE} in {root}.",
                "fit without $resume first (or point $out at the folder of the interrupted fit).",
                field="resume",
                mentions=("out",),
            )
        return
    if contents and not force:
        raise SvEngineError(
            f"Output folder {root} is not empty.",
            "pass a new folder, $resume to continue an interrupted fit there, or $force to overwrite the fit's"
            " files (other files are kept).",
            field="out",
            mentions=("resume", "force"),
        )
    if contents and force:
        frames_dir = root / root.name
        others = [p.name for p in contents if p.name not in OUR_FILES and p != frames_dir]
        if others:
            log.warning("overwriting the fit: keeping unrelated files in %s: %s", root, ", ".join(sorted(others)[:5]))
    root.mkdir(parents=True, exist_ok=True)


def write_frames_and_config(root: Path, frames: np.ndarray) -> None:
    """``config.json`` + ``<name>/<name>/%05d.jpg`` (T, H, W, 3) uint8."""
    t, h, w, _ = frames.shape
    folder = root / root.name
    folder.mkdir(parents=True, exist_ok=True)
    extra = sorted(
        p.name
        for p in folder.iterdir()
        if p.suffix.lower() in (".jpg", ".png") and not (p.stem.isdigit() and int(p.stem) < t and p.suffix == ".jpg")
    )
    if extra:
        log.warning("%s holds other frames (%s...) that StableVideo would also read: remove them", folder, extra[0])
    for i, frame in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95, subsampling=0)  # 4:4:4: no chroma blur
        atomic_write_bytes(folder / f"{i:05d}.jpg", buf.getvalue())
    atomic_write_bytes(
        root / "config.json", json.dumps({"resx": w, "resy": h, "number_of_frames": t}, indent=2).encode()
    )


def write_checkpoint(
    root: Path,
    nla: NLAModel,
    iteration: int,
    optimizer_state: dict | None = None,
    hash_model: HashNLAModel | None = None,
) -> None:
    """The NLA checkpoint (original keys) for StableVideo / sv-engine; with ``hash_model`` (--arch hash, whose
    distilled MLPs ``nla`` is) that model too, under its own key: StableVideo reads only the NLA keys,
    sv-engine's loader prefers the hash model (see :func:`sv_engine.stablevideo.data.load_checkpoint`)."""
    ckpt: dict = {k: {n: p.detach().float().cpu() for n, p in sd.items()} for k, sd in nla.state_dict().items()}
    ckpt["iteration"] = int(iteration)
    if optimizer_state is not None:
        ckpt["optimizer_all_state_dict"] = optimizer_state
    if hash_model is not None:
        blob = hash_model.to_checkpoint()
        blob["state"] = {k: {n: p.detach().cpu() for n, p in sd.items()} for k, sd in blob["state"].items()}
        ckpt[HASH_CHECKPOINT_KEY] = blob
    atomic_torch_save(ckpt, root / "checkpoint")
