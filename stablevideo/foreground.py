"""Foreground keyframe propagation (StableVideo's ``advanced_edit_foreground``).

Keyframe 0 is generated from noise with the canny ControlNet; every next keyframe starts from the
previous keyframe's edit warped through the atlas into this crop (VAE encode, partial noising to
``int(steps·strength)``, DDIM denoise). Each edit is splatted into atlas space; the keyframe atlases
are combined by median (or the aggregation net) and cropped to the fg atlas bounding box.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from sv_engine.kernels import splat_to_atlas, warp_atlas
from sv_engine.stablevideo.aggregate import median_aggregate, train_aggregation_net
from sv_engine.stablevideo.atlas import AtlasData, crop_image
from sv_engine.stablevideo.images import tensor_to_image
from sv_engine.stablevideo.keyframes import (
    KeyframeCrop,
    canny_control,
    crop_uv_range,
    normalized_grid,
    resize_image,
    sample_keyframe_crops,
)
from sv_engine.stablevideo.models.diffusion import ControlledDenoiser, img2img, txt2img
from sv_engine.stablevideo.params import EditParams
from sv_engine.stablevideo.stage_timer import StageTimer

log = logging.getLogger(__name__)


@dataclass
class ForegroundEdit:
    atlas: torch.Tensor  # (3, h, w) edited fg atlas cropped to AtlasData.fg_bbox, [0, 1]
    keyframe_edits: list[np.ndarray]  # per keyframe (h_k, w_k, 3) uint8, after × alpha
    keyframe_atlases: torch.Tensor  # (K, 3, R, R) each keyframe splatted into atlas space
    crops: list[KeyframeCrop]
    aggregation_losses: list[float] | None = None


def channels_last(image: torch.Tensor) -> torch.Tensor:
    return image.permute(1, 2, 0).contiguous()


def warp_previous_edit(atlas: torch.Tensor, grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The previous keyframe's atlas seen through this crop's uvs, as the uint8 init image of ``size`` (W, H)."""
    warped, _ = warp_atlas(channels_last(atlas), grid[None].contiguous())
    image = Image.fromarray(tensor_to_image(warped[0].clamp(0, 1)))
    return np.asarray(image.resize(size))  # PIL default resampling, like SV


def splat_edit(edit: torch.Tensor, grid: torch.Tensor, resolution: int) -> torch.Tensor:
    """Splat an edited crop (3, h, w) into a resolution² atlas.

    Points are ``(grid·0.5 + 0.5)·R`` on the integer grid, as SV's griddata call; note the half-pixel
    offset against the warp (grid_sample with align_corners False samples pixel i at i + 0.5): it is
    in the original and kept here on purpose.
    """
    points = ((grid * 0.5 + 0.5) * resolution).contiguous()
    atlas, _ = splat_to_atlas(points, edit.contiguous(), resolution)
    return atlas


@torch.no_grad()
def edit_foreground(
    data: AtlasData,
    denoiser: ControlledDenoiser,
    params: EditParams,
    keyframes: list[int],
    seed: int,
    timer: StageTimer | None = None,
    on_keyframe: Callable[[int, int, np.ndarray], None] | None = None,
) -> ForegroundEdit:
    """``on_keyframe(index, frame, image)`` is told each keyframe's edit (uint8, × alpha) as soon as it exists."""
    timer = timer or StageTimer(enabled=False)
    device = data.alpha.device
    res = data.resolution
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with timer("keyframe crops"):
        crops = sample_keyframe_crops(data, keyframes, random.Random(seed), generator)
        lo, hi = crop_uv_range(crops, res)
        grids = [normalized_grid(crop, lo, hi) for crop in crops]
    prompt = f"{params.fg_prompt}, {params.fg_added_prompt}"
    atlases: list[torch.Tensor] = []
    edits: list[np.ndarray] = []
    edit_tensors: list[torch.Tensor] = []
    sources = [resize_image(tensor_to_image(crop.image), params.image_resolution) for crop in crops]
    sizes = [source.shape[:2] for source in sources]
    # the later keyframes' new generation sizes get ready while the first ones are edited
    denoiser.prepare(dict.fromkeys(size for size in sizes[1:] if size != sizes[0]))
    for i, (crop, grid, source) in enumerate(zip(crops, grids, sources, strict=True)):
        height, width = source.shape[:2]
        control = canny_control(source, params.canny_low, params.canny_high)
        common = dict(
            steps=params.steps, cfg=params.cfg, control_scale=params.control_scale, generator=generator, progress=True
        )
        with timer("keyframe diffusion"):
            if i == 0:
                result = txt2img(denoiser, prompt, params.fg_negative_prompt, control, **common)[0]
            else:
                with timer("atlas warp"):
                    init = warp_previous_edit(atlases[i - 1], grid, (width, height))
                result = img2img(
                    denoiser, init, prompt, params.fg_negative_prompt, control, strength=params.strength, **common
                )[0]
        # Back to the crop size (PIL default resampling), to [0, 1], times alpha: SV's keyframe edit.
        edit = np.array(Image.fromarray(result).resize((crop.w, crop.h)))
        edit_t = torch.from_numpy(edit).to(device).permute(2, 0, 1).float() / 255.0 * crop.alpha
        edit_tensors.append(edit_t)
        edits.append(tensor_to_image(edit_t))
        if on_keyframe is not None:
            on_keyframe(i, crop.frame, edits[-1])
        with timer("splat"):
            atlases.append(splat_edit(edit_t, grid, res))
        log.info(
            "keyframe %d (frame %d) edited: crop %dx%d, generated at %dx%d",
            i,
            crop.frame,
            crop.w,
            crop.h,
            width,
            height,
        )
    stack = torch.stack(atlases)
    with timer("aggregation"):
        aggregated = median_aggregate(stack)
        losses = None
        if params.aggregation == "net":

            def reconstruct(atlas: torch.Tensor) -> list[torch.Tensor]:
                return [
                    torch.nn.functional.grid_sample(atlas[None], g[None], mode="bilinear", align_corners=False)[
                        0
                    ].clamp(0, 1)
                    for g in grids
                ]

            aggregated, losses = train_aggregation_net(
                aggregated, reconstruct, edit_tensors, iterations=params.aggregation_iterations, seed=seed
            )
    cropped = crop_image(aggregated, *data.fg_bbox)
    return ForegroundEdit(cropped, edits, stack, crops, losses)
