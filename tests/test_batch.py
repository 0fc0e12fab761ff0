"""``sv-engine batch`` on a local Ray (CPU, tiny models): several jobs finish, failures are recorded, re-runs resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from requires import import_or_skip

ray = import_or_skip("ray")
import_or_skip("yaml")

from sv_engine.export.compose import RuntimeConfig  # noqa: E402

from sv_engine.errors import SvEngineError  # noqa: E402
from sv_engine.service.batch import RESULTS_NAME, load_jobs, read_results, run_batch  # noqa: E402
from sv_engine.service.workers import WorkerPool  # noqa: E402

# The smallest edit the pipeline allows: one keyframe, one DDIM step, 64 px.
TINY_JOB = {"steps": 1, "strength": 1.0, "image_resolution": 64, "depth_resolution": 64, "keyframes": [0], "seed": 3}


def make_clip(folder: Path, seed: int = 0) -> Path:
    from sv_engine.stablevideo.data import write_video_data
    from sv_engine.stablevideo.nla import NLAModel

    frames = np.random.default_rng(seed).integers(0, 255, size=(4, 32, 48, 3), dtype=np.uint8)
    return write_video_data(folder, frames, NLAModel.random(seed=1))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory):
    """Local Ray with one warm tiny-model worker, shared by this module (models load once)."""
    old = os.environ.get("SV_ENGINE_CACHE")
    os.environ["SV_ENGINE_CACHE"] = str(tmp_path_factory.mktemp("ray-cache"))  # Ray workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        workers = WorkerPool(RuntimeConfig(tiny=True, device="cpu"), num_workers=1)
        workers.wait_ready(timeout=120)
        yield workers
        workers.shutdown()
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("SV_ENGINE_CACHE", None)
        else:
            os.environ["SV_ENGINE_CACHE"] = old


def write_jobs(path: Path, jobs: list[dict], defaults: dict | None = None) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"defaults": defaults or TINY_JOB, "jobs": jobs}))
    return path


def test_load_jobs_validates_each_job(tmp_path: Path) -> None:
    make_clip(tmp_path / "clip")
    jobs = load_jobs(
        write_jobs(
            tmp_path / "jobs.yaml",
            [
                {"name": "ok", "data": "clip", "fg_prompt": "a cat", "bg_prompt": "snow"},
                {"name": "long", "data": "clip", "fg_prompt": "x" * 1001, "bg_prompt": "snow"},
                {"name": "escape", "data": "../clip", "fg_prompt": "a cat", "bg_prompt": "snow"},
                {"name": "missing", "data": "nope", "fg_prompt": "a cat", "bg_prompt": "snow"},
                {"data": "clip", "fg_prompt": "a dog", "bg_prompt": "snow", "steps": 0},
            ],
        )
    )
    by_name = {j.name: j for j in jobs}
    assert by_name["ok"].error is None and by_name["ok"].data_dir == (tmp_path / "clip").resolve()
    assert "fg_prompt" in by_name["long"].error
    assert "'..'" in by_name["escape"].error
    assert "does not exist" in by_name["missing"].error
    assert sum(j.error is not None for j in jobs) == 4
    with pytest.raises(SvEngineError, match="twice"):
        load_jobs(
            write_jobs(tmp_path / "dup.yaml", [{"name": "a", "data": "clip", "fg_prompt": "x", "bg_prompt": "y"}] * 2)
        )
    (tmp_path / "bad.yaml").write_text("jobs: [unclosed")
    with pytest.raises(SvEngineError, match="not valid YAML"):
        load_jobs(tmp_path / "bad.yaml")


def test_worker_model_config_is_checked_before_any_worker_starts() -> None:
    """A bad model choice stops the batch/service with one clear error, not a failing Ray actor."""
    with pytest.raises(SvEngineError, match="option of the torch backend"):
        RuntimeConfig(tiny=True, backend="ort", cuda_graphs=True).check()
    with pytest.raises(SvEngineError, match="Unknown backend"):
        RuntimeConfig(tiny=True, backend="tensorflow").check()
    RuntimeConfig(tiny=True, cuda_graphs=True).check()  # auto resolves to torch with CUDA graphs


def test_batch_runs_records_failures_and_resumes(tmp_path: Path, pool: WorkerPool) -> None:
    make_clip(tmp_path / "data" / "clip-a", seed=0)
    make_clip(tmp_path / "data" / "clip-b", seed=1)
    jobs = write_jobs(
        tmp_path / "jobs.yaml",
        [
            {"name": "a", "data": "clip-a", "fg_prompt": "a red cat", "bg_prompt": "snow"},
            {"name": "b", "data": "clip-b", "fg_prompt": "a blue cat", "bg_prompt": "sand", "edit_background": False},
            {
                "name": "a-again",
                "data": "clip-a",
                "fg_prompt": "a green cat",
                "bg_prompt": "grass",
                "edit_background": False,
            },
            {
                "name": "bad-keyframe",
                "data": "clip-b",
                "fg_prompt": "a cat",
                "bg_prompt": "sand",
                "keyframes": [99],
            },  # out of range for the 4-frame clip: invalid before any worker runs it
            {"name": "bad-spec", "data": "clip-a", "fg_prompt": "", "bg_prompt": "sand"},  # fails validation
        ],
    )
    out = tmp_path / "out"
    first = run_batch(jobs, out, pool=pool, data_root=tmp_path / "data")
    assert (first.total, first.skipped, first.done, first.invalid, first.failed) == (5, 0, 3, 2, 0), first.as_dict()
    rows = read_results(out / RESULTS_NAME)
    assert {n: r["status"] for n, r in rows.items()} == {
        "a": "done",
        "b": "done",
        "a-again": "done",
        "bad-keyframe": "failed",
        "bad-spec": "failed",
    }
    assert "99" in rows["bad-keyframe"]["error"] and "fg_prompt" in rows["bad-spec"]["error"]
    for name in ("a", "b", "a-again"):
        assert (out / name / "edit.mp4").stat().st_size > 0 and (out / name / "preview.png").is_file()
        report = json.loads((out / name / "report.json").read_text())
        assert report["frames"] == 4 and report["keyframes"] == [0]
    assert len({rows[n]["seed"] for n in ("a", "b")}) == 1  # seeds are honoured (same seed in defaults)

    mtime = (out / "a" / "edit.mp4").stat().st_mtime_ns
    second = run_batch(jobs, out, pool=pool, data_root=tmp_path / "data")
    assert (second.skipped, second.done, second.invalid, second.failed) == (3, 0, 2, 0), second.as_dict()
    assert (out / "a" / "edit.mp4").stat().st_mtime_ns == mtime  # done jobs were not re-run
    lines = (out / RESULTS_NAME).read_text().splitlines()
    assert len(lines) == 5 + 2  # only the two failures were recorded again


def test_batch_reruns_a_done_job_whose_output_vanished(tmp_path: Path, pool: WorkerPool) -> None:
    make_clip(tmp_path / "clip")
    jobs = write_jobs(
        tmp_path / "jobs.yaml",
        [{"name": "only", "data": "clip", "fg_prompt": "a cat", "bg_prompt": "snow", "edit_background": False}],
    )
    out = tmp_path / "out"
    assert run_batch(jobs, out, pool=pool).done == 1
    (out / "only" / "edit.mp4").unlink()
    again = run_batch(jobs, out, pool=pool)
    assert (again.skipped, again.done) == (0, 1)
    assert (out / "only" / "edit.mp4").is_file()


def test_batch_cli_exits_2_with_one_line_per_invalid_job(tmp_path: Path) -> None:
    """An invalid job is not silently recorded: the batch exits 2 and says why on stderr, one line per job."""
    import subprocess
    import sys

    make_clip(tmp_path / "clip")
    jobs = write_jobs(
        tmp_path / "jobs.yaml",
        [
            {"name": "no-prompt", "data": "clip", "fg_prompt": "", "bg_prompt": "snow"},
            {"name": "nowhere", "data": "nope", "fg_prompt": "a cat", "bg_prompt": "snow"},
        ],
    )
    sv_engine = Path(sys.executable).with_name("sv-engine")
    result = subprocess.run(
        [sv_engine, "batch", jobs, "--tiny", "--out", tmp_path / "out"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 3, result.stderr
    assert errors[0].startswith("ERROR sv_engine.cli.batch: job no-prompt: fg_prompt")
    assert errors[1].startswith("ERROR sv_engine.cli.batch: job nowhere: data: Data folder 'nope' does not exist")
    assert "2 of 2 jobs are invalid" in errors[2]
    assert json.loads(result.stdout)["invalid"] == 2

    (tmp_path / "broken.yaml").write_text("jobs: [unclosed")
    result = subprocess.run(
        [sv_engine, "batch", tmp_path / "broken.yaml", "--tiny", "--out", tmp_path / "out2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    assert not (tmp_path / "out2").exists()  # a bad jobs file leaves no output folder behind
