"""Where an edit's models come from: tiny random (tests, demo), full-size random (benchmarks) or user weights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from sv_engine.stablevideo.models.components import SDComponents

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

#: The precisions an edit and an export run in (the one list), with their torch dtypes.
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise SvEngineError(f"Unknown precision {precision!r}.", "use fp32 or fp16.", field="precision")
    if precision == "fp16" and device.type == "cpu":
        raise SvEngineError(
            "fp16 needs a CUDA GPU (CPU kernels for half precision are slow or missing).",
            "use fp32 on CPU.",
            field="precision",
        )
    return PRECISIONS[precision]


def check_model_source(tiny: bool, random_full: bool, weights: str | Path | None) -> None:
    """Exactly one model source, and weights that exist (checked before anything loads)."""
    chosen = [name for name, on in (("tiny", tiny), ("random_full", random_full), ("weights", weights)) if on]
    if not chosen:
        raise SvEngineError(
            "No model weights given.",
            "pass $weights DIR (see README: weight formats) or $tiny for small random models.",
            mentions=("weights", "tiny"),
        )
    if len(chosen) > 1:
        raise SvEngineError(
            f"{' and '.join('$' + name for name in chosen)} are exclusive: each chooses where the models come from.",
            "pass only one of them ($weights DIR for real models, $tiny for small random ones).",
            mentions=(*chosen, "weights", "tiny"),
        )
    if weights is not None and not Path(weights).expanduser().exists():
        raise SvEngineError(
            f"Weights folder {weights} does not exist.",
            "pass an existing folder (see README: weight formats).",
            field="weights",
        )


def load_components(
    device: torch.device,
    tiny: bool = False,
    weights: Path | None = None,
    random_full: bool = False,
    precision: str = "fp32",
    seed: int = 0,
) -> SDComponents:
    """Exactly one source: ``tiny`` random models, ``random_full`` SD1.5-size random models, or ``weights``."""
    dtype = resolve_precision(precision, device)
    check_model_source(tiny, random_full, weights)
    if tiny:
        from sv_engine.stablevideo.models.tiny import build_tiny_components

        components = build_tiny_components(seed)
        log.warning("Using TINY RANDOM-WEIGHT models: the edit shows the pipeline working, not a meaningful image.")
    elif random_full:
        from sv_engine.stablevideo.models.tiny import build_random_components

        components = build_random_components(seed)
        log.warning("Using FULL-SIZE RANDOM-WEIGHT models (for latency only; outputs are noise).")
    else:
        from sv_engine.stablevideo.models.loaders import load_weights

        components = load_weights(Path(weights), dtype=dtype, device=device)
    return to_edit_precision(components, device, dtype)


def to_edit_precision(components: SDComponents, device: torch.device, dtype: torch.dtype) -> SDComponents:
    """``components`` moved to ``device`` and ``dtype`` in place for an edit: the depth model stays fp32
    (depth is estimated once per edit; fp32 avoids DPT overflow)."""
    return components.to(device=device, dtype=dtype, depth_dtype=torch.float32).eval()
