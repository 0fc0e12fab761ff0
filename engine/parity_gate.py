"""The auto backend's parity gate: a backend is picked automatically only after it passed a parity
probe against torch on this machine.

The first time ``--backend auto`` would pick a backend other than torch on a machine (GPU, torch
version and the backend's runtime version), :func:`gated_default_backend` runs the caller's probe
(sv_engine.export.runtime.parity_probe: a tiny UNet+ControlNet through the backend vs torch) and
records the verdict beside the engines (``<cache>/engines/parity-gate.json``). A backend that failed,
or whose probe could not run, is passed over with a warning, down to torch, which is the reference
and needs no probe. An explicit ``--backend NAME`` is never gated.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from sv_engine.engine.registry import backend_class, is_available, ranked_backends

from sv_engine.atomic_write import atomic_write_bytes
from sv_engine.paths import cache_root

logger = logging.getLogger(__name__)

#: ``probe(backend name, device) -> (passed, detail)``; raising counts as failing.
Probe = Callable[[str, torch.device], tuple[bool, str]]


def gate_file() -> Path:
    return cache_root() / "engines" / "parity-gate.json"


def machine_key(backend: str, device: torch.device) -> str:
    """What a verdict holds for: the backend, its runtime's version, the GPU and torch."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    module = backend_class(backend).__module__
    return f"{backend}|{module}|{gpu}|torch {torch.__version__}|{_runtime_version(backend)}"


def _runtime_version(backend: str) -> str:
    package = {"ort": "onnxruntime", "trt": "tensorrt"}.get(backend)
    if package is None:
        return "-"
    try:
        from importlib.metadata import version

        return f"{package} {version(package)}"
    except Exception:  # noqa: BLE001 - not installed: the backend is unavailable anyway
        return f"{package} ?"


def _read() -> dict:
    try:
        return json.loads(gate_file().read_text())
    except (OSError, ValueError):
        return {}


def recorded(backend: str, device: torch.device) -> dict | None:
    """The verdict stored for ``backend`` on this machine, or None when it was never checked."""
    return _read().get(machine_key(backend, device))


def record(backend: str, device: torch.device, passed: bool, detail: str) -> None:
    verdicts = _read()
    verdicts[machine_key(backend, device)] = {"passed": passed, "detail": detail, "checked": time.time()}
    gate_file().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(gate_file(), json.dumps(verdicts, indent=1, sort_keys=True).encode())


def verdict(backend: str, device: torch.device, probe: Probe) -> dict:
    """The recorded verdict, or the probe's (run once per machine and recorded)."""
    found = recorded(backend, device)
    if found is not None:
        return found
    logger.info("first automatic use of %s on this machine: checking parity against torch", backend)
    try:
        passed, detail = probe(backend, device)
    except Exception as exc:  # noqa: BLE001 - a probe that cannot run is a failed probe
        passed, detail = False, f"the probe failed: {type(exc).__name__}: {str(exc)[:300]}"
    record(backend, device, passed, detail)
    return {"passed": passed, "detail": detail}


def gated_default_backend(device: torch.device, probe: Probe, candidates: list[str] | None = None) -> str:
    """The fastest available backend (``candidates``, fastest first: default every backend, by
    :func:`ranked_backends`) that passed its parity probe here; torch when none did. Availability is
    checked only for the candidates ranked before torch: the others' checks import their runtimes
    (torch-compile's compiles a probe with inductor), which a cold edit does not need."""
    for name in candidates if candidates is not None else ranked_backends(device):
        if name == "torch":
            return name
        if candidates is None and not is_available(name, device):
            continue
        found = verdict(name, device, probe)
        if found["passed"]:
            logger.info("backend: %s (passed its parity probe on this machine)", name)
            return name
        logger.warning(
            "%s is not picked automatically: it failed its parity probe on this machine (%s); "
            "choosing %s explicitly still uses it",
            name,
            found["detail"],
            name,
        )
    return "torch"
