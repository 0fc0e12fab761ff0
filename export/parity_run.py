"""Parity of a backend vs the PyTorch fp32 reference, per exported component and end to end.

:func:`run_parity`, per model: build the fp32 spec (the reference) and the spec in the requested
precision, export it to ONNX (ONNX backends) or take its torch module (torch backends), run both on
the same seeded sample inputs, and report :func:`sv_engine.engine.parity.compare` metrics + pass/fail
against :data:`sv_engine.engine.parity.THRESHOLDS`.

:func:`run_edit_parity`: one whole edit with the backend's models against the same edit (same seed)
by the torch fp32 pipeline: PSNR of the rendered frames against
:data:`sv_engine.engine.parity.PSNR_MIN_DB`.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sv_engine.engine.backend import load_manifest
from sv_engine.engine.parity import PSNR_MIN_DB, THRESHOLDS, compare_outputs, psnr
from sv_engine.engine.registry import backend_class, get_backend
from sv_engine.export.onnx_export import reuse_or_export, write_manifest
from sv_engine.export.registry import build_specs
from sv_engine.export.spec import DEFAULT_SHAPES, ShapeRange

from sv_engine.device import resolve_device

logger = logging.getLogger(__name__)


def run_parity(
    components: Any,
    nla: Any,
    backend: str = "ort",
    precision: str = "fp32",
    models: list[str] | None = None,
    shapes: ShapeRange = DEFAULT_SHAPES,
    device: str | None = None,
    onnx_dir: str | Path | None = None,
    options: Any = None,
    symbols: dict[str, dict[str, int]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Returns ``{"backend", "precision", "device", "thresholds", "models": {name: result}, "ok"}``.

    ``onnx_dir``: reuse/keep the exported ONNX there (default: a temporary directory). ``symbols``:
    per-model symbol overrides of the sample inputs (default: the profile's opt point).
    """
    dev = resolve_device(device)
    ref_specs = build_specs(components, nla, names=models, precision="fp32", shapes=shapes, device=dev)
    test_specs = build_specs(components, nla, names=models, precision=precision, shapes=shapes, device=dev)
    be = get_backend(backend, device=dev, options=options)
    needs_onnx = backend_class(backend).needs == "onnx"
    tmp = None
    if needs_onnx and onnx_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sv-parity-")
        onnx_dir = tmp.name
    report: dict[str, Any] = {
        "backend": backend,
        "precision": precision,
        "device": str(dev),
        "thresholds": {precision: vars(THRESHOLDS[precision])},
        "models": {},
        "ok": True,
    }
    try:
        existing = {}
        if needs_onnx and onnx_dir is not None and (Path(onnx_dir) / "manifest.json").exists():
            existing = load_manifest(onnx_dir)
        exported = dict(existing)
        for name, spec in test_specs.items():
            if progress:
                progress(name)
            entry: dict[str, Any] = {}
            try:
                ref_spec = ref_specs[name]
                over = (symbols or {}).get(name, ref_spec.export_symbols())
                inputs = ref_spec.sample_inputs("opt", seed=0, device=dev, **over)
                with torch.inference_mode():
                    ref_out = ref_spec.torch_module()(*[inputs[n] for n in ref_spec.input_names()])
                ref = dict(zip(ref_spec.output_names(), ref_out, strict=False))
                t0 = time.perf_counter()
                if needs_onnx:
                    src = exported[name] = reuse_or_export(spec, onnx_dir, existing, be.onnx_attention)
                    entry["attention"] = src.attention
                    entry["export_or_load_s"] = round(time.perf_counter() - t0, 3)
                else:
                    src = spec.model_source()
                t1 = time.perf_counter()
                model = be.compile(src)
                entry["compile_s"] = round(time.perf_counter() - t1, 3)
                out = model(**inputs)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                entry.update(compare_outputs(ref, out, "fp32" if spec.precision == "fp32" else precision))
                entry["precision"] = spec.precision
                entry["input_shapes"] = {n: list(t.shape) for n, t in inputs.items()}
            except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others
                logger.exception("parity of %s failed", name)
                entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            report["models"][name] = entry
            report["ok"] = report["ok"] and bool(entry.get("ok"))
        if needs_onnx and exported and tmp is None:
            write_manifest(onnx_dir, exported.values())
    finally:
        if tmp is not None:
            tmp.cleanup()
    return report


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """``(model, output, max_abs, max_rel, cosine, status)`` rows for a table."""
    rows = []
    for name, entry in report["models"].items():
        if "error" in entry:
            rows.append((name, "-", "-", "-", "-", f"ERROR {entry['error'][:80]}"))
            continue
        for out, m in entry["outputs"].items():
            rows.append(
                (
                    name,
                    out,
                    f"{m['max_abs']:.3e}",
                    f"{m['max_rel']:.3e}",
                    f"{m['cosine']:.6f}",
                    "ok" if m["ok"] else f"FAIL {m['why']}",
                )
            )
    return rows


def run_edit_parity(
    components: Any,
    data_dir: str | Path,
    params: Any,
    backend: str = "ort",
    precision: str = "fp32",
    shapes: ShapeRange = DEFAULT_SHAPES,
    device: str | None = None,
    onnx_dir: str | Path | None = None,
    options: Any = None,
) -> dict[str, Any]:
    """``{"psnr_db", "min_db", "ok", "frames", "seed", ...}``: the frames of one edit of ``data_dir`` with
    ``params`` (give a fixed seed) on ``backend`` in ``precision`` against the torch fp32 pipeline's.

    ``components`` (fp32) serve the reference; the backend's edit gets a copy in ``precision``.
    """
    from sv_engine.engine.registry import TorchOptions, resolve_choice
    from sv_engine.export.compose import RuntimeConfig, build_pipeline
    from sv_engine.stablevideo.model_source import resolve_precision, to_edit_precision

    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    reference = to_edit_precision(components, dev, torch.float32)
    candidate = reference if dtype == torch.float32 else to_edit_precision(copy.deepcopy(reference), dev, dtype)
    t0 = time.perf_counter()
    torch_fp32 = RuntimeConfig(device=str(dev), backend="torch", options=TorchOptions())
    ref_frames = build_pipeline(torch_fp32, components=reference).pipeline.edit(data_dir, params).frames
    ref_s = time.perf_counter() - t0
    choice = resolve_choice(backend)  # the backend as named, with its registry options: no edit policy
    config = RuntimeConfig(
        precision=precision,
        device=str(dev),
        backend=choice.backend,
        options=options if options is not None else choice.options,
        shapes=shapes,
        onnx_dir=str(onnx_dir) if onnx_dir else None,
    )
    pipeline = build_pipeline(config, components=candidate).pipeline
    t0 = time.perf_counter()
    frames = pipeline.edit(data_dir, params).frames
    db = psnr(ref_frames, frames)
    return {
        "psnr_db": db,
        "min_db": PSNR_MIN_DB[precision],
        "ok": db >= PSNR_MIN_DB[precision],
        "backend": backend,
        "precision": precision,
        "frames": list(frames.shape),
        "seed": params.seed,
        "data": str(data_dir),
        "reference_edit_s": round(ref_s, 2),
        "edit_s": round(time.perf_counter() - t0, 2),
    }
