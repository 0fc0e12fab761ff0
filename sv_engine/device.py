"""Choosing the torch device, with a clear error when CUDA is asked for but absent."""

from __future__ import annotations

import torch

from sv_engine.errors import SvEngineError


def resolve_device(name: str | None) -> torch.device:
    """``None``/"auto" -> cuda if available else cpu; "cuda"/"cuda:N"/"cpu" validated."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SvEngineError(
            f"Unknown device {name!r}.", "use --device cpu or --device cuda (cuda:N for another GPU)."
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SvEngineError(
            "CUDA was requested but no CUDA GPU is available to torch.",
            "run with --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU.",
        )
    if device.type not in ("cpu", "cuda"):
        raise SvEngineError(f"Unsupported device {name!r}.", "use --device cpu or --device cuda.")
    return device
