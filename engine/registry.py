"""The backend registry: every runtime's name and aliases, and the lookups over them."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from sv_engine.engine.backend import Backend

from sv_engine.errors import SvEngineError

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, str] = {
    "torch": "sv_engine.engine.torch_backend:TorchBackend",
    "torch_compile": "sv_engine.engine.torch_compile_backend:TorchCompileBackend",
    "ort": "sv_engine.engine.ort_backend:OrtBackend",
    "trt": "sv_engine.engine.trt_backend:TrtBackend",
}
_ALIASES = {"eager": "torch", "compile": "torch_compile", "onnxruntime": "ort", "tensorrt": "trt"}


def backend_class(name: str) -> type[Backend]:
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise SvEngineError(f"Unknown backend {name!r}.", f"Use one of {sorted(_REGISTRY)}.")
    module_name, cls_name = _REGISTRY[key].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def get_backend(name: str, device: str | torch.device | None = None, **options: Any) -> Backend:
    """The backend ``name`` (``torch``, ``torch_compile``, ``ort``, ``trt``) on ``device``.

    Raises :class:`SvEngineError` for an unknown name or a backend whose package is not installed /
    cannot run on the device (the fix names the pip package).
    """
    return backend_class(name)(device=device, **options)


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends usable on ``device`` (default: cuda if present else cpu), fastest first."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = []
    for name in _REGISTRY:
        cls = backend_class(name)
        try:
            ok, _ = cls.availability(dev)
        except Exception:  # noqa: BLE001 - an optional runtime that fails to import is simply unavailable
            ok = False
        if ok:
            names.append(name)
    col = 0 if dev.type == "cuda" else 1
    return sorted(names, key=lambda n: -backend_class(n).speed_rank[col])


def backend_status(device: str | torch.device | None = None) -> dict[str, str]:
    """``{name: "ok" | reason}`` for every registered backend (for `sv-engine info`)."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {}
    for name in _REGISTRY:
        try:
            ok, reason = backend_class(name).availability(dev)
        except Exception as exc:  # noqa: BLE001
            ok, reason = False, str(exc)
        out[name] = "ok" if ok else reason
    return out


def default_backend(device: str | torch.device | None = None) -> str:
    """The fastest available backend name on ``device`` (logged)."""
    names = available_backends(device)
    choice = names[0] if names else "torch"
    logger.info("default backend: %s (available: %s)", choice, ", ".join(names))
    return choice
