"""StableVideo data folders: ``<name>/config.json``, ``<name>/checkpoint``, frames in ``<name>/<name>/``.

Reading is faithful to StableVideo (frames sorted jpg+png, first T, PIL LANCZOS resize to
(resx, resy), float [0, 1]); where the original silently proceeds on bad data (fewer frames than the
config says, a missing key) we raise :class:`SvEngineError` naming the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sv_engine.stablevideo.hash_nla import CHECKPOINT_KEY as HASH_CHECKPOINT_KEY
from sv_engine.stablevideo.hash_nla import HashNLAModel
from sv_engine.stablevideo.nla import CHECKPOINT_KEYS, NLAModel

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

# StableVideo's fixed AtlasData settings.
GRID_ATLAS_RESOLUTION = 2000
MASK_BORDER = 30
MASK_ALPHA_THRESHOLD = 0.99
MIN_CROP_SIZE = 2**7 + 1
# Guard against accidentally editing a feature film: ~70 frames is what SV was designed for.
MAX_PIXELS = 4096 * 4096 * 600


@dataclass(frozen=True)
class VideoConfig:
    resx: int
    resy: int
    num_frames: int


@dataclass
class VideoData:
    """A loaded data folder: frames (T, 3, H, W) float in [0, 1], the NLA networks, the config."""

    root: Path
    config: VideoConfig
    frames: torch.Tensor
    nla: NLAModel | HashNLAModel
    checkpoint_sha256: str
    frame_files: list[Path]

    @property
    def name(self) -> str:
        return self.root.name


def read_config(root: Path) -> VideoConfig:
    path = root / "config.json"
    if not path.is_file():
        raise SvEngineError(
            f"No config.json in data folder {root}.",
            "point to a StableVideo data folder (config.json, checkpoint, frames in <name>/<name>/).",
        )
    try:
        raw = json.loads(path.read_text())
        num_frames = raw.get("number_of_frames", raw.get("maximum_number_of_frames"))
        config = VideoConfig(int(raw["resx"]), int(raw["resy"]), int(num_frames))
    except (ValueError, KeyError, TypeError) as err:
        raise SvEngineError(
            f"{path} is not a valid StableVideo config ({err!r}).",
            'it must be JSON with integer "resx", "resy" and "number_of_frames" (or "maximum_number_of_frames").',
        ) from err
    if min(config.resx, config.resy, config.num_frames) <= 0:
        raise SvEngineError(
            f"{path} has a non-positive size or frame count: {config}.", "fix resx/resy/number_of_frames."
        )
    if config.resx * config.resy * config.num_frames > MAX_PIXELS:
        raise SvEngineError(
            f"Video too large: {config.num_frames} frames of {config.resx}x{config.resy}.",
            "edit a shorter clip or a lower resolution (StableVideo clips are ~70 frames of 768x432).",
        )
    return config


def frame_files(root: Path) -> list[Path]:
    """Frame files in SV's order: sorted(jpg list + png list) by full path."""
    folder = root / root.name
    return sorted(list(folder.glob("*.jpg")) + list(folder.glob("*.png")))


def folder_stamp(root: str | Path) -> tuple:
    """What proves a data folder unchanged without reading it: (name, size, mtime, inode) of config.json,
    the checkpoint and every frame file.

    A warm pipeline compares this before reusing a video it has open: stat calls cost ~1 ms for 70
    frames, where decoding the frames and hashing the checkpoint again cost ~0.5 s. Rewriting a file
    (in place or by rename) changes its mtime or inode, adding or removing a frame changes the list.
    """
    root = Path(root).expanduser().resolve()
    stamp = []
    for path in (root / "config.json", root / "checkpoint", *frame_files(root)):
        try:
            st = path.stat()
        except OSError:
            stamp.append((path.name, None))
            continue
        stamp.append((path.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stamp)


#: Frames decoded at once: the decoders release the GIL, so a 70-frame clip decodes in parallel.
DECODE_THREADS = min(8, os.cpu_count() or 1)


def _read_frame(path: Path, config: VideoConfig) -> torch.Tensor:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((config.resx, config.resy), Image.LANCZOS)
    except OSError as err:
        raise SvEngineError(f"Cannot read frame {path}: {err}.", "replace the corrupt frame file.") from err
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def load_frames(root: Path, config: VideoConfig) -> tuple[torch.Tensor, list[Path]]:
    files = frame_files(root)
    if len(files) < config.num_frames:
        raise SvEngineError(
            f"{root / root.name} holds {len(files)} jpg/png frames but config.json says {config.num_frames}.",
            "add the missing frames or lower number_of_frames in config.json.",
        )
    files = files[: config.num_frames]
    frames = torch.empty(config.num_frames, 3, config.resy, config.resx)

    def read(i: int) -> None:
        frames[i] = _read_frame(files[i], config)

    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="sv-decode") as pool:
        for done in [pool.submit(read, i) for i in range(len(files))]:
            done.result()  # in frame order: the first unreadable frame is the one reported
    return frames, files


def load_checkpoint(path: Path) -> tuple[NLAModel | HashNLAModel, str]:
    """Loads an original NLA checkpoint (strict) and returns it with the file's sha256. A checkpoint of
    ``sv-engine fit --arch hash`` also holds the hash-grid model its NLA MLPs were distilled from: that
    one is returned (it reconstructs the video better; StableVideo itself reads the NLA keys)."""
    checkpoint, blob = read_checkpoint(path)
    sha = hashlib.sha256(blob).hexdigest()
    if HASH_CHECKPOINT_KEY in checkpoint:
        try:
            return HashNLAModel.from_checkpoint(checkpoint[HASH_CHECKPOINT_KEY]).eval(), sha
        except (KeyError, TypeError, RuntimeError) as err:
            raise SvEngineError(
                f"The hash-grid NLA in {path} is damaged or from another sv-engine version: {err}.",
                "fit the video again with `sv-engine fit`.",
            ) from err
    nla = NLAModel.random()
    try:
        nla.load_state_dict(checkpoint)
    except RuntimeError as err:
        raise SvEngineError(
            f"NLA checkpoint {path} does not match the original architecture: {err}.",
            "use an original NLA checkpoint (fg mapping 6 layers, bg mapping 4, atlas 8 with skips 4 and 7, alpha 8).",
        ) from err
    return nla.eval(), sha


def read_checkpoint(path: Path) -> tuple[dict, bytes]:
    """An NLA checkpoint file's dict (holding the four networks under the original keys) and its bytes."""
    if not path.is_file():
        raise SvEngineError(
            f"NLA checkpoint not found: {path}.",
            "copy the video's pretrained NLA 'checkpoint' file into the data folder (or fit one with `sv-engine fit`).",
        )
    blob = path.read_bytes()
    try:
        checkpoint = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated/foreign files
        raise SvEngineError(
            f"Cannot read NLA checkpoint {path}: {type(err).__name__}: {' '.join(str(err).split())[:300]}.",
            "the file is corrupt or not a torch checkpoint; copy it again.",
        ) from err
    missing = [key for key in CHECKPOINT_KEYS.values() if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise SvEngineError(
            f"NLA checkpoint {path} lacks {', '.join(missing)}.",
            "use the checkpoint written by Neural Layered Atlases / StableVideo / `sv-engine fit`.",
        )
    return checkpoint, blob


def load_video_data(root: str | Path) -> VideoData:
    """Loads a StableVideo data folder (config, frames, NLA checkpoint) with clear errors."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise SvEngineError(f"Data folder not found: {root}.", "pass a StableVideo data folder, e.g. data/blackswan.")
    config = read_config(root)
    nla, sha = load_checkpoint(root / "checkpoint")
    frames, files = load_frames(root, config)
    return VideoData(root, config, frames, nla, sha, files)


def write_video_data(root: str | Path, frames: np.ndarray, nla: NLAModel, extra_checkpoint: dict | None = None) -> Path:
    """Writes a data folder in StableVideo's exact format.

    frames: (T, H, W, 3) uint8; written as ``<root>/<name>/00000.jpg``...; the checkpoint holds the
    four state dicts under the original keys (plus ``iteration`` like NLA's).
    """
    root = Path(root)
    t, h, w, _ = frames.shape
    (root / root.name).mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"resx": w, "resy": h, "number_of_frames": t}, indent=2))
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(root / root.name / f"{i:05d}.jpg", quality=92)
    checkpoint = {**nla.state_dict(), "iteration": 0, **(extra_checkpoint or {})}
    torch.save(checkpoint, root / "checkpoint")
    return root
