"""The one check of an edit's inputs, run before any model loads: shared by ``sv-engine edit``, the render
service (``POST /jobs``, 422 on failure) and ``sv-engine batch`` (the job is recorded invalid, not run).

Everything an edit reads from the user is checked here against the data it names: the data folder
(config.json, enough readable frames, an NLA checkpoint of the original architecture), the prompts,
the keyframes against the video's frame count, and the edit's knobs (:meth:`EditParams.validate`).
Errors are :class:`SvEngineError` with ``field`` naming the input (the CLI shows its flag).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from PIL import Image
from sv_engine.stablevideo.data import VideoConfig, frame_files, read_checkpoint, read_config
from sv_engine.stablevideo.keyframes import check_keyframes
from sv_engine.stablevideo.nla import NLAModel
from sv_engine.stablevideo.params import EditParams

from sv_engine.errors import SvEngineError, about


def check_edit_inputs(data_dir: str | Path, params: EditParams) -> VideoConfig:
    """Raises :class:`SvEngineError` for the first input an edit of ``data_dir`` with ``params`` would fail on."""
    check_prompts(params)
    config = check_data_folder(data_dir)
    if params.keyframes is not None:
        with about("keyframes"):
            check_keyframes(params.keyframes, config.num_frames)
    params.validate()
    return config


def check_prompts(params: EditParams) -> None:
    for field, prompt, example in (
        ("fg_prompt", params.fg_prompt, "a red car"),
        ("bg_prompt", params.bg_prompt, "a snowy mountain road"),
    ):
        if not prompt.strip():
            raise SvEngineError(
                "the prompt is empty.", f"describe what it should become, e.g. {example!r}.", field=field
            )


def check_data_folder(data_dir: str | Path) -> VideoConfig:
    """A StableVideo data folder an edit can read: config.json, at least its number of readable frames, a checkpoint."""
    root = Path(data_dir).expanduser()
    with about("data"):
        if not root.is_dir():
            raise SvEngineError(
                f"Data folder not found: {root}.", "pass a StableVideo data folder, e.g. data/blackswan."
            )
        config = read_config(root)
        check_frames(root, config)
        check_checkpoint(root / "checkpoint")
    return config


def check_frames(root: Path, config: VideoConfig) -> None:
    files = frame_files(root)
    if len(files) < config.num_frames:
        raise SvEngineError(
            f"{root / root.name} holds {len(files)} jpg/png frames but config.json says {config.num_frames}.",
            "add the missing frames or lower number_of_frames in config.json.",
        )
    for path in files[: config.num_frames]:
        try:
            with Image.open(path) as img:  # decoded (JPEGs at 1/8 scale: cheap), so truncated files fail here too
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
        except OSError as err:
            raise SvEngineError(f"Cannot read frame {path}: {err}.", "replace the corrupt frame file.") from err


@functools.cache
def _nla_shapes() -> dict[str, dict[str, torch.Size]]:
    with torch.device("meta"):  # shapes only: no weights are initialised
        return {key: {k: v.shape for k, v in sd.items()} for key, sd in NLAModel.random().state_dict().items()}


def check_checkpoint(path: Path) -> None:
    """An NLA checkpoint that loads: a readable torch file holding the four networks of the original architecture
    (their tensor shapes compared, so no network is built)."""
    checkpoint, _ = read_checkpoint(path)
    for key, shapes in _nla_shapes().items():
        state = checkpoint[key]
        got = {k: v.shape for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
        if got != shapes:
            raise SvEngineError(
                f"NLA checkpoint {path} does not match the original architecture ({key}).",
                "use an original NLA checkpoint (fg mapping 6 layers, bg mapping 4, atlas 8 with skips 4 and 7, "
                "alpha 8).",
            )
