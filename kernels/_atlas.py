"""Atlas conventions shared by render and warp: channels-last (H_a, W_a, 3 or 4), fp32 or fp16."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sv_engine.kernels import _checks

from sv_engine.errors import SvEngineError

ATLAS_DTYPES = (torch.float32, torch.float16)


def check_atlas(
    name: str, atlas: object, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A contiguous, non-empty (H_a, W_a, 3 or 4) float32/float16 atlas (of ``dtype`` if given)."""
    _checks.check_tensor(name, atlas, (dtype,) if dtype else ATLAS_DTYPES, (None, None, None), device)
    if atlas.shape[2] not in (3, 4) or atlas.shape[0] == 0 or atlas.shape[1] == 0:
        raise SvEngineError(
            f"{name} has shape {tuple(atlas.shape)}; expected a non-empty channels-last (H_a, W_a, 3 or 4) atlas.",
            "Permute a (C, H, W) atlas with .permute(1, 2, 0).contiguous().",
        )
    return atlas


def rgba(atlas: torch.Tensor) -> torch.Tensor:
    """The atlas with 4 channels, the kernels' texel (one 16-/8-byte load); 3 channels get a zero A.

    Costs one copy of the atlas per call for C = 3: store atlases as RGBA to skip it.
    """
    return atlas if atlas.shape[2] == 4 else F.pad(atlas, (0, 1))


def sample_rgb(atlas: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    """``F.grid_sample`` of a channels-last atlas at (T, H, W, 2) grids -> (T, H, W, 3) float32.

    Bilinear, align_corners=False, ``padding`` = "zeros" | "border". The atlas is upcast to float32
    (exactly, for fp16), as the kernels do.
    """
    image = atlas[..., :3].permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, H_a, W_a)
    t, h, w, _ = grid.shape
    out = F.grid_sample(image, grid.reshape(1, t * h, w, 2), mode="bilinear", padding_mode=padding, align_corners=False)
    return out[0].permute(1, 2, 0).reshape(t, h, w, 3)
