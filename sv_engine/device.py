"""Choosing the torch device, with a clear error when CUDA is asked for but absent (the one resolver of
the CLI, the composition root, the engine's backends, fit and the benchmarks)."""

from __future__ import annotations

import torch

from sv_engine.errors import SvEngineError


def default_device() -> torch.device:
    """cuda if torch sees a GPU, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> :func:`default_device`; "cuda"/"cuda:N"/"cpu" (or a torch.device) validated."""
    if name is None or name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SvEngineError(
            f"Unknown device {name!r}.", "use cpu or cuda (cuda:N for another GPU).", field="device"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SvEngineError(
            "CUDA was requested but no CUDA GPU is available to torch.",
            "run with $device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU.",
            field="device",
        )
    if device.type not in ("cpu", "cuda"):
        raise SvEngineError(f"Unsupported device {name!r}.", "use cpu or cuda.", field="device")
    return device
