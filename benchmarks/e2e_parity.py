"""Whole-edit parity and latency per backend on a GPU (the lead's device run; CPU works with --tiny).

    python -m sv_engine.benchmarks.e2e_parity --out e2e.json [--backends torch,ort,torch-compile]
        [--onnx-dir DIR] [--frames 70 --size 768x432] [--tiny] [--budget-s 500] [--profile]

Full-size SD1.5 architectures with random weights (latency does not depend on weight values),
fp16 on CUDA. For each backend: compile (export to ONNX first where needed), one edit, then a warm
edit timed with its per-stage breakdown; the rendered frames are compared with the first backend's
edit of the same seed by PSNR (engine.parity.PSNR_MIN_DB is the bar). ``--profile`` adds one more
edit under torch.profiler (:mod:`.profile`). Each backend in try/except: one failure never loses the
others; the JSON is rewritten after each.

A backend entry may carry options, ``name:key=value:...``: backend options (e.g.
``ort:allow_spinning=1:intra_op_threads=0`` = ONNX Runtime's own thread defaults,
``torch:cuda_graphs=1`` = eager torch replayed from CUDA graphs; typed by sv_engine.engine.registry)
and the pipeline's ``overlap=0|1`` (background edit overlapped with the keyframe loop; default off).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import tempfile
import time
import traceback
from pathlib import Path

import torch
from sv_engine.benchmarks.e2e import edit_params, synth_data_dir
from sv_engine.benchmarks.timing import environment
from sv_engine.benchmarks.torch_profile import profile_call
from sv_engine.engine.parity import PSNR_MIN_DB, psnr
from sv_engine.engine.registry import BackendChoice, parse_choice
from sv_engine.export.compose import RuntimeConfig, build_pipeline
from sv_engine.export.spec import DEFAULT_SHAPES, TINY_SHAPES
from sv_engine.stablevideo.model_source import load_components

from sv_engine.device import default_device

log = logging.getLogger("sv_engine.benchmarks.e2e_parity")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def parse_variant(entry: str) -> tuple[BackendChoice, dict]:
    """``"ort:allow_spinning=1:overlap=0"`` -> (the ORT choice with its typed options, pipeline options)."""
    pairs = entry.split(":")
    overlap = [p for p in pairs[1:] if p.startswith("overlap=")]
    pipeline_options = {"overlap_background": overlap[-1].partition("=")[2] not in ("0", "false")} if overlap else {}
    return parse_choice(":".join(p for p in pairs if p not in overlap)), pipeline_options


def run(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    device = default_device()
    precision = "fp16" if device.type == "cuda" else "fp32"
    width, height = (int(v) for v in args.size.split("x"))
    result: dict = {
        "environment": environment(device),
        "precision": precision,
        "frames": args.frames,
        "size": args.size,
        "backends": {},
    }

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))

    t0 = time.perf_counter()
    components = load_components(device, tiny=args.tiny, random_full=not args.tiny, precision=precision)
    result["load_s"] = round(time.perf_counter() - t0, 2)
    data = synth_data_dir(Path(tempfile.mkdtemp(prefix="sv-e2e-")), args.frames, height, width)
    params = edit_params(args.steps, 0.8, args.tiny, seed=0)
    variants = args.backends.split(",")
    result["psnr_reference"] = variants[0]  # never a stand-in: if it fails, nothing is compared
    reference = None
    for index, variant in enumerate(variants):
        if time.perf_counter() - t_start > args.budget_s:
            result["backends"][variant] = {"status": "skipped", "reason": "time budget"}
            continue
        entry: dict = {}
        try:
            choice, pipeline_options = parse_variant(variant)
            config = RuntimeConfig(
                precision=precision,
                device=str(device),
                backend=choice.backend,
                options=choice.options,
                shapes=TINY_SHAPES if args.tiny else DEFAULT_SHAPES,
                onnx_dir=str(args.onnx_dir) if args.onnx_dir else None,
                **pipeline_options,
            )
            t0 = time.perf_counter()
            pipeline = build_pipeline(config, components=components).pipeline
            entry["compile_s"] = round(time.perf_counter() - t0, 2)
            _sync()
            t0 = time.perf_counter()
            first = pipeline.edit(data, params)
            _sync()
            entry["first_edit_s"] = round(time.perf_counter() - t0, 3)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            warm = pipeline.edit(data, params)
            _sync()
            entry.update(
                status="ok",
                warm_edit_s=round(time.perf_counter() - t0, 3),
                seconds_per_stage=warm.timings,
                first_edit_seconds_per_stage=first.timings,
                overlapped_background=warm.overlapped_background,
            )
            if device.type == "cuda":
                entry["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if index == 0:
                reference = warm.frames
            elif reference is not None:
                value = psnr(reference, warm.frames)
                entry.update(
                    psnr_db=round(value, 2), psnr_bar_db=PSNR_MIN_DB[precision], psnr_ok=value >= PSNR_MIN_DB[precision]
                )
            else:
                entry["psnr_db"] = None  # the reference variant failed
            if args.profile:
                result["backends"][variant] = entry
                save()  # a profile cut off by a time limit keeps the timing and PSNR
                entry["profile"] = profile_call(functools.partial(pipeline.edit, data, params), device)
            del pipeline, first, warm
        except Exception as exc:  # noqa: BLE001 - record and go on with the next backend
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2500:])
            log.error("%s failed: %s", variant, exc)
        result["backends"][variant] = entry
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()
    save()
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backends", default="torch,ort,torch-compile", help="the first one is the PSNR reference")
    p.add_argument("--onnx-dir", type=Path, default=None, help="reuse/keep ONNX exports here")
    p.add_argument("--frames", type=int, default=70)
    p.add_argument("--size", default="768x432")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--budget-s", type=float, default=500.0)
    p.add_argument(
        "--profile", action="store_true", help="profile one more warm edit per backend (torch.profiler summary)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(args)


if __name__ == "__main__":
    main()
