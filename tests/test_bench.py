"""`sv-engine bench` on the CPU with tiny sizes, the README table and the result file names."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import pytest
from requires import import_or_skip
from sv_engine.benchmarks import bench as bench_mod
from sv_engine.benchmarks import stages as stages_mod
from sv_engine.benchmarks.bench import BenchOptions, run_bench
from sv_engine.benchmarks.readme_table import (
    END,
    START,
    render_table,
    replace_block,
    results_newest_first,
    update_readme,
)
from sv_engine.benchmarks.timing import RANDOM_WEIGHTS_NOTE, result_filename, summarize

from sv_engine.errors import SvEngineError

CHEAP = "warp,splat,aggregation_median"
TIMING_KEYS = {"status", "median_ms", "p90_ms", "min_ms", "mean_ms", "repeat", "warmup", "peak_mem_mb"}


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory) -> tuple[dict, Path]:
    path = tmp_path_factory.mktemp("bench") / "out.json"
    result = run_bench(
        BenchOptions(stages=CHEAP, backends="torch", tiny=True, repeat=2, warmup=1, device="cpu", json_path=path)
    )
    return result, path


def test_tiny_bench_json_has_documented_keys_and_sane_numbers(tiny_result):
    result, path = tiny_result
    on_disk = json.loads(path.read_text())
    assert on_disk["schema"] == "sv-engine-bench/1"
    assert set(on_disk) >= {"schema", "environment", "options", "stages", "e2e", "targets", "total_seconds"}
    assert list(on_disk["stages"]) == ["warp", "splat", "aggregation_median"]
    assert on_disk["options"]["repeat"] == 2 and on_disk["options"]["tiny"] is True
    assert on_disk["e2e"] is None
    assert "partial" not in on_disk  # only the per-stage snapshots written during the run say partial
    for name, stage in on_disk["stages"].items():
        assert stage["status"] == "ok", (name, stage)
        assert stage["seconds"] > 0
        ref = stage["backends"][stage["reference"]]
        assert TIMING_KEYS <= set(ref)
        assert ref["repeat"] == 2
        assert 0 < ref["min_ms"] <= ref["median_ms"] <= ref["p90_ms"]
        assert ref["peak_mem_mb"] is None  # CPU run
        assert ref["speedup"] == pytest.approx(1.0)
    splat = on_disk["stages"]["splat"]
    assert splat["reference"] == "scipy"  # StableVideo's griddata is the reference column
    assert splat["backends"]["torch"]["speedup"] == pytest.approx(
        splat["backends"]["scipy"]["median_ms"] / splat["backends"]["torch"]["median_ms"]
    )
    assert splat["backends"]["cuda"] == {"status": "skipped", "reason": "the CUDA kernel needs a GPU"}
    assert splat["target_ms"] == 2.0 and splat["target_met"] is None  # tiny: never judged against the H100 target
    assert on_disk["stages"]["warp"]["shape"] == {"keyframes": 3, "height": 64, "width": 96, "atlas": 256}


def test_environment_fields(tiny_result):
    env = tiny_result[0]["environment"]
    for key in ("gpu", "driver", "cuda", "torch", "onnxruntime", "tensorrt", "git_commit", "date", "note"):
        assert key in env
    assert env["note"] == RANDOM_WEIGHTS_NOTE
    assert env["device"] == "cpu" and env["gpu"] is None
    dt.date.fromisoformat(env["date"])
    assert env["git_commit"] == "unknown" or len(env["git_commit"]) >= 4


def test_failing_stage_is_recorded_and_others_survive(monkeypatch):
    def boom(ctx):
        raise RuntimeError("kaboom")

    monkeypatch.setitem(stages_mod.STAGES, "warp", boom)
    monkeypatch.setattr(bench_mod, "STAGES", stages_mod.STAGES)
    result = run_bench(BenchOptions(stages="warp,aggregation_median", tiny=True, repeat=1, warmup=0, device="cpu"))
    assert result["stages"]["warp"]["status"] == "error"
    assert result["stages"]["warp"]["error"] == "RuntimeError: kaboom"
    assert result["stages"]["aggregation_median"]["status"] == "ok"


def test_time_budget_skips_remaining_stages():
    result = run_bench(
        BenchOptions(stages="warp,aggregation_median", tiny=True, repeat=1, warmup=0, device="cpu", time_budget=1e-9)
    )
    for stage in result["stages"].values():
        assert stage["status"] == "skipped" and stage["reason"] == "time budget exceeded"


def test_bad_options_raise_clear_errors():
    with pytest.raises(SvEngineError, match="Unknown benchmark stage 'unett'"):
        run_bench(BenchOptions(stages="unett", tiny=True, device="cpu"))
    with pytest.raises(SvEngineError, match="Unknown backend 'tensorflow'"):
        run_bench(BenchOptions(stages="warp", backends="tensorflow", tiny=True, device="cpu"))
    with pytest.raises(SvEngineError, match="Unknown backend 'tvm'") as err:  # before any stage or model
        run_bench(BenchOptions(stages="warp", e2e=True, e2e_backend="torch,tvm", tiny=True, device="cpu"))
    assert err.value.field == "e2e_backend"
    assert stages_mod.parse_stages("vae,warp") == ["vae_encode", "vae_decode", "warp"]
    assert bench_mod.parse_size("768x432") == (768, 432)
    with pytest.raises(SvEngineError, match="Bad size") as err:
        bench_mod.parse_size("768")
    assert err.value.field == "size"


def test_bench_script_names_its_flags(caplog):
    """``python -m sv_engine.benchmarks.bench`` spells the input at fault as its flag."""
    with caplog.at_level(logging.ERROR):
        assert bench_mod.main(["--stages", "warp", "--tiny", "--device", "cpu", "--repeat", "0"]) == 2
    assert "Fix: use --repeat 1 or more and --warmup 0 or more." in caplog.text


def test_cli_bench_writes_json_and_prints_table(tmp_path):
    from typer.testing import CliRunner

    import sv_engine.cli.bench  # noqa: F401 - registers the command
    from sv_engine.cli.app import app

    out = tmp_path / "cli.json"
    res = CliRunner().invoke(
        app,
        ["bench", "--tiny", "--stages", "aggregation_median", "--repeat", "2", "--device", "cpu", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "aggregation_median" in res.output and "reference" in res.output
    data = json.loads(out.read_text())
    assert data["stages"]["aggregation_median"]["backends"]["reference"]["repeat"] == 2


def test_summarize_percentiles():
    stats = summarize([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert stats["median_ms"] == 5.5 and stats["p90_ms"] == 9.0 and stats["min_ms"] == 1.0 and stats["repeat"] == 10


def test_result_filename_format():
    env = {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-25", "git_commit": "9c320d1"}
    assert result_filename(env) == "nvidia-h100-80gb-hbm3-2026-11-25-9c320d1.json"
    assert (
        result_filename({"gpu": None, "date": "2026-01-02", "git_commit": "unknown"}) == "cpu-2026-01-02-unknown.json"
    )


SAMPLE = {
    "schema": "sv-engine-bench/1",
    "environment": {
        "gpu": "NVIDIA H100 80GB HBM3",
        "date": "2026-11-25",
        "datetime": "2026-11-25T10:00:00+00:00",
        "git_commit": "abc1234",
        "torch": "2.13.0",
        "cuda": "12.8",
        "tensorrt": "10.9",
        "onnxruntime": "1.22",
        "note": RANDOM_WEIGHTS_NOTE,
    },
    "stages": {
        "unet_step": {
            "status": "ok",
            "reference": "reference",
            "best": "trt",
            "target_ms": 6.0,
            "target_met": False,
            "backends": {
                "reference": {"status": "ok", "median_ms": 120.0, "speedup": 1.0},
                "trt": {"status": "ok", "median_ms": 10.0, "speedup": 12.0},
                "ort": {"status": "skipped", "reason": "no onnxruntime-gpu"},
            },
        },
        "render": {
            "status": "ok",
            "reference": "reference",
            "best": "cuda",
            "target_ms": 1.0,
            "target_met": True,
            "backends": {
                "reference": {"status": "ok", "median_ms": 12.0, "speedup": 1.0},
                "cuda": {"status": "ok", "median_ms": 0.5, "speedup": 24.0},
            },
        },
        "depth": {"status": "error", "error": "RuntimeError: boom", "backends": {}},
    },
    "e2e": {
        "warm": {"status": "ok", "warm_s": 0.5, "backend": "trt", "peak_mem_gb": 9.5},
        "cold": {"status": "ok", "seconds": 3.5},
        "targets": {"warm_met": True, "cold_met": True, "peak_mem_met": False},
    },
}


def test_readme_table_renders_rows_with_targets():
    table = render_table(SAMPLE)
    assert (
        "| ControlNet+UNet CFG step, 512² | 120.0 ms (reference) | 10.0 ms (trt) | 12.0× | 42–65 ms | 11.5 ms "
        "| ≤ 6 ms | missed |" in table
    )
    assert (
        "| render 70 frames | 12.0 ms (reference) | 0.50 ms (cuda) | 24.0× | 12.2 ms grid_sample | – | ≤ 1 ms | met |"
        in table
    )
    assert "| depth | RuntimeError: boom |" in table
    assert "| whole edit, warm | – | 0.50 s (trt) |" in table and "| ≤ 0.6 s | met |" in table
    assert "| peak GPU memory, whole edit | – | 9.50 GB | – | 14–29 GB | – | ≤ 8 GB | missed |" in table
    assert "NVIDIA H100 80GB HBM3" in table and "abc1234" in table


def test_the_cold_row_comes_from_the_newest_gpu_cold_start_run(tmp_path):
    """The cold CLI edit measured by benchmarks/cold_start.py, when newer than the bench's: the fastest
    edit of the run's last variant (its own tree), GPU runs only."""
    from sv_engine.benchmarks.readme_table import newest_cold_start

    def cold_start(name: str, gpu: str | None, stamp: str, commit: str, runs: dict) -> None:
        env = {"gpu": gpu, "datetime": stamp, "git_commit": commit}
        (tmp_path / f"cold-start-{name}.json").write_text(json.dumps({"environment": env, "cold_edit": runs}))

    ok = lambda *seconds: [{"status": "ok", "seconds": s} for s in seconds]  # noqa: E731
    cold_start("old", "NVIDIA H200", "2026-11-20T00:00:00", "old0001", {"after": ok(20.0)})
    cold_start("cpu", None, "2026-12-09T00:00:00", "cpu0001", {"after": ok(1.0)})
    cold_start("new", "NVIDIA H200", "2026-12-03T00:00:00", "new0001", {"before": ok(3.0), "after": ok(9.6, 9.2)})
    (tmp_path / "cold-start-broken.json").write_text("{not json")
    newest = newest_cold_start(tmp_path)
    assert newest == {"seconds": 9.2, "run": "new0001", "datetime": "2026-12-03T00:00:00", "variant": "after"}
    table = render_table(SAMPLE, newest)
    assert "| whole edit, cold CLI (process start → video written) | – | 9.20 s |" in table
    assert "| ≤ 4 s | missed | new0001 |" in table
    # an older cold-start run leaves the bench's own cold row
    assert "| 3.50 s |" in render_table(SAMPLE, {**newest, "datetime": "2026-01-01T00:00:00"})
    assert newest_cold_start(tmp_path / "none") is None


def test_the_peak_row_is_the_edits_own_memory():
    """A warm variant's peak less what earlier variants left allocated in the benchmark's process."""
    sample = json.loads(json.dumps(SAMPLE))
    sample["e2e"]["warm"].update(peak_mem_gb=10.5, allocated_before_gb=4.0)
    assert "| peak GPU memory, whole edit | – | 6.50 GB | – | 14–29 GB | – | ≤ 8 GB | met |" in render_table(sample)


def test_readme_block_replaced_and_rest_kept(tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nintro text\n\n", "\n\n## Later section\nkeep me\n"
    readme.write_text(f"{before}{START}\nold table\n{END}{after}")
    results = tmp_path / "results"
    results.mkdir()
    (results / "kernels.json").write_text(json.dumps({"render": {}}))  # not a bench result: ignored
    older = json.loads(json.dumps(SAMPLE))
    older["environment"].update(date="2026-01-01", datetime="2026-01-01T00:00:00+00:00", git_commit="old0001")
    (results / "a-old.json").write_text(json.dumps(older))
    (results / "b-new.json").write_text(json.dumps(SAMPLE))
    assert results_newest_first(results)[0].name == "b-new.json"
    update_readme(readme, results_newest_first(results)[0])
    text = readme.read_text()
    assert text.startswith(before + START + "\n") and text.endswith(END + after)
    assert "old table" not in text and "abc1234" in text and "old0001" not in text
    # Idempotent: a second run gives the same file.
    update_readme(readme, results_newest_first(results)[0])
    assert readme.read_text() == text
    with pytest.raises(SvEngineError, match="bench-table"):
        replace_block("no markers here", "x")


def test_readme_fit_table_is_generated_from_the_fit_results(tmp_path):
    """One row per fit_bench JSON (other JSONs ignored), the run from the file name where the result has no
    commit; the StableVideo column is the fit's own PSNR for nla and the distilled MLPs' for hash."""
    from sv_engine.benchmarks.readme_table import FIT_END, FIT_START

    results = tmp_path / "results"
    results.mkdir()
    (results / "b-new.json").write_text(json.dumps(SAMPLE))
    common = {"benchmark": "fit", "frames": 60, "size": [192, 108], "fit_s": 240.2, "fg_coverage_mean": 0.161}
    hash_fit = {**common, "clip": "Big Buck Bunny (a clip)", "arch": "hash", "masks": False, "gpu": None}
    hash_fit |= {"cpu_count": 2, "final_psnr_db": 29.31, "distilled_psnr_db": 23.36}
    hash_fit |= {"mask_coverage_mean": 0.163, "fg_iou_vs_masks_mean": 0.92}
    (results / "fit-bunny-cpu-2026-12-01-abc1234.json").write_text(json.dumps(hash_fit))
    nla_fit = {
        **common,
        "arch": "nla",
        "masks": True,
        "gpu": "NVIDIA H200",
        "final_psnr_db": 47.63,
        "commit": "def5678",
    }
    (results / "fit-synthetic-nvidia-h200-2026-12-01-xyz.json").write_text(json.dumps(nla_fit))
    (results / "fit-notes.json").write_text(json.dumps({"benchmark": "other"}))
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n\nfits:\n{FIT_START}\nold rows\n{FIT_END}\nkeep me\n")
    update_readme(readme, results / "b-new.json", results_dir=results)
    text = readme.read_text()
    assert "old rows" not in text and text.endswith(f"{FIT_END}\nkeep me\n")
    fit_block = text[text.index(FIT_START) : text.index(FIT_END)]
    assert fit_block.count("\n| ") == 3  # header + two results
    assert (
        "| 2-core CPU | Big Buck Bunny | 60, 192×108 | none | hash | 240 s | 29.3 dB | 23.4 dB "
        "| 16.1 % vs 16.3 % (0.92) | abc1234 |" in fit_block
    )
    assert "| H200 | synthetic | 60, 192×108 | given | nla | 240 s | 47.6 dB | 47.6 dB | – | def5678 |" in fit_block
    # A README without the fit markers keeps working (only the bench table is rewritten).
    readme.write_text(f"{START}\n{END}\n")
    update_readme(readme, results / "b-new.json", results_dir=results)
    assert FIT_START not in readme.read_text()


def test_e2e_cold_command_and_tiny_params():
    import torch
    from sv_engine.benchmarks.e2e import cold_command, edit_params

    cmd = cold_command(Path("/data/clip"), Path("/w"), Path("/tmp/out.mp4"), torch.device("cuda"), False, 20, 0.8)
    assert cmd[1:5] == ["-m", "sv_engine", "edit", "/data/clip"]  # the real CLI, not a benchmark-only path
    flags = dict(zip(cmd[5::2], cmd[6::2], strict=False))
    assert flags["--weights"] == "/w" and flags["--precision"] == "fp16" and flags["--image-resolution"] == "512"
    assert flags["--seed"] == "0" and flags["--backend"] == "torch" and cmd[-1] == "--force"
    assert "--no-cuda-graphs" in cmd  # "torch" stays eager although the CLI's torch on a GPU replays graphs
    graphs = cold_command(
        Path("/data/clip"), Path("/w"), Path("/tmp/out.mp4"), torch.device("cuda"), False, 20, 0.8, "torch-cuda-graph"
    )
    assert graphs[graphs.index("--backend") + 1] == "torch" and "--cuda-graphs" in graphs
    params = edit_params(20, 0.8, tiny=True)
    assert (params.steps, params.strength, params.image_resolution, params.edit_background) == (20, 0.8, 64, True)
    assert edit_params(20, 0.8, tiny=False).image_resolution == 512


@pytest.mark.slow
def test_tiny_e2e_warm_and_cold_through_the_cli(tmp_path):
    """Warm (in process) and cold (``sv-engine edit --weights`` on the saved models, a fresh process)."""
    import torch
    from sv_engine.benchmarks.e2e import OUTSIDE_PHASES, run_e2e

    result = run_e2e(torch.device("cpu"), tiny=True, frames=4, height=48, width=64, steps=2)
    warm, cold = result["warm"], result["cold"]
    assert warm["status"] == "ok", warm
    assert warm["warm_s"] > 0 and {"foreground", "background", "render"} <= set(warm["timings"])
    assert cold["status"] == "ok", cold
    assert cold["video_written"] and cold["seconds"] > 0
    phases = cold["seconds_per_phase"]  # the CLI's phases from the process's start, and the exit outside them
    assert list(phases) == [
        "start python and the CLI",
        "import torch and the pipeline",
        "check inputs",
        "import model libraries",
        "load models",
        "prepare backend",
        "finish the warm-up",
        "edit",
        "write outputs",
        OUTSIDE_PHASES,
    ]
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) == pytest.approx(cold["seconds"], abs=0.01)
    # what the report cannot see is the interpreter's exit and the subprocess wrapper around it
    assert phases[OUTSIDE_PHASES] < 0.25 * cold["seconds"]
    assert {"foreground", "background", "render"} <= set(cold["seconds_per_stage"])  # the first edit's stages


@pytest.mark.slow
def test_tiny_e2e_side_by_side_per_backend():
    """``--e2e-backend torch,ort``: each backend's warm and cold edit on the same clip and weights, the
    second's frames against the first's (tiny fp32 models: ORT agrees with torch to well above 30 dB),
    and one summary line per backend. The tiny models' 64 px edit is outside the CLI's engine profile
    (512-1024 px), so ORT's cold edit is refused with the profile and the fix, as a user's would be."""
    import_or_skip("onnxruntime")
    import torch
    from sv_engine.benchmarks.e2e import run_e2e

    result = run_e2e(torch.device("cpu"), tiny=True, frames=4, height=48, width=64, steps=2, backends=("torch", "ort"))
    rows = result["backends"]
    assert list(rows) == ["torch", "ort"]
    for name, row in rows.items():
        assert row["warm"]["status"] == "ok" and row["warm"]["backend"] == name, row["warm"]
        assert f"--backend {name}" in " ".join(row["cold"]["command"])
    assert rows["torch"]["cold"]["status"] == "ok" and rows["torch"]["cold"]["video_written"]
    refused = rows["ort"]["cold"]
    assert (
        refused["returncode"] == 2 and "outside the engine profile" in refused["error"] and "Fix:" in refused["error"]
    )
    assert result["warm"] is rows["torch"]["warm"] and result["cold"] is rows["torch"]["cold"]
    assert "psnr_vs_first_db" not in rows["torch"] and rows["ort"]["psnr_vs_first_db"] > 30
    lines = bench_mod.side_by_side_lines(result)
    assert lines[0].endswith("against torch):") and [line.split(":")[0].strip() for line in lines[1:]] == [
        "torch",
        "ort",
    ]


def test_model_stage_columns_report_accuracy_against_the_fp32_reference():
    import_or_skip("onnxruntime")
    result = run_bench(
        BenchOptions(
            stages="text_encoder", backends="ort,torch-cuda-graph", tiny=True, repeat=1, warmup=0, device="cpu"
        )
    )
    columns = result["stages"]["text_encoder"]["backends"]
    assert "cosine" not in columns["reference"]
    assert columns["torch-cuda-graph"] == {"status": "skipped", "reason": "CUDA graphs need a CUDA GPU"}
    ort = columns["ort"]
    assert ort["status"] == "ok", ort
    # fp32 ORT on the CPU vs eager fp32 torch: the engine.parity fp32 bar (1e-4 of the output scale).
    assert ort["cosine"] > 0.99999 and ort["max_rel"] < 1e-4


def test_profile_summary_unions_streams_and_groups_kernels():
    from types import SimpleNamespace

    import torch
    from sv_engine.benchmarks.torch_profile import kernel_category, summarise

    def event(name, start, end, cuda=True):
        time_range = SimpleNamespace(start=start, end=end, elapsed_us=lambda: end - start)
        device = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
        return SimpleNamespace(name=name, time_range=time_range, device_type=device, self_cpu_time_total=end - start)

    events = [
        event("sm90_xmma_fprop_implicit_gemm_f16", 0, 400),
        event("flash_fwd_kernel", 300, 600),  # overlaps the conv on another stream
        event("vectorized_elementwise_kernel<add>", 1000, 1100),
        event("cudaLaunchKernel", 0, 50, cuda=False),
        event("cudaStreamSynchronize", 600, 900, cuda=False),
        event("aten::conv2d", 0, 70, cuda=False),
    ]
    s = summarise(events, wall_s=0.002)
    assert s["gpu_kernel_s"] == pytest.approx(800e-6)
    assert s["gpu_busy_s"] == pytest.approx(700e-6)  # the union, not the sum
    assert s["gpu_busy_fraction"] == pytest.approx(0.35)
    assert s["kernel_ms_by_category"] == {"convolution": 0.4, "attention": 0.3, "elementwise": 0.1}
    assert s["host_sync_ms"] == pytest.approx(0.3) and s["host_launch_ms"] == pytest.approx(0.05)
    assert s["top_aten_ops_self_cpu"][0]["name"] == "aten::conv2d"
    assert kernel_category("ampere_fp16_s16816gemm_fp16_128x128") == "gemm"
    assert kernel_category("some_unknown_thing") == "other"


def test_profile_call_on_cpu_lists_host_ops():
    import torch
    from sv_engine.benchmarks.torch_profile import profile_call

    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 16, 16)
    s = profile_call(lambda: conv(x).relu(), torch.device("cpu"))
    assert s["wall_s"] > 0 and s["kernel_launches"] == 0
    assert any(row["name"] == "aten::conv2d" for row in s["top_aten_ops_self_cpu"])


def test_e2e_parity_backend_variants():
    from sv_engine.benchmarks.e2e_parity import parse_variant
    from sv_engine.engine.registry import BackendChoice, OrtOptions, TorchOptions

    assert parse_variant("torch") == (BackendChoice("torch", TorchOptions()), {})
    assert parse_variant("ort:allow_spinning=1:intra_op_threads=0:overlap=0") == (
        BackendChoice("ort", OrtOptions(allow_spinning=True, intra_op_threads=0)),
        {"overlap_background": False},
    )
    assert parse_variant("ort:cudnn_conv_algo_search=EXHAUSTIVE")[0].options.cudnn_conv_algo_search == "EXHAUSTIVE"
    assert parse_variant("torch-cuda-graph")[0].options == TorchOptions(cuda_graphs=True, channels_last=True)
    with pytest.raises(SvEngineError, match="key=value"):
        parse_variant("ort:spin")
    with pytest.raises(SvEngineError, match="no option spin"):
        parse_variant("ort:spin=1")


def test_merge_lanes_of_one_device_run(tiny_result, tmp_path):
    result, _ = tiny_result
    other = json.loads(json.dumps(result))
    other["stages"] = {"render": {"status": "ok", "backends": {}}}
    other["e2e"] = {
        "warm": {"status": "ok", "warm_s": 1.0, "first_edit_s": 2.0, "load_s": 0.5},
        "cold": {"status": "skipped", "reason": "--no-cold"},
    }
    merged = bench_mod.merge_results([other, result])
    assert list(merged["stages"]) == ["warp", "splat", "aggregation_median", "render"]  # canonical order
    assert merged["e2e"] == other["e2e"] and merged["options"]["e2e"] is True
    assert len(merged["merged_from"]) == 2
    foreign = json.loads(json.dumps(result))
    foreign["environment"]["git_commit"] = "0000000"
    with pytest.raises(SvEngineError, match="different GPUs or commits"):
        bench_mod.merge_results([result, foreign])
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result))
    b.write_text(json.dumps(other))
    assert bench_mod.main(["--merge", str(a), str(b), "--json", str(tmp_path / "m.json")]) == 0
    assert list(json.loads((tmp_path / "m.json").read_text())["stages"]) == list(merged["stages"])


def test_readme_rows_come_from_the_newest_run_that_measured_them(tmp_path):
    from sv_engine.benchmarks.readme_table import combine_newest

    newer = json.loads(json.dumps(SAMPLE))
    newer["environment"].update(date="2099-01-01", datetime="2099-01-01T00:00:00+00:00", git_commit="new0002")
    del newer["stages"]["unet_step"]  # a partial run: it did not time the UNet
    newer["stages"]["render"]["backends"]["cuda"]["median_ms"] = 0.25
    results = tmp_path / "results"
    results.mkdir()
    (results / "old.json").write_text(json.dumps(SAMPLE))
    (results / "new.json").write_text(json.dumps(newer))
    ordered = results_newest_first(results)
    assert [p.name for p in ordered] == ["new.json", "old.json"]
    combined = combine_newest([json.loads(p.read_text()) for p in ordered])
    assert combined["stages"]["unet_step"]["run"] == "abc1234"  # only the old run has it
    assert combined["stages"]["render"]["run"] == "new0002"
    table = render_table(combined)
    assert (
        "| ControlNet+UNet CFG step, 512² | 120.0 ms (reference) | 10.0 ms (trt) |" in table and "| abc1234 |" in table
    )
    assert "0.25 ms (cuda)" in table and "Run new0002:" in table and "Run abc1234:" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    update_readme(readme, ordered)
    assert "| new0002 |" in readme.read_text()


def test_readme_keeps_the_last_cold_row_when_a_newer_run_timed_only_warm_edits():
    from sv_engine.benchmarks.readme_table import combine_newest

    def run(commit: str, date: str, warm_s: float, cold: dict) -> dict:
        return {
            "environment": {"git_commit": commit, "date": date, "gpu": "G"},
            "stages": {},
            "e2e": {
                "warm": {"status": "ok", "warm_s": warm_s, "peak_mem_gb": 6.0, "backend": "torch-cuda-graph"},
                "cold": cold,
                "targets": {"warm_met": False, "cold_met": False if cold.get("status") == "ok" else None},
            },
        }

    old = run("old0001", "2026-01-01", 2.3, {"status": "ok", "seconds": 28.0})
    new = run("new0002", "2026-01-02", 1.9, {"status": "not measured in this run"})
    combined = combine_newest([new, old])
    assert combined["e2e"]["warm"]["warm_s"] == 1.9 and combined["e2e"]["cold"]["seconds"] == 28.0
    table = render_table(combined)
    assert "| 1.90 s (torch-cuda-graph) |" in table and "| 28.00 s |" in table
    warm_row = next(line for line in table.splitlines() if line.startswith("| whole edit, warm"))
    cold_row = next(line for line in table.splitlines() if line.startswith("| whole edit, cold"))
    assert warm_row.endswith("| new0002 |") and cold_row.endswith("| old0001 |")


def test_bench_on_user_weights(tmp_path):
    """--weights benchmarks the models in the folder (diffusers layout), not random ones."""
    import torch
    from sv_engine.stablevideo.models.loaders import save_components
    from sv_engine.stablevideo.models.tiny import build_tiny_components

    saved = build_tiny_components(5)  # a seed the bench's own random models (seed 0) do not use
    folder = save_components(saved, tmp_path / "weights")
    ctx = stages_mod.BenchContext(
        torch.device("cpu"),
        stages_mod.TINY,
        tiny=True,
        weights=folder,
        repeat=1,
        warmup=0,
        backends=["torch"],
        deadline=None,
        skip_slow_reference=False,
    )
    loaded = dict(ctx.components.unet.named_parameters())
    for name, param in saved.unet.named_parameters():
        assert torch.equal(loaded[name].cpu(), param.detach()), name
    result = run_bench(
        BenchOptions(
            stages="text_encoder", backends="torch", tiny=True, repeat=1, warmup=0, device="cpu", weights=folder
        )
    )
    assert result["stages"]["text_encoder"]["status"] == "ok"
    assert result["options"]["models"] == f"weights from {folder}" and str(folder) in result["environment"]["note"]
    with pytest.raises(SvEngineError, match="does not exist"):
        run_bench(BenchOptions(stages="warp", tiny=True, device="cpu", weights=tmp_path / "missing"))


def test_e2e_parity_never_compares_against_a_stand_in(tmp_path):
    """The first variant is the PSNR reference; when it fails, the others are not compared with
    whichever variant happened to succeed next (a device run once labelled such a PSNR "vs torch")."""
    from sv_engine.benchmarks.e2e_parity import main

    out = tmp_path / "e2e.json"
    main(
        [
            "--out",
            str(out),
            "--tiny",
            "--frames",
            "4",
            "--size",
            "64x48",
            "--steps",
            "2",
            "--backends",
            "no-such-backend,torch",
        ]
    )
    result = json.loads(out.read_text())
    assert result["psnr_reference"] == "no-such-backend"
    assert result["backends"]["no-such-backend"]["status"] == "error"
    assert result["backends"]["torch"]["status"] == "ok" and result["backends"]["torch"]["psnr_db"] is None


@pytest.mark.slow
def test_first_use_times_a_fresh_processs_first_edit_call_by_call(tmp_path):
    """benchmarks/first_use.py on the CPU: every network call of both edits is attributed (the keyframe
    loop's UNet steps: 4 + 3 + 3 with 4 steps at strength 0.8), one-offs are never negative, and with
    the unattributed rest they add up to the first edit's extra time."""
    from sv_engine.benchmarks import first_use

    out = tmp_path / "first-use.json"
    first_use.main(["--device", "cpu", "--out", str(out), "--timeout-s", "240"])
    result = json.loads(out.read_text())
    assert "error" not in result, result.get("error")
    calls = {(r["call"], r["shape"]): r for r in result["calls"]}
    assert calls[("fg unet_controlnet", "2x4x8x8")]["calls"] == 10
    assert calls[("bg unet_controlnet", "2x4x8x8")]["calls"] == 4
    assert {"open video", "fg vae_decode", "bg text_encode", "render_composite"} <= {r["call"] for r in result["calls"]}
    assert all(r["one_off_s"] >= 0 for r in result["calls"])
    extra = result["first_edit_s"] - result["second_edit_s"]
    assert result["one_offs_s"] + result["unattributed_s"] == pytest.approx(extra, abs=0.01)
    assert result["backend"] == "torch" and "import model libraries" in result["build_phases_s"]


def test_frame_decode_compares_one_thread_with_the_pool(tmp_path):
    """benchmarks/frame_decode.py: both variants timed on the same clip, frames checked equal."""
    from sv_engine.benchmarks import frame_decode
    from sv_engine.stablevideo import data

    out = tmp_path / "decode.json"
    frame_decode.main(["--out", str(out), "--frames", "3", "--repeat", "1"])
    result = json.loads(out.read_text())
    assert set(result["median_s"]) == {"1 thread", *([f"{data.DECODE_THREADS} threads"] * (data.DECODE_THREADS > 1))}
    assert result["speedup"] > 0 and data.DECODE_THREADS == min(8, os.cpu_count() or 1), "the default is restored"


def test_a_run_of_cold_edits_only_still_gives_the_readme_its_cold_row():
    """engine_bench runs that build engines and time cold edits but no warm edit (the AOTInductor
    build runs) are the newest cold measurement: the README's cold row must come from them, the
    warm row from the newest run that timed one."""
    from sv_engine.benchmarks.engine_bench import bench_view
    from sv_engine.benchmarks.readme_table import combine_newest

    env = {"gpu": "H200", "date": "2026-12-02", "git_commit": "new"}
    cold_only = {
        "commit": "new",
        "date": "2026-12-02",
        "cold_edit": {"torch-cuda-graph": {"status": "ok", "seconds": 24.5}},
    }
    view = bench_view(cold_only)
    assert view["e2e"] == {"cold": {"status": "ok", "seconds": 24.5}, "targets": {"cold_met": False}}
    assert "e2e" not in bench_view({"commit": "new", "cold_edit": {"torch-cuda-graph": {"status": "error"}}})
    older = {
        "environment": {**env, "git_commit": "old"},
        "stages": {},
        "e2e": {"warm": {"status": "ok", "warm_s": 1.9}, "cold": {"status": "not measured in this run"}},
    }
    combined = combine_newest([{**cold_only, **view}, older])
    assert combined["e2e"]["warm"]["warm_s"] == 1.9 and combined["e2e"]["run"] == "old"
    assert combined["e2e"]["cold"]["seconds"] == 24.5 and combined["e2e"]["cold_run"] == "new"


def test_the_aoti_runs_gpu_default_warm_edit_is_the_readmes_warm_row(monkeypatch):
    """The AOTInductor run times the GPU default beside the aoti variants (``warm_edit_aoti``): that
    side-by-side number is the newest warm measurement, so the README's warm row must take it."""
    from sv_engine.benchmarks import engine_bench

    monkeypatch.setattr(engine_bench, "default_warm_variant", lambda: "torch-cuda-graph, background stream")
    warm = {"status": "ok", "warm_s": 1.897, "peak_mem_gb": 8.91}
    run = {"commit": "new", "warm_edit_aoti": {"aoti": {"status": "ok", "warm_s": 2.2, "peak_mem_gb": 8.9}}}
    assert "e2e" not in engine_bench.bench_view(run)  # no GPU-default variant: no warm row from this run
    run["warm_edit_aoti"]["torch-cuda-graph, background stream"] = warm
    view = engine_bench.bench_view(run)
    assert view["e2e"]["warm"] == {**warm, "backend": "torch-cuda-graph, background stream"}
    assert view["e2e"]["targets"]["warm_met"] is False and view["e2e"]["targets"]["peak_mem_met"] is False


def test_warm_edits_hand_over_each_variants_result_as_it_is_measured(tmp_path):
    """A device call cut off by its time limit kept no warm result at all when one variant's compile
    outlasted the budget: ``progress`` must get every variant's result as soon as it is done."""
    import torch
    from sv_engine.benchmarks.engine_bench import warm_edits

    seen: list[list[str]] = []
    out = warm_edits(
        None, tmp_path, torch.device("cpu"), ["a", "b"], deadline=-1.0, progress=lambda d: seen.append(list(d))
    )
    assert seen == [["a"], ["a", "b"]] and out == {v: {"status": "skipped", "reason": "time budget"} for v in "ab"}


def test_instrumented_calls_keep_what_the_pipeline_reads_off_them():
    """The timing wrappers keep ``thread_safe`` and ``prepare`` (the background overlap and the capture
    ahead of the later keyframes' sizes would silently stop in an instrumented benchmark otherwise)."""
    from types import SimpleNamespace

    from sv_engine.benchmarks.timing import DENOISER_CALLS, instrument_denoisers

    def call(*args):
        return "out"

    call.thread_safe, call.prepare = False, object()
    plain = lambda *args: "plain"  # noqa: E731
    denoisers = {side: SimpleNamespace(**{a: call if side == "f" else plain for a in DENOISER_CALLS}) for side in "fb"}
    pipeline = SimpleNamespace(fg_denoiser=denoisers["f"], bg_denoiser=denoisers["b"])
    seen = []
    instrument_denoisers(pipeline, lambda name, fn: lambda *a: seen.append(name) or fn(*a))
    first = getattr(pipeline.fg_denoiser, DENOISER_CALLS[0])
    assert first() == "out" and seen == [f"fg {DENOISER_CALLS[0]}"]
    assert first.thread_safe is False and first.prepare is call.prepare
    other = getattr(pipeline.bg_denoiser, DENOISER_CALLS[0])
    assert other.thread_safe is True and not hasattr(other, "prepare")
