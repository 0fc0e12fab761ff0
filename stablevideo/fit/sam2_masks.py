"""Foreground masks from SAM 2 video segmentation (transformers' ``Sam2VideoModel``) with the user's own
weights (``--mask-model DIR``: a Hugging Face folder, e.g. a download of facebook/sam2.1-hiera-tiny),
prompted by the ``--fg-box`` / ``--fg-point`` hints and propagated through the whole clip.

Nothing is downloaded. The frames are prepared here the way ``Sam2VideoProcessor`` prepares them
(resize to the model's square input, ImageNet mean / std; prompts scaled to it, a box as the two
corner points with labels 2 and 3): the processor's image code needs torchvision, which is not a
dependency of sv-engine (no CPU build of it on PyPI matches the CPU torch).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from sv_engine.stablevideo.fit.separation import Hints
from tqdm import tqdm

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

SAM2_TYPES = ("sam2_video", "sam2")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def check_sam2_folder(folder: Path) -> None:
    """One clear error unless ``folder`` holds a SAM 2 checkpoint in Hugging Face layout."""
    fix = "pass the folder of a SAM 2 checkpoint in Hugging Face layout (config.json + model.safetensors)"
    if not folder.is_dir():
        raise SvEngineError(f"{folder} is not a folder.", fix + ".", field="mask_model")
    config = folder / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as err:
        raise SvEngineError(f"{folder} has no readable config.json ({err}).", fix + ".", field="mask_model") from err
    if model_type not in SAM2_TYPES:
        raise SvEngineError(
            f"{folder} is not a SAM 2 checkpoint (config.json model_type {model_type!r}).",
            fix + ", e.g. facebook/sam2.1-hiera-tiny.",
            field="mask_model",
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise SvEngineError(f"{folder} holds no weights ({' / '.join(WEIGHT_FILES)}).", fix + ".", field="mask_model")


def _prompts(hints: Hints, num_frames: int) -> dict[int, dict]:
    """Prompts per frame: {frame: {"box": (x0, y0, x1, y1) or None, "points": [(x, y), ...]}}."""
    if not hints:
        raise SvEngineError(
            "SAM 2 needs a prompt on the object.",
            "give $fg_box X,Y,W,H[@FRAME] or $fg_point X,Y[@FRAME].",
            field="mask_model",
            mentions=("fg_box", "fg_point"),
        )
    prompts: dict[int, dict] = {}
    for b in hints.boxes:
        entry = prompts.setdefault(b.frame or 0, {"box": None, "points": []})
        if entry["box"] is not None:
            raise SvEngineError(
                f"Two boxes on frame {b.frame or 0} for SAM 2.", "give SAM 2 one box per frame.", field="fg_box"
            )
        entry["box"] = (b.x, b.y, b.x + b.w, b.y + b.h)
    for p in hints.points:
        prompts.setdefault(p.frame or 0, {"box": None, "points": []})["points"].append((p.x, p.y))
    return {f: v for f, v in prompts.items() if 0 <= f < num_frames}


@torch.no_grad()
def sam2_masks(
    folder: Path, frames: np.ndarray, hints: Hints, device: torch.device, progress: bool = True
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames -> (T, H, W) bool masks of the prompted object, SAM 2 propagated."""
    from transformers import Sam2VideoModel
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    check_sam2_folder(folder)
    t_count, h, w = frames.shape[:3]
    prompts = _prompts(hints, t_count)
    try:
        model = Sam2VideoModel.from_pretrained(str(folder)).to(device).eval()
    except Exception as err:  # transformers raises many types for a broken or mismatched checkpoint
        raise SvEngineError(
            f"Cannot load SAM 2 from {folder}: {type(err).__name__}: {err}.",
            "pass a complete SAM 2 checkpoint folder (config.json and its weights).",
        ) from err
    size = int(model.config.vision_config.backbone_config.image_size[0])
    pixels = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in frames])
    pixels = (pixels.astype(np.float32) / 255.0 - MEAN) / STD
    video = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    session = Sam2VideoInferenceSession(
        video=video,
        video_height=h,
        video_width=w,
        inference_device=device,
        video_storage_device="cpu",
        inference_state_device=device,
        dtype=torch.float32,
    )
    scale = np.array([size / w, size / h], np.float32)
    obj_idx = session.obj_id_to_idx(1)
    for frame, prompt in sorted(prompts.items()):
        coords, labels = [], []
        if prompt["box"] is not None:
            x0, y0, x1, y1 = prompt["box"]
            coords += [(x0, y0), (x1, y1)]
            labels += [2, 3]  # SAM's box corners, before any point
        coords += prompt["points"]
        labels += [1] * len(prompt["points"])
        point_coords = torch.tensor(np.array(coords, np.float32) * scale)[None, None]
        point_labels = torch.tensor(labels, dtype=torch.int32)[None, None]
        session.add_point_inputs(obj_idx, frame, {"point_coords": point_coords, "point_labels": point_labels})
        session.obj_with_new_inputs = [1]
        model(inference_session=session, frame_idx=frame)
    start = min(prompts)
    logits: dict[int, torch.Tensor] = {}
    for reverse in (False, True):
        if reverse and start == 0:
            continue
        outputs = model.propagate_in_video_iterator(session, start_frame_idx=start, reverse=reverse)
        for out in tqdm(outputs, desc="SAM 2", disable=not progress, leave=False):
            logits[out.frame_idx] = out.pred_masks[0, 0].float().cpu()
    masks = np.zeros((t_count, h, w), bool)
    for t, lo in logits.items():
        masks[t] = cv2.resize(lo.numpy(), (w, h), interpolation=cv2.INTER_LINEAR) > 0.0
    log.info("SAM 2 masks: %.1f%% of pixels foreground (%s)", 100 * masks.mean(), folder)
    return masks
