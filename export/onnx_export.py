"""Export :class:`~sv_engine.export.spec.ExportSpec` models to ONNX + a manifest.

Per model: ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``, opset 17, dynamic axes from
the spec) → ``onnx.checker`` → shape inference → constant folding (polygraphy) + cleanup/toposort
(onnx-graphsurgeon) → save (one file below 2 GB, else weights as external data ``<name>.onnx.data``)
→ sha256. fp16 exports are first run on the sample inputs in torch and refused if any output is
NaN/inf (the GroupNorm/attention guards of :func:`~sv_engine.export.spec.prepare_for_precision`
should prevent that).

``manifest.json`` lists every model: name, file, inputs (name, dtype, symbolic shape, min/opt/max
profile), outputs, precision, sha256, external data files, exporter versions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from sv_engine.engine.backend import MANIFEST_NAME, ModelSource
from sv_engine.engine.engine_cache import file_sha256
from sv_engine.export.ort_attention import attention_export
from sv_engine.export.spec import ExportSpec

from sv_engine.errors import SvEngineError

logger = logging.getLogger(__name__)

#: Models over protobuf's hard limit (2**31 - 1 bytes) must keep their weights as external data; this
#: leaves headroom below it (graph structure + inferred shapes add to the initializers).
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)


def _initializer_bytes(model) -> int:
    import onnx

    total = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for kv in init.external_data:
                if kv.key == "length":
                    total += int(kv.value)
        else:
            total += len(init.raw_data) or 0
    return total


def check_finite(
    spec: ExportSpec, inputs: dict[str, torch.Tensor], module: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Runs the prepared module (default: the export form) on ``inputs``; raises if an output is
    NaN/inf (fp16 overflow guard)."""
    module = module if module is not None else spec.torch_module()
    with torch.inference_mode():
        outs = module(*[inputs[n] for n in spec.input_names()])
    outs = (outs,) if isinstance(outs, torch.Tensor) else outs
    named = dict(zip(spec.output_names(), outs, strict=False))
    bad = [n for n, t in named.items() if not torch.isfinite(t).all()]
    if bad:
        raise SvEngineError(
            f"{spec.name} in {spec.precision} produces NaN/inf in {bad} on its sample inputs.",
            "Export this model in $precision fp32 (or keep more layers in fp32).",
            mentions=("precision",),
        )
    return named


def _torch_export(spec: ExportSpec, module: torch.nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> None:
    args = tuple(inputs[n] for n in spec.input_names())
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings / the legacy-exporter deprecation notice
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=spec.opset,
            input_names=spec.input_names(),
            output_names=spec.output_names(),
            dynamic_axes=spec.dynamic_axes(),
            do_constant_folding=True,
        )


def _optimize(model, name: str):
    """Constant folding (polygraphy) + dead-node cleanup and toposort (graphsurgeon); best effort."""
    try:
        from polygraphy.backend.onnx import fold_constants
        from polygraphy.logger import G_LOGGER

        G_LOGGER.module_severity = G_LOGGER.ERROR

        model = fold_constants(model, num_passes=2, allow_onnxruntime_shape_inference=False, error_ok=True)
    except Exception as exc:  # noqa: BLE001 - folding is an optimisation; an unfoldable graph is still valid
        logger.warning("%s: polygraphy constant folding skipped (%s)", name, exc)
    try:
        import onnx_graphsurgeon as gs

        graph = gs.import_onnx(model)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model = gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:  # noqa: BLE001
        logger.warning("%s: graphsurgeon cleanup skipped (%s)", name, exc)
    return model


def export_onnx(
    spec: ExportSpec,
    out_dir: str | Path,
    *,
    optimize: bool = True,
    check: bool = True,
    inputs: dict[str, torch.Tensor] | None = None,
    attention: str = "onnx",
) -> ModelSource:
    """Exports one spec to ``<out_dir>/<name>.onnx`` and returns its :class:`ModelSource` (with sha256).

    ``attention``: ``"onnx"`` exports the classic fp32-upcast attention in standard operators,
    ``"ort"`` the fused form as ONNX Runtime's ``MultiHeadAttention`` (:mod:`~sv_engine.export.ort_attention`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    inputs = inputs if inputs is not None else spec.sample_inputs("opt", **spec.export_symbols())
    with attention_export(spec.torch_module(fused_attention=attention == "ort"), attention) as module:
        source = _export_checked(spec, module, inputs, out_dir, optimize, check)
    logger.info(
        "exported %s (%s, %s attention) in %.1fs", spec.name, spec.precision, attention, time.perf_counter() - t0
    )
    return dataclasses.replace(source, attention=attention)


def _export_checked(
    spec: ExportSpec,
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    out_dir: Path,
    optimize: bool,
    check: bool,
) -> ModelSource:
    import onnx

    if spec.precision == "fp16":
        check_finite(spec, inputs, module)
    final = out_dir / f"{spec.name}.onnx"
    data_name = f"{spec.name}.onnx.data"
    for stale in (final, out_dir / data_name):
        stale.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{spec.name}-") as tmp:
        raw = Path(tmp) / f"{spec.name}.onnx"
        try:
            _torch_export(spec, module, inputs, raw)
        except SvEngineError:
            raise
        except Exception as exc:
            raise SvEngineError(
                f"torch.onnx.export failed for {spec.name}: {type(exc).__name__}: {exc}",
                "Report the model config; try $precision fp32 or a smaller $models list.",
                mentions=("precision", "models"),
            ) from exc
        model = onnx.load(str(raw), load_external_data=True)
        big = _initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
        if not big:
            if check:
                onnx.checker.check_model(model)
            model = onnx.shape_inference.infer_shapes(model)
            if optimize:
                model = _optimize(model, spec.name)
            onnx.save_model(model, str(final))
        else:
            logger.info("%s is > 2 GB: weights go to %s; folding skipped (protobuf limit)", spec.name, data_name)
            onnx.save_model(
                model,
                str(final),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            del model
            if check:
                onnx.checker.check_model(str(final))
            onnx.shape_inference.infer_shapes_path(str(final), str(final))
    external = [data_name] if (out_dir / data_name).exists() else []
    sha = file_sha256([final, *[out_dir / f for f in external]])
    return spec.model_source(onnx_path=final, sha256=sha, external_data=external, with_module=False)


def reuse_or_export(
    spec: ExportSpec, out_dir: str | Path, exported: dict[str, ModelSource], attention: str = "onnx"
) -> ModelSource:
    """``exported[spec.name]`` when it is this spec's precision and attention form, else a fresh export."""
    source = exported.get(spec.name)
    if source is None or source.precision != spec.precision or source.attention != attention:
        logger.info("exporting %s (%s, %s attention) to %s", spec.name, spec.precision, attention, out_dir)
        source = export_onnx(spec, out_dir, attention=attention)
    return source


def write_manifest(out_dir: str | Path, sources: Iterable[ModelSource], extra: dict[str, Any] | None = None) -> Path:
    """Writes ``<out_dir>/manifest.json`` for ``sources``."""
    import onnx

    out_dir = Path(out_dir)
    manifest = {
        "format": "sv-engine-export/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        **(extra or {}),
        "models": [s.to_manifest() for s in sources],
    }
    path = out_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=1))
    return path


def prepare_out_dir(out_dir: str | Path, force: bool) -> Path:
    """Creates ``out_dir``; refuses an existing non-empty one unless ``force`` (then empties it)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise SvEngineError(
                f"The output directory {out_dir} exists and is not empty.",
                "Pass $force to overwrite it, or choose another one.",
                field="out",
                mentions=("force",),
            )
        if out_dir.is_dir():
            for child in out_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def export_all(
    specs: dict[str, ExportSpec],
    out_dir: str | Path,
    *,
    force: bool = False,
    extra: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    optimize: bool = True,
    attention: str = "onnx",
) -> dict[str, ModelSource]:
    """Exports every spec into ``out_dir`` and writes the manifest; returns ``{name: ModelSource}``."""
    out_dir = prepare_out_dir(out_dir, force)
    sources: dict[str, ModelSource] = {}
    for name, spec in specs.items():
        if progress:
            progress(name)
        sources[name] = export_onnx(spec, out_dir, optimize=optimize, attention=attention)
    write_manifest(out_dir, sources.values(), extra)
    return sources


def disk_usage(out_dir: str | Path) -> int:
    return sum(os.path.getsize(p) for p in Path(out_dir).rglob("*") if p.is_file())
