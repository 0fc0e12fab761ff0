"""Image conversions with torchvision's conventions (no torchvision dependency) and PNG reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sv_engine.errors import SvEngineError


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float [0, 1] (torchvision ToTensor)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] -> (H, W, 3) uint8, truncating like ToPILImage."""
    return (tensor.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def read_png(path: str | Path, mode: str = "RGB") -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise SvEngineError(f"Image not found: {path}.", "pass an existing PNG file.")
    try:
        with Image.open(path) as img:
            return np.array(img.convert(mode))  # a writable copy: torch.from_numpy warns on read-only arrays
    except OSError as err:
        raise SvEngineError(f"Cannot read image {path}: {err}.", "pass a valid PNG/JPEG image.") from err
