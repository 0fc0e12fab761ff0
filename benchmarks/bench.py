"""``sv-engine bench``: per-stage latency of the StableVideo pipeline on every backend, plus a whole edit.

Library: :func:`run_bench` (``BenchOptions`` -> JSON-ready dict). Command line:
``sv-engine bench ...`` (typer, :mod:`sv_engine.cli.bench`) or, on the GPU machine,
``python -m sv_engine.benchmarks.bench [--stages all|LIST] [--backends torch,torch-compile,ort,trt]
[--e2e] [--frames 70 --size 768x432] [--tiny] [--weights DIR] [--repeat N] [--json PATH] [--time-budget S]``.

Every stage runs its reference (the way StableVideo does it: eager fp32 torch, scipy griddata on
the CPU, F.grid_sample) and the faster implementations in the same process; the table shows the
reference median and each other column as a speed-up. Full-size SD 1.5 architectures with random
weights on a GPU by default; ``--weights DIR`` = the user's models (diffusers layout, as ``edit``);
``--tiny`` = tiny sizes, with tiny random models unless ``--weights`` (CPU smoke test).

JSON (``schema`` ``sv-engine-bench/1``): ``environment`` (gpu, driver, cuda, torch, onnxruntime,
tensorrt, git_commit, date, note ...), ``options``, ``stages`` ({name: {status, description, shape,
reference, seconds, error, target_ms, best, backends: {impl: {status, median_ms, p90_ms, min_ms,
mean_ms, repeat, warmup, peak_mem_mb, speedup, ...} | {status: skipped, reason} | {status: error,
error}}}}), ``e2e`` (null or {params, data, warm, cold, targets}), ``targets``, ``total_seconds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from sv_engine.benchmarks.options import BenchOptions, option_fields, option_flag
from sv_engine.benchmarks.stages import (
    E2E_TARGETS,
    FULL,
    REFERENCE_ORDER,
    STAGES,
    TARGETS_MS,
    TINY,
    BenchContext,
    error_string,
    parse_backends,
    parse_stages,
)
from sv_engine.benchmarks.timing import environment, format_ms, result_filename

from sv_engine.atomic_write import atomic_write_bytes
from sv_engine.device import resolve_device
from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)

SCHEMA = "sv-engine-bench/1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_size(size: str) -> tuple[int, int]:
    """``"768x432"`` -> (width 768, height 432)."""
    try:
        w, h = (int(v) for v in size.lower().replace("×", "x").split("x"))
    except ValueError:
        raise SvEngineError(f"Bad size {size!r}.", "use WIDTHxHEIGHT, e.g. 768x432.", field="size") from None
    if w <= 0 or h <= 0:
        raise SvEngineError(f"Bad size {size!r}: sides must be positive.", "use e.g. 768x432.", field="size")
    return w, h


def _finish_stage(name: str, stage: dict, tiny: bool) -> dict:
    """Picks the reference column, adds speed-ups, the best implementation and the target."""
    backends = stage.get("backends", {})
    ok = {k: v for k, v in backends.items() if v.get("status") == "ok" and v.get("median_ms")}
    ref = next((k for k in REFERENCE_ORDER if k in ok), None)
    stage["reference"] = ref
    if ref is not None:
        for v in ok.values():
            v["speedup"] = ok[ref]["median_ms"] / v["median_ms"]
    best = min(ok, key=lambda k: ok[k]["median_ms"]) if ok else None
    stage["best"] = best
    target = TARGETS_MS.get(name)
    stage["target_ms"] = target
    stage["target_met"] = None if (target is None or best is None or tiny) else ok[best]["median_ms"] <= target
    stage["status"] = (
        "ok"
        if ok
        else ("error" if any(v.get("status") == "error" for v in backends.values()) else stage.get("status", "skipped"))
    )
    return stage


def run_bench(options: BenchOptions | dict | None = None, **overrides: Any) -> dict:
    """Runs the benchmark; returns the JSON-ready result (also written to ``options.json_path``)."""
    if options is None:
        options = BenchOptions()
    elif isinstance(options, dict):
        options = BenchOptions(**options)
    if overrides:
        options = dataclasses.replace(options, **overrides)
    start = time.monotonic()
    deadline = start + options.time_budget if options.time_budget else None
    device = resolve_device(options.device)
    stage_list = parse_stages(options.stages)
    backends = parse_backends(options.backends)
    e2e_backends = parse_backends(options.e2e_backend or "torch", field="e2e_backend")
    sizes = TINY if options.tiny else FULL
    if options.frames is not None:
        if options.frames < 1:
            raise SvEngineError(f"{options.frames} frames: at least 1 is needed.", "use e.g. 70.", field="frames")
        sizes = dataclasses.replace(sizes, frames=options.frames)
    if options.size:
        w, h = parse_size(options.size)
        sizes = dataclasses.replace(sizes, width=w, height=h, splat_hw=(h, w))
    cuda = device.type == "cuda"
    repeat = options.repeat if options.repeat is not None else (20 if cuda else 3)
    warmup = options.warmup if options.warmup is not None else (3 if cuda else 1)
    if repeat < 1 or warmup < 0:
        raise SvEngineError(
            f"{repeat} repeats / {warmup} warm-up calls: out of range.",
            "use $repeat 1 or more and $warmup 0 or more.",
            mentions=("repeat", "warmup"),
        )
    if not options.tiny and not cuda:
        log.warning("full-size SD 1.5 models on the CPU are very slow; the tiny option makes a smoke test")
    if options.weights is not None and not Path(options.weights).expanduser().is_dir():
        raise SvEngineError(
            f"Weights folder {options.weights} does not exist.",
            "pass a folder in the diffusers layout (README: weight formats).",
            field="weights",
        )
    if options.weights is not None:
        models = f"weights from {options.weights}"
    else:
        models = (
            "tiny random SD1.5+ControlNet+DPT"
            if options.tiny
            else "full-size SD1.5 / ControlNet 1.0 / DPT-hybrid, random weights"
        )

    result: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": environment(device),
        "options": {
            "stages": stage_list,
            "backends": backends,
            "tiny": options.tiny,
            "repeat": repeat,
            "warmup": warmup,
            "device": str(device),
            "e2e": options.e2e,
            "time_budget": options.time_budget,
            "skip_slow_reference": options.skip_slow_reference,
            "seed": options.seed,
            "models": models,
            "sizes": dataclasses.asdict(sizes),
        },
        "stages": {},
        "e2e": None,
        "targets": {"stages_ms": dict(TARGETS_MS), "e2e": dict(E2E_TARGETS), "device": "H100, fp16"},
    }
    if options.weights is not None:
        result["environment"]["note"] = f"models: {options.weights}"
    ctx = BenchContext(
        device,
        sizes,
        tiny=options.tiny,
        weights=options.weights,
        repeat=repeat,
        warmup=warmup,
        backends=backends,
        deadline=deadline,
        skip_slow_reference=options.skip_slow_reference,
        seed=options.seed,
    )
    for name in stage_list:
        if deadline is not None and time.monotonic() >= deadline:
            result["stages"][name] = {"status": "skipped", "reason": "time budget exceeded", "backends": {}}
            continue
        log.info("bench stage %s", name)
        t0 = time.monotonic()
        try:
            stage = STAGES[name](ctx)
            stage["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - one failing stage must not lose the others
            log.warning("stage %s failed: %s", name, error_string(exc))
            stage = {"status": "error", "error": error_string(exc), "backends": {}}
        stage["seconds"] = round(time.monotonic() - t0, 3)
        result["stages"][name] = _finish_stage(name, stage, options.tiny)
        ctx.release()
        if options.json_path:  # a run cut off by a time limit keeps the stages it finished
            write_json({**result, "partial": True}, Path(options.json_path))
    if ctx.load_seconds is not None:
        result["options"]["model_build_s"] = round(ctx.load_seconds, 3)
    ctx._components = None
    ctx._specs.clear()
    ctx.release()

    if options.e2e:
        if deadline is not None and time.monotonic() >= deadline:
            result["e2e"] = {
                "warm": {"status": "skipped", "reason": "time budget exceeded"},
                "cold": {"status": "skipped", "reason": "time budget exceeded"},
            }
        else:
            from sv_engine.benchmarks.e2e import run_e2e

            try:
                result["e2e"] = run_e2e(
                    device,
                    options.tiny,
                    sizes.frames,
                    sizes.height,
                    sizes.width,
                    steps=options.e2e_steps,
                    cold=options.e2e_cold,
                    backends=e2e_backends,
                    data_dir=options.e2e_data,
                    deadline=deadline,
                    engine_dir=ctx.engine_dir / "e2e",
                    profile=options.profile,
                    weights=options.weights,
                )
            except Exception as exc:  # noqa: BLE001
                result["e2e"] = {
                    "warm": {"status": "error", "error": error_string(exc)},
                    "cold": {"status": "skipped", "reason": "warm failed"},
                }
        e2e = result["e2e"]
        e2e["targets"] = e2e_targets(e2e, options.tiny)
        for row in e2e.get("backends", {}).values():
            row["targets"] = e2e_targets(row, options.tiny)
    result["total_seconds"] = round(time.monotonic() - start, 3)
    if options.json_path:
        write_json(result, Path(options.json_path))
    if options.save_result:
        path = RESULTS_DIR / result_filename(result["environment"])
        write_json(result, path)
        result["saved_to"] = str(path)
    return result


def merge_results(parts: list[dict]) -> dict:
    """One result from runs of the same commit on the same kind of GPU that each timed some stages
    (e.g. two lanes on the two GPUs of one machine); stages keep the canonical order, the e2e comes
    from the run that has one, and ``merged_from`` records each part's argv and GPU index."""
    from sv_engine.benchmarks.stages import STAGE_NAMES

    if not parts:
        raise SvEngineError("Nothing to merge.", "pass two or more bench JSON files.")
    keys = {(p["environment"].get("gpu"), p["environment"].get("git_commit")) for p in parts}
    if len(keys) > 1:
        raise SvEngineError(
            f"Bench results from different GPUs or commits: {sorted(map(str, keys))}.",
            "merge only the parts of one device run.",
        )
    merged = json.loads(json.dumps(parts[0]))
    stages = {name: stage for part in parts for name, stage in part["stages"].items()}
    merged["stages"] = {name: stages[name] for name in STAGE_NAMES if name in stages}
    merged["e2e"] = next((p["e2e"] for p in parts if p.get("e2e")), None)
    merged["options"]["stages"] = list(merged["stages"])
    merged["options"]["e2e"] = merged["e2e"] is not None
    merged["total_seconds"] = max(p.get("total_seconds", 0) for p in parts)
    merged["merged_from"] = [
        {
            "argv": p["environment"].get("argv"),
            "cuda_visible_devices": p["environment"].get("cuda_visible_devices"),
            "total_seconds": p.get("total_seconds"),
        }
        for p in parts
    ]
    return merged


def _json_default(obj: Any):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(result: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(_clean(result), indent=2, default=_json_default, allow_nan=False).encode())
    return path


# --------------------------------------------------------------------------------------------------
# Terminal output
# --------------------------------------------------------------------------------------------------


def columns(result: dict) -> list[str]:
    """Display columns: ``reference`` (each stage's own reference) then the other implementations."""
    seen: list[str] = []
    for stage in result.get("stages", {}).values():
        for k in stage.get("backends", {}):
            if k != reference_key(stage) and k not in seen:
                seen.append(k)
    return ["reference"] + seen


def reference_key(stage: dict) -> str | None:
    """The implementation a stage's speed-ups are against (its first one when none ran)."""
    return stage.get("reference") or next(iter(stage.get("backends", {})), None)


def cell(stage: dict, impl: str) -> str:
    backends = stage.get("backends", {})
    if impl == "reference":
        impl = reference_key(stage) or "reference"
        b = backends.get(impl)
        if b is not None and b.get("status") == "ok" and impl != "reference":
            return f"{format_ms(b.get('median_ms'))} ({impl})"
    else:
        b = backends.get(impl)
    if b is None:
        return ""
    status = b.get("status")
    if status == "skipped":
        return "skip"
    if status == "error":
        return "error"
    if impl == stage.get("reference"):
        return format_ms(b.get("median_ms"))
    sp = b.get("speedup")
    return f"{format_ms(b.get('median_ms'))} ({sp:.1f}×)" if sp is not None else format_ms(b.get("median_ms"))


def build_table(result: dict):
    """A ``rich.table.Table``: one row per stage; reference median, others as ms (× speed-up)."""
    from rich.table import Table

    env = result.get("environment", {})
    title = (
        f"sv-engine bench — {env.get('gpu') or env.get('device')} · torch {env.get('torch')} · "
        f"{env.get('git_commit')} · {env.get('date')}"
    )
    from rich import box

    table = Table(title=title, caption=env.get("note"), box=box.SIMPLE_HEAD, padding=(0, 1))
    cols = columns(result)
    table.add_column("stage", no_wrap=True)
    for c in cols:
        table.add_column(c, justify="right")
    table.add_column("peak MB", justify="right")
    table.add_column("target", justify="right")
    for name, stage in result.get("stages", {}).items():
        if stage.get("status") in ("error", "skipped") and not stage.get("backends"):
            table.add_row(name, *[stage.get("status", "")] + [""] * (len(cols) - 1) if cols else [], "", "")
            continue
        peaks = [b.get("peak_mem_mb") for b in stage.get("backends", {}).values() if b.get("peak_mem_mb")]
        target = stage.get("target_ms")
        met = stage.get("target_met")
        tcell = (
            "" if target is None else f"≤ {format_ms(target)}" + ("" if met is None else (" met" if met else " missed"))
        )
        table.add_row(name, *[cell(stage, c) for c in cols], f"{max(peaks):.0f}" if peaks else "", tcell)
    return table


def e2e_targets(row: dict, tiny: bool) -> dict:
    """The whole edit's targets and whether ``row`` ({warm, cold}) met them (None: not measured, or tiny)."""
    warm, cold = row.get("warm", {}), row.get("cold", {})
    return {
        "warm_ms": E2E_TARGETS["warm_ms"],
        "cold_ms": E2E_TARGETS["cold_ms"],
        "peak_mem_gb": E2E_TARGETS["peak_mem_gb"],
        "warm_met": None if tiny or warm.get("status") != "ok" else warm["warm_s"] * 1e3 <= E2E_TARGETS["warm_ms"],
        "cold_met": None if tiny or cold.get("status") != "ok" else cold["seconds"] * 1e3 <= E2E_TARGETS["cold_ms"],
        "peak_mem_met": None
        if tiny or not warm.get("peak_mem_gb")
        else warm["peak_mem_gb"] <= E2E_TARGETS["peak_mem_gb"],
    }


def side_by_side_lines(e2e: dict) -> list[str]:
    """One line per backend of a side-by-side e2e: warm, first edit, cold, peak memory, PSNR vs the first."""
    rows = e2e.get("backends") or {}
    if not rows:
        return []
    first = next(iter(rows))
    lines = [f"e2e side by side (PSNR of the warm frames against {first}):"]
    for name, row in rows.items():
        warm, cold = row.get("warm", {}), row.get("cold", {})
        if warm.get("status") == "ok":
            peak = f", peak {warm['peak_mem_gb']:.2f} GB" if warm.get("peak_mem_gb") else ""
            text = f"warm {warm['warm_s']:.3f} s, first edit {warm['first_edit_s']:.3f} s{peak}"
        else:
            text = f"warm {warm.get('status')}: {warm.get('error') or warm.get('reason')}"
        if cold.get("status") == "ok":
            text += f", cold {cold['seconds']:.2f} s"
        else:
            text += f", cold {cold.get('status')}: {cold.get('error') or cold.get('reason')}"
        if "psnr_vs_first_db" in row:
            text += f", {row['psnr_vs_first_db']:.2f} dB"
        lines.append(f"  {name}: {text}")
    return lines


def notes(result: dict) -> list[str]:
    """Errors, skip reasons and the e2e summary as plain lines (printed under the table)."""
    lines = []
    for name, stage in result.get("stages", {}).items():
        accuracy = [
            f"{impl} cos {b['cosine']:.6f}"
            for impl, b in stage.get("backends", {}).items()
            if b.get("cosine") is not None
        ]
        if accuracy:
            lines.append(f"{name}: vs fp32 reference: " + ", ".join(accuracy))
        if stage.get("error"):
            lines.append(f"{name}: error: {stage['error']}")
        if stage.get("reason"):
            lines.append(f"{name}: skipped: {stage['reason']}")
        for impl, b in stage.get("backends", {}).items():
            if b.get("status") == "error":
                lines.append(f"{name}/{impl}: error: {b.get('error')}")
            elif b.get("status") == "skipped":
                lines.append(f"{name}/{impl}: skipped: {b.get('reason')}")
    e2e = result.get("e2e")
    if e2e:
        warm, cold = e2e.get("warm", {}), e2e.get("cold", {})
        if warm.get("status") == "ok":
            peak = f", peak {warm['peak_mem_gb']:.2f} GB" if warm.get("peak_mem_gb") else ""
            lines.append(
                f"e2e warm: {warm['warm_s']:.3f} s (first edit {warm['first_edit_s']:.3f} s, "
                f"model load {warm['load_s']:.2f} s{peak})"
            )
            lines.append("  stages: " + ", ".join(f"{k} {v:.3f}s" for k, v in warm.get("timings", {}).items()))
            prof = warm.get("profile")
            if prof:
                lines.append(
                    f"  profile: GPU busy {prof['gpu_busy_s']:.3f} of {prof['wall_s']:.3f} s, "
                    "kernels by category (ms): "
                    + ", ".join(f"{k} {v:.0f}" for k, v in prof["kernel_ms_by_category"].items())
                )
        else:
            lines.append(f"e2e warm: {warm.get('status')}: {warm.get('error') or warm.get('reason')}")
        if cold.get("status") == "ok":
            phases = ", ".join(f"{k} {v:.2f} s" for k, v in cold.get("seconds_per_phase", {}).items())
            lines.append(
                f"e2e cold (process start to video): {cold['seconds']:.2f} s" + (f" ({phases})" if phases else "")
            )
        else:
            lines.append(f"e2e cold: {cold.get('status')}: {cold.get('error') or cold.get('reason')}")
        lines += side_by_side_lines(e2e)
    return lines


def print_report(result: dict, console=None) -> None:
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 220)
    console.print(build_table(result))
    for line in notes(result):
        console.print(line, markup=False, highlight=False)
    console.print(f"total {result.get('total_seconds', 0):.1f} s", markup=False)


# --------------------------------------------------------------------------------------------------
# python -m sv_engine.benchmarks.bench
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sv_engine.benchmarks.bench", description=__doc__.splitlines()[0])
    for name, kind, default, flag, help_text in option_fields():
        if kind is bool and "/" in flag:
            p.add_argument(
                flag.split("/")[0], dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif kind is bool:
            p.add_argument(flag, dest=name, action="store_true", help=help_text)
        else:
            p.add_argument(flag, dest=name, type=kind, default=default, help=help_text)
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="merge bench JSONs of one device run (e.g. one per GPU lane) into --json or benchmarks/results/",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.merge:
        merged = merge_results([json.loads(Path(p).read_text()) for p in args.merge])
        path = args.json_path or RESULTS_DIR / result_filename(merged["environment"])
        write_json(merged, path)
        print_report(merged)
        print(f"wrote {path}")
        return 0
    try:
        result = run_bench(BenchOptions(**{k: v for k, v in vars(args).items() if k != "merge"}))
    except SvEngineError as err:
        log.error("%s", err.describe(option_flag))
        return 2
    print_report(result)
    if args.json_path:
        print(f"wrote {args.json_path}")
    if result.get("saved_to"):
        print(f"wrote {result['saved_to']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
