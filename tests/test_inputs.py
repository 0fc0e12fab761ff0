"""One validation of an edit's inputs, the same everywhere: `sv-engine edit` (exit 2, before any model loads),
the service's POST /jobs (422) and `sv-engine batch` (the job is recorded invalid, never run)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from requires import import_or_skip
from sv_engine.stablevideo.nla import CHECKPOINT_KEYS

from sv_engine.cli import main


def corrupt_checkpoint(data: Path) -> None:
    (data / "checkpoint").write_bytes(b"\x00not a torch checkpoint")


def foreign_checkpoint(data: Path) -> None:
    torch.save({key: {"weight": torch.zeros(3, 3)} for key in CHECKPOINT_KEYS.values()}, data / "checkpoint")


def missing_frames(data: Path) -> None:
    for frame in sorted((data / data.name).glob("*.jpg"))[2:]:
        frame.unlink()


def corrupt_frame(data: Path) -> None:
    sorted((data / data.name).glob("*.jpg"))[1].write_bytes(b"GIF89a? no")


# (id, what is done to the data folder, job fields overridden, the input at fault, words of the message)
CASES = [
    ("blank fg prompt", None, {"fg_prompt": "   "}, "fg_prompt", "the prompt is empty"),
    ("keyframe past the end", None, {"keyframes": [0, 99]}, "keyframes", "[99] out of range for a 4-frame video"),
    ("corrupt checkpoint", corrupt_checkpoint, {}, "data", "Cannot read NLA checkpoint"),
    ("foreign checkpoint", foreign_checkpoint, {}, "data", "does not match the original architecture"),
    ("missing checkpoint", lambda d: (d / "checkpoint").unlink(), {}, "data", "NLA checkpoint not found"),
    ("fewer frames than config.json", missing_frames, {}, "data", "holds 2 jpg/png frames but config.json says 4"),
    ("corrupt frame", corrupt_frame, {}, "data", "Cannot read frame"),
]
IDS = [case[0] for case in CASES]


def job(**overrides) -> dict:
    return {"data": "clip", "fg_prompt": "a cat", "bg_prompt": "snow", **overrides}


def spoil(data: Path, damage: Callable[[Path], None] | None) -> None:
    if damage is not None:
        damage(data)


@pytest.mark.parametrize("name, damage, fields, field, words", CASES, ids=IDS)
def test_edit_rejects_before_loading_models(
    monkeypatch, caplog, tmp_path: Path, random_data_dir: Path, name, damage, fields, field, words
) -> None:
    spoil(random_data_dir, damage)

    def no_model_load(*args, **kwargs):
        raise AssertionError("models were loaded before the inputs were checked")

    monkeypatch.setattr("sv_engine.export.compose.load_components", no_model_load)  # the binding the edit calls
    spec = job(**fields)
    args = ["edit", str(random_data_dir), "--fg-prompt", spec["fg_prompt"], "--bg-prompt", spec["bg_prompt"]]
    if "keyframes" in spec:
        args += ["--keyframes", ",".join(map(str, spec["keyframes"]))]
    out = tmp_path / "out" / "edit.mp4"
    monkeypatch.setattr(sys, "argv", ["sv-engine", *args, "--tiny", "--device", "cpu", "--out", str(out)])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    flag = "DATA_DIR" if field == "data" else "--" + field.replace("_", "-")
    assert line.startswith(f"{flag}: ") and words in line and " Fix: " in line, line
    assert not out.exists()


@pytest.mark.parametrize("name, damage, fields, field, words", CASES, ids=IDS)
def test_service_answers_422_with_the_same_message(
    tmp_path: Path, random_data_dir: Path, name, damage, fields, field, words
) -> None:
    import_or_skip("fastapi")
    import_or_skip("httpx")
    from fastapi.testclient import TestClient

    from sv_engine.service.app import create_app

    class NoJobsManager:  # the job must be refused before it reaches the scheduler
        def submit(self, *args, **kwargs):
            raise AssertionError("an invalid job was queued")

    spoil(random_data_dir, damage)
    client = TestClient(create_app(NoJobsManager(), data_root=random_data_dir.parent))
    response = client.post("/jobs", json=job(**fields))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and body["detail"].startswith(f"{field}: ") and words in body["detail"], body
    assert body["fix"]


@pytest.mark.parametrize("name, damage, fields, field, words", CASES, ids=IDS)
def test_batch_records_the_job_invalid(tmp_path: Path, random_data_dir: Path, name, damage, fields, field, words):
    yaml = import_or_skip("yaml")
    from sv_engine.service.batch import load_jobs

    spoil(random_data_dir, damage)
    jobs_file = tmp_path / "jobs.yaml"
    jobs_file.write_text(yaml.safe_dump({"jobs": [{"name": "j", **job(**fields)}]}))
    [loaded] = load_jobs(jobs_file)
    assert loaded.error is not None and loaded.error.startswith(f"{field}: ") and words in loaded.error


def test_valid_inputs_pass_and_give_the_config(random_data_dir: Path) -> None:
    from sv_engine.stablevideo.inputs import check_edit_inputs
    from sv_engine.stablevideo.params import EditParams

    config = check_edit_inputs(random_data_dir, EditParams("a cat", "snow", keyframes=[0, 3]))
    assert (config.resx, config.resy, config.num_frames) == (48, 32, 4)
