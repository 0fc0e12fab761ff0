"""Rewrites the benchmark tables in README.md from ``benchmarks/results/*.json``.

``python -m sv_engine.benchmarks.readme_table [--results DIR] [--readme PATH] [--json FILE ...]``
replaces only the text between ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->`` (and,
where the README has them, ``<!-- fit-table:start -->`` ... ``<!-- fit-table:end -->``: one row per
``fit_bench`` result); the numbers are never typed by hand. Columns: stage, reference (StableVideo's way), the best
implementation, its speed-up, the H100 target, met/missed and the run (commit) the row comes from:
each row is taken from the newest result that measured that stage, so a device run that timed only
some stages updates those rows and keeps the others from the run before.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from sv_engine.benchmarks.timing import format_ms

from sv_engine.errors import SvEngineError, as_flag

START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"
FIT_START = "<!-- fit-table:start -->"
FIT_END = "<!-- fit-table:end -->"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent

# The issue's table: stage -> (label, torch eager, torch.compile, target) as published.
ISSUE_ROWS = {
    "unet_step": ("ControlNet+UNet CFG step, 512²", "42–65 ms", "11.5 ms", "≤ 6 ms"),
    "vae_decode": ("VAE decode 512²", "25–30 ms", "8.0 ms", "≤ 4 ms"),
    "nla_maps": ("NLA maps, 70×768×432 px", "≈ 450 ms fp32", "–", "≤ 60 ms"),
    "splat": ("splat, one keyframe", "≈ 20 s scipy griddata (CPU)", "–", "≤ 2 ms"),
    "render": ("render 70 frames", "12.2 ms grid_sample", "–", "≤ 1 ms"),
}
E2E_ROWS = {
    "warm": ("whole edit, warm", "≈ 60 s", "–", "≤ 0.6 s"),
    "cold": ("whole edit, cold CLI (process start → video written)", "~10 s load", "94 s compile", "≤ 4 s"),
    "peak": ("peak GPU memory, whole edit", "14–29 GB", "–", "≤ 8 GB"),
}


def is_bench_result(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("stages"), dict) and isinstance(data.get("environment"), dict)


def _readable_json(results_dir: Path, pattern: str) -> Iterator[tuple[Path, object]]:
    """``(path, data)`` of each ``pattern`` file in ``results_dir`` that parses as JSON (others skipped)."""
    for path in Path(results_dir).glob(pattern):
        try:
            yield path, json.loads(path.read_text())
        except (OSError, ValueError):
            continue


def results_newest_first(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """The ``sv-engine bench`` JSONs in ``results_dir``, newest first (by their date, then file time).

    Files that are not bench results (e.g. the kernel microbenchmark's) are ignored.
    """
    candidates = []
    for path, data in _readable_json(results_dir, "*.json"):
        if is_bench_result(data):
            env = data["environment"]
            candidates.append(((env.get("datetime") or env.get("date") or ""), path.stat().st_mtime, path))
    if not candidates:
        raise SvEngineError(
            f"No sv-engine bench result JSON in {results_dir}.",
            "run `python -m sv_engine.benchmarks.bench --save-result` on the GPU machine first.",
        )
    return [c[2] for c in sorted(candidates, reverse=True)]


def combine_newest(results: list[dict]) -> dict:
    """One result whose every stage (and the e2e) comes from the newest of ``results`` (newest first)
    that measured it; each carries ``run`` = that result's commit."""

    def ok(entry: dict | None) -> bool:
        return bool(entry) and entry.get("status") == "ok"

    combined = {"environment": results[0]["environment"], "stages": {}, "e2e": None, "runs": []}
    from sv_engine.benchmarks.stages import STAGE_NAMES

    seen = {name for r in results for name in r.get("stages", {})}
    names = [n for n in STAGE_NAMES if n in seen] + sorted(seen - set(STAGE_NAMES))
    for name in names:
        having = [r for r in results if name in r.get("stages", {})]
        source = next((r for r in having if ok(r["stages"][name])), having[0])
        combined["stages"][name] = {**source["stages"][name], "run": source["environment"].get("git_commit")}
    source = next((r for r in results if r.get("e2e") and ok(r["e2e"].get("warm"))), None)
    if source is not None:
        combined["e2e"] = {**source["e2e"], "run": source["environment"].get("git_commit")}
        if not ok(source["e2e"].get("cold")):  # a run that timed only warm edits keeps the last cold row
            cold = next((r for r in results if r.get("e2e") and ok(r["e2e"].get("cold"))), None)
            if cold is not None:
                combined["e2e"]["cold"] = cold["e2e"]["cold"]
                combined["e2e"]["targets"] = {
                    **combined["e2e"].get("targets", {}),
                    "cold_met": cold["e2e"].get("targets", {}).get("cold_met"),
                }
                combined["e2e"]["cold_run"] = cold["environment"].get("git_commit")
    e2e_runs = {(combined["e2e"] or {}).get("run"), (combined["e2e"] or {}).get("cold_run")}
    used = {v.get("run") for v in combined["stages"].values()} | e2e_runs
    combined["runs"] = [r["environment"] for r in results if r["environment"].get("git_commit") in used]
    return combined


def newest_cold_start(results_dir: Path = RESULTS_DIR) -> dict | None:
    """The newest GPU ``cold_start`` result's fastest cold CLI edit of its last variant (the tree that run
    measured; the variants before it are what it was compared with): ``seconds``, ``run``, ``datetime``,
    ``variant``; ``None`` when there is none."""
    found = []
    for _, data in _readable_json(results_dir, "cold-start-*.json"):
        env = data.get("environment", {}) if isinstance(data, dict) else {}
        runs = data.get("cold_edit", {}) if isinstance(data, dict) else {}
        if not env.get("gpu") or not runs:
            continue
        variant = list(runs)[-1]
        ok = [r["seconds"] for r in runs[variant] if r.get("status") == "ok" and r.get("seconds")]
        if ok:
            stamp = env.get("datetime") or env.get("date") or ""
            found.append({"seconds": min(ok), "run": env.get("git_commit"), "datetime": stamp, "variant": variant})
    return max(found, key=lambda row: row["datetime"]) if found else None


def _own_peak_gb(warm: dict) -> float:
    """A warm edit's peak GPU memory less what the benchmark's process held before that variant was built
    (``allocated_before_gb``: an earlier variant's leftovers), i.e. the edit's own as in a fresh process."""
    return warm["peak_mem_gb"] - (warm.get("allocated_before_gb") or 0.0)


def _met(met: bool | None) -> str:
    return "–" if met is None else ("met" if met else "missed")


def render_table(result: dict, cold_start: dict | None = None) -> str:
    """Markdown table (plus a provenance line per run) of one bench result or :func:`combine_newest`'s;
    the cold row from ``cold_start`` (:func:`newest_cold_start`) when that is newer than the bench's."""
    runs = result.get("runs") or [result.get("environment", {})]
    provenance = " ".join(
        f"Run {env.get('git_commit')}: {env.get('gpu') or env.get('device') or 'unknown device'} ({env.get('date')}, "
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, TensorRT {env.get('tensorrt')}, "
        f"ORT {env.get('onnxruntime')})."
        for env in runs
    )
    lines = [
        f"{provenance} {runs[0].get('note', 'random weights')}. Each row names its run; generated by "
        "`python -m sv_engine.benchmarks.readme_table`.",
        "",
        "| stage | StableVideo reference | best (backend) | speed-up | issue: torch eager | issue: torch.compile "
        "| target | met? | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    default_run = runs[0].get("git_commit")
    stages = result.get("stages", {})
    for name, stage in stages.items():
        backends = stage.get("backends", {})
        ref_name = stage.get("reference")
        ref = backends.get(ref_name, {}) if ref_name else {}
        best_name = stage.get("best")
        best = backends.get(best_name, {}) if best_name else {}
        label, eager, compiled, target = ISSUE_ROWS.get(name, (name, "–", "–", "–"))
        run = stage.get("run", default_run)
        if stage.get("status") != "ok" or not best:
            why = stage.get("error") or stage.get("reason") or stage.get("status", "not run")
            lines.append(f"| {label} | {why} | – | – | {eager} | {compiled} | {target} | – | {run} |")
            continue
        ref_cell = f"{format_ms(ref.get('median_ms'), small_digits=2)} ({ref_name})" if ref else "–"
        speed = best.get("speedup")
        lines.append(
            f"| {label} | {ref_cell} | {format_ms(best.get('median_ms'), small_digits=2)} ({best_name}) | "
            f"{f'{speed:.1f}×' if speed else '–'} | {eager} | {compiled} | {target} | "
            f"{_met(stage.get('target_met'))} | {run} |"
        )
    from sv_engine.benchmarks.stages import E2E_TARGETS

    e2e = result.get("e2e")
    if cold_start is not None:
        cold_run = (e2e or {}).get("cold_run", (e2e or {}).get("run", default_run))
        bench_cold = next((env for env in runs if env.get("git_commit") == cold_run), {})
        if cold_start["datetime"] >= (bench_cold.get("datetime") or bench_cold.get("date") or ""):
            e2e = {**(e2e or {}), "cold_run": cold_start["run"]}
            e2e["cold"] = {"status": "ok", "seconds": cold_start["seconds"]}
            e2e["targets"] = {
                **e2e.get("targets", {}),
                "cold_met": cold_start["seconds"] * 1e3 <= E2E_TARGETS["cold_ms"],
            }
    if e2e:
        warm, cold, tg = e2e.get("warm", {}), e2e.get("cold", {}), e2e.get("targets", {})
        rows = [
            (
                "warm",
                f"{warm['warm_s']:.2f} s ({warm.get('backend', 'torch')})"
                if warm.get("status") == "ok"
                else warm.get("status", "–"),
                tg.get("warm_met"),
            ),
            (
                "cold",
                f"{cold['seconds']:.2f} s" if cold.get("status") == "ok" else cold.get("status", "–"),
                tg.get("cold_met"),
            ),
            (
                "peak",
                f"{_own_peak_gb(warm):.2f} GB" if warm.get("peak_mem_gb") else "–",
                _own_peak_gb(warm) <= E2E_TARGETS["peak_mem_gb"] if warm.get("peak_mem_gb") else tg.get("peak_mem_met"),
            ),
        ]
        for key, value, met in rows:
            label, eager, compiled, target = E2E_ROWS[key]
            run = e2e.get("cold_run", e2e.get("run", default_run)) if key == "cold" else e2e.get("run", default_run)
            lines.append(f"| {label} | – | {value} | – | {eager} | {compiled} | {target} | {_met(met)} | {run} |")
    return "\n".join(lines)


def fit_results(results_dir: Path = RESULTS_DIR) -> list[tuple[str, dict]]:
    """``(run, result)`` of every ``fit_bench`` JSON in ``results_dir``, by clip, then date and run; the
    run is the result's ``commit`` or its file name's last part (results are named ...-<commit>.json)."""
    found = []
    for path, data in _readable_json(results_dir, "fit-*.json"):
        if isinstance(data, dict) and data.get("benchmark") == "fit":
            run = data.get("commit") or path.stem.rsplit("-", 1)[-1]
            found.append((_clip(data), str(data.get("date", "")), run, data))
    return [(run, data) for _, _, run, data in sorted(found, key=lambda f: (f[0], f[1], f[2]))]


def _clip(result: dict) -> str:
    """The clip's short name (fit results before the real clips were all of the synthetic one)."""
    return str(result.get("clip") or "synthetic").split(" (")[0]


def _where(result: dict) -> str:
    if result.get("gpu"):
        return str(result["gpu"]).removeprefix("NVIDIA ")
    cores = result.get("cpu_count")
    return f"{cores}-core CPU" if cores else "CPU"


def render_fit_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table of :func:`fit_results`: where, clip, arch, fitting time, PSNR of what sv-engine
    renders and of the NLA MLPs StableVideo renders (the distilled ones for hash), fg coverage vs masks."""
    lines = [
        "| where | clip | frames, size | masks | arch | fit | PSNR (sv-engine renders) | PSNR (StableVideo's MLPs) "
        "| fg coverage vs masks (IoU) | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, r in rows:
        arch = r.get("arch", "nla")
        psnr = r.get("final_psnr_db")
        mlps = psnr if arch == "nla" else r.get("distilled_psnr_db")
        cov, masks_cov, iou = r.get("fg_coverage_mean"), r.get("mask_coverage_mean"), r.get("fg_iou_vs_masks_mean")
        coverage = f"{100 * cov:.1f} % vs {100 * masks_cov:.1f} %" if cov is not None and masks_cov else "–"
        if iou is not None and coverage != "–":
            coverage += f" ({iou:.2f})"
        w, h = r.get("size", ["?", "?"])
        fit_s, masks = r.get("fit_s"), "given" if r.get("masks") else "none"
        lines.append(
            f"| {_where(r)} | {_clip(r)} | {r.get('frames')}, {w}×{h} | {masks} | {arch} "
            f"| {f'{fit_s:.0f} s' if fit_s is not None else '–'} | {f'{psnr:.1f} dB' if psnr is not None else '–'} "
            f"| {f'{mlps:.1f} dB' if mlps is not None else '–'} | {coverage} | {run} |"
        )
    return "\n".join(lines)


def replace_block(text: str, table: str, start_marker: str = START, end_marker: str = END) -> str:
    """``text`` with the content between the markers replaced by ``table`` (everything else kept)."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < 0 or end < start:
        raise SvEngineError(
            f"README has no {start_marker} ... {end_marker} block (or they are out of order).",
            "add the two marker lines where the benchmark table belongs.",
        )
    return text[: start + len(start_marker)] + "\n" + table.rstrip("\n") + "\n" + text[end:]


def update_readme(readme: Path, result_paths: Path | list[Path], results_dir: Path | None = None) -> Path:
    """Rewrites the table from one result, or from several (newest first) through :func:`combine_newest`;
    with ``results_dir``, the fit table too (where the README has its markers) from the fit results there."""
    paths = [result_paths] if isinstance(result_paths, (str, Path)) else list(result_paths)
    results = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        if not is_bench_result(result):
            raise SvEngineError(
                f"{path} is not an sv-engine bench result.", "pass a JSON written by `sv-engine bench --json`."
            )
        results.append(result)
    readme = Path(readme)
    if not readme.is_file():
        raise SvEngineError(f"{readme} does not exist.", "pass a README with the bench-table markers.", field="readme")
    cold_start = newest_cold_start(results_dir) if results_dir is not None else None
    table = render_table(results[0] if len(results) == 1 else combine_newest(results), cold_start)
    text = replace_block(readme.read_text(), table)
    if results_dir is not None and FIT_START in text:
        text = replace_block(text, render_fit_table(fit_results(results_dir)), FIT_START, FIT_END)
    readme.write_text(text)
    return readme


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sv_engine.benchmarks.readme_table", description=__doc__.splitlines()[0])
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        help="folder of result JSONs (each row from the newest that has it)",
    )
    p.add_argument("--json", type=Path, nargs="+", default=None, help="use these result JSONs (newest first) instead")
    p.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    a = p.parse_args(argv)
    try:
        sources = a.json or results_newest_first(a.results)
        update_readme(a.readme, sources, results_dir=a.results)
    except SvEngineError as err:
        print(f"error: {err.describe(as_flag)}", file=sys.stderr)
        return 2
    print(f"updated {a.readme} from {', '.join(str(s) for s in sources)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
