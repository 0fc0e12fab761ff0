"""MiDaS DPT-hybrid depth for the background ControlNet, as ControlNet 1.0's annotator computes it.

``apply_midas``: image (uint8 H×W×3, already ``resize_image``-d to the detect resolution)
/ 127.5 − 1 → DPT → relative inverse depth (H, W) → min-max normalised → × 255 → uint8 (truncated).

transformers' ``DPTForDepthEstimation`` (hybrid) only accepts its configured square size; MiDaS runs
any multiple of 32 by resizing the position embeddings. :func:`dpt_forward` does the same
(``predict_depth`` of :mod:`.nets.dpt`: transformers' keys, same maths), so non-square atlases work.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from sv_engine.errors import SvEngineError

logger = logging.getLogger(__name__)


def dpt_forward(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Predicted depth (B, H, W) of a :class:`~.nets.dpt.DPTForDepthEstimation` for any H, W divisible by
    the patch size."""
    config = model.config
    _, _, h, w = pixel_values.shape
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    if h % patch or w % patch:
        raise SvEngineError(
            f"Depth input {h}×{w} is not a multiple of the DPT patch size {patch}.",
            "Resize the image to multiples of 64 first (resize_image).",
        )
    return model.predict_depth(pixel_values)


@torch.no_grad()
def estimate_depth(
    model: torch.nn.Module, image_uint8_hwc: np.ndarray, detect_resolution: int | None = 384
) -> np.ndarray:
    """MiDaS depth map as uint8 (H', W'), where (H', W') = ``resize_image(image, detect_resolution)``.

    Args:
        model: a hybrid ``DPTForDepthEstimation`` (MiDaS ``dpt_hybrid`` weights).
        image_uint8_hwc: RGB uint8 H×W×3.
        detect_resolution: short side of the depth input (StableVideo: 384 by default, 512 in the UI);
            ``None`` = use the image as is (its sides must be multiples of 16).
    """
    image = np.asarray(image_uint8_hwc)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise SvEngineError(
            f"Depth input has shape {image.shape} / {image.dtype}, expected uint8 H×W×3.", "Pass an RGB uint8 image."
        )
    if model is None:
        raise SvEngineError("No depth model is loaded.", "Load the MiDaS dpt_hybrid weights.")
    if detect_resolution is not None:
        from sv_engine.stablevideo.keyframes import resize_image

        image = resize_image(image, detect_resolution)
    param = next(model.parameters())
    x = torch.from_numpy(image).to(param.device).float() / 127.5 - 1.0
    x = x.permute(2, 0, 1)[None].to(param.dtype)
    depth = dpt_forward(model, x)[0].float()
    depth = depth - depth.min()
    depth = depth / depth.max()  # a constant map gives NaN in MiDaS too; map it to 0 below
    depth = torch.nan_to_num(depth, nan=0.0)
    return (depth.cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)
