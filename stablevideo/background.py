"""Background atlas edit (StableVideo's ``depth_edit``): MiDaS depth of the bg atlas -> depth ControlNet txt2img."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from PIL import Image
from sv_engine.stablevideo.images import tensor_to_image
from sv_engine.stablevideo.keyframes import resize_image
from sv_engine.stablevideo.models.depth import estimate_depth
from sv_engine.stablevideo.models.diffusion import ControlledDenoiser, txt2img
from sv_engine.stablevideo.params import EditParams
from sv_engine.stablevideo.stage_timer import StageTimer

log = logging.getLogger(__name__)


@torch.no_grad()
def edit_background(
    bg_atlas: torch.Tensor,
    depth_model: torch.nn.Module,
    denoiser: ControlledDenoiser,
    params: EditParams,
    seed: int,
    timer: StageTimer | None = None,
    depth_memo: dict[int | None, np.ndarray] | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Edited bg atlas (3, H, W) in [0, 1] (same size as ``bg_atlas``) and the depth control used (uint8).

    ``depth_memo``: depth maps of this ``bg_atlas`` by detect resolution (the video session's), read
    before the depth model runs and filled after."""
    timer = timer or StageTimer(enabled=False)
    atlas_image = tensor_to_image(bg_atlas)
    depth = depth_memo.get(params.depth_resolution) if depth_memo is not None else None
    if depth is None:
        with timer("depth"):
            depth = estimate_depth(depth_model, atlas_image, params.depth_resolution)
        if depth_memo is not None:
            depth_memo[params.depth_resolution] = depth
    image = resize_image(atlas_image, params.image_resolution)
    height, width = image.shape[:2]
    control = cv2.resize(np.repeat(depth[..., None], 3, axis=-1), (width, height), interpolation=cv2.INTER_LINEAR)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with timer("background diffusion"):
        result = txt2img(
            denoiser,
            f"{params.bg_prompt}, {params.bg_added_prompt}",
            params.bg_negative_prompt,
            control,
            steps=params.steps,
            cfg=params.cfg,
            control_scale=params.control_scale,
            generator=generator,
            progress=True,
        )[0]
    resized = np.array(Image.fromarray(result).resize((atlas_image.shape[1], atlas_image.shape[0])))
    log.info("background atlas edited at %dx%d", width, height)
    return torch.from_numpy(resized).permute(2, 0, 1).float().div(255.0).to(bg_atlas.device), control
