"""Numerical parity of a backend against the PyTorch fp32 reference.

:func:`compare` -> max abs error, max relative error, cosine similarity (+ finiteness) of one output;
:data:`THRESHOLDS` says what each (precision) run must reach and why; :func:`psnr` is the hook for the
end-to-end check of rendered frames (uint8 arrays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Threshold:
    max_rel: float | None  # max |a-b| / (max |ref| + eps); None = not checked
    min_cosine: float
    reason: str


#: Pass criteria per precision of the engine under test (vs the torch fp32 reference, same inputs).
THRESHOLDS: dict[str, Threshold] = {
    "fp32": Threshold(
        max_rel=1e-4,  # of the output's max magnitude (see compare()); TF32 must be off (ORT: use_tf32=0)
        min_cosine=0.99999,
        reason="fp32 kernels differ from torch only in summation order/fused ops (ORT/TRT conv algorithms, "
        "GELU/softmax fusions): errors stay at ~1e-5..1e-4 of the output scale.",
    ),
    "fp16": Threshold(
        max_rel=None,
        min_cosine=0.999,
        reason="fp16 has an 11-bit mantissa (≈5e-4 relative per op) and errors accumulate through the "
        "network, so elementwise error is not a meaningful bound; the direction of each output "
        "(cosine ≥ 0.999 per component) is what keeps the denoising trajectory on track.",
    ),
    "tf32": Threshold(
        max_rel=None,
        min_cosine=0.9999,
        reason="TF32 matmuls keep a 10-bit mantissa but fp32 accumulation: between fp32 and fp16.",
    ),
}

#: End-to-end: PSNR (dB) of frames rendered by an engine vs by the torch fp32 reference.
PSNR_MIN_DB: dict[str, float] = {
    "fp32": 40.0,  # visually identical; only rounding of the final uint8 conversion differs
    "fp16": 30.0,  # fp16 noise through 20–50 DDIM steps is amplified; 30 dB is not visible in video
}


def compare(ref: torch.Tensor | np.ndarray, out: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Metrics of ``out`` against ``ref`` (both cast to float64 on the CPU).

    Returns ``{"max_abs", "max_rel", "cosine", "ref_max_abs", "finite", "shape"}`` where
    ``max_rel = max|out-ref| / (max|ref| + 1e-12)`` (scale-aware, avoids division by near-zero
    elements) and ``cosine`` is between the flattened tensors.
    """
    r = torch.as_tensor(ref).detach().to("cpu", torch.float64).flatten()
    o = torch.as_tensor(out).detach().to("cpu", torch.float64).flatten()
    if r.shape != o.shape:
        return {
            "shape_mismatch": True,
            "ref_shape": list(torch.as_tensor(ref).shape),
            "shape": list(torch.as_tensor(out).shape),
            "finite": False,
            "max_abs": math.inf,
            "max_rel": math.inf,
            "cosine": -1.0,
        }
    finite = bool(torch.isfinite(o).all())
    diff = (o - r).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    ref_max = float(r.abs().max()) if r.numel() else 0.0
    denom = float(r.norm() * o.norm())
    cosine = float((r @ o) / denom) if denom > 0 else (1.0 if float(diff.max() if diff.numel() else 0) == 0 else 0.0)
    return {
        "max_abs": max_abs,
        "max_rel": max_abs / (ref_max + 1e-12),
        "cosine": cosine,
        "ref_max_abs": ref_max,
        "finite": finite,
        "shape": list(torch.as_tensor(out).shape),
    }


def passes(metrics: dict[str, Any], precision: str) -> tuple[bool, str]:
    """``(ok, why)`` of one output's metrics against :data:`THRESHOLDS[precision]`."""
    th = THRESHOLDS[precision]
    if metrics.get("shape_mismatch"):
        return False, f"shape {metrics['shape']} != reference {metrics['ref_shape']}"
    if not metrics["finite"]:
        return False, "non-finite values (NaN/inf)"
    if th.max_rel is not None and metrics["max_rel"] > th.max_rel:
        return False, f"max_rel {metrics['max_rel']:.2e} > {th.max_rel:.0e}"
    if metrics["cosine"] < th.min_cosine:
        return False, f"cosine {metrics['cosine']:.6f} < {th.min_cosine}"
    return True, "ok"


def compare_outputs(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor], precision: str) -> dict[str, Any]:
    """Per-output metrics + pass/fail for a whole model call."""
    result: dict[str, Any] = {"outputs": {}, "ok": True}
    for name, r in ref.items():
        m = compare(r, out[name])
        ok, why = passes(m, precision)
        m.update(ok=ok, why=why)
        result["outputs"][name] = m
        result["ok"] = result["ok"] and ok
    return result


def psnr(a: np.ndarray, b: np.ndarray, max_value: float = 255.0) -> float:
    """PSNR in dB between two uint8 frame arrays of the same shape (e.g. (T, H, W, 3)); inf if equal.

    The end-to-end hook: frames rendered by an engine vs by the torch fp32 reference.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(max_value**2 / mse)
