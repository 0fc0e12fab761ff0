"""The render service end to end on CPU: local Ray, one warm tiny-model worker, FastAPI over TestClient
plus one real loopback socket (uvicorn on 127.0.0.1). Submissions, burst + 429, cancel, a worker killed
mid-job (retried), hostile requests (4xx with a message), bearer tokens."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from requires import import_or_skip

ray = import_or_skip("ray")
import_or_skip("fastapi")
httpx = import_or_skip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from sv_engine.export.compose import RuntimeConfig  # noqa: E402

from sv_engine.errors import SvEngineError  # noqa: E402
from sv_engine.service.app import check_bind, create_app  # noqa: E402
from sv_engine.service.scheduler import JobManager  # noqa: E402
from sv_engine.service.workers import WorkerPool  # noqa: E402

TOKEN = "t0ken-for-tests-0123456789"
# The smallest edit the pipeline allows: one keyframe, one DDIM step, 64 px, foreground only.
TINY = {
    "steps": 1,
    "strength": 1.0,
    "image_resolution": 64,
    "depth_resolution": 64,
    "keyframes": [0],
    "seed": 7,
    "edit_background": False,
}


def job(**overrides) -> dict:
    return {"data": "clip", "fg_prompt": "a red cat", "bg_prompt": "snow", **TINY, **overrides}


def make_clip(folder: Path) -> Path:
    from sv_engine.stablevideo.data import write_video_data
    from sv_engine.stablevideo.nla import NLAModel

    frames = np.random.default_rng(0).integers(0, 255, size=(4, 32, 48, 3), dtype=np.uint8)
    return write_video_data(folder, frames, NLAModel.random(seed=1))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    """(manager, data_root, out_root): local Ray, one warm worker, a scheduler with a queue of 2."""
    old = os.environ.get("SV_ENGINE_CACHE")
    os.environ["SV_ENGINE_CACHE"] = str(tmp_path_factory.mktemp("ray-cache"))  # Ray workers inherit it
    root = tmp_path_factory.mktemp("service")
    data_root, out_root = root / "data", root / "out"
    make_clip(data_root / "clip")
    make_clip(root / "outside" / "secret")  # a valid data folder outside the data root
    (data_root / "escape").symlink_to(root / "outside" / "secret", target_is_directory=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    manager = None
    try:
        pool = WorkerPool(RuntimeConfig(tiny=True, device="cpu"), num_workers=1)
        pool.wait_ready(timeout=120)
        manager = JobManager(pool, out_root, max_queue=2, max_retries=2).start()
        yield manager, data_root, out_root
    finally:
        if manager is not None:
            manager.stop()
            manager.pool.shutdown()
        ray.shutdown()
        if old is None:
            os.environ.pop("SV_ENGINE_CACHE", None)
        else:
            os.environ["SV_ENGINE_CACHE"] = old


@pytest.fixture(scope="module")
def client(service):
    manager, data_root, _ = service
    with TestClient(create_app(manager, data_root=data_root)) as c:
        yield c


def wait_for(client, job_id: str, statuses: set[str], timeout: float = 120.0, headers=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job_id}", headers=headers).json()
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout} s: {body}")


def test_submit_status_video_preview(client: TestClient, service) -> None:
    r = client.post("/jobs", json=job())
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] in ("queued", "running") and r.json()["progress"] < 1
    assert client.get(f"/jobs/{job_id}/video").status_code in (409, 200)
    done = wait_for(client, job_id, {"done", "failed"})
    assert done["status"] == "done", done
    assert done["progress"] == 1.0 and done["attempts"] == 1 and done["seed"] == 7 and done["frames"] == 4
    video = client.get(f"/jobs/{job_id}/video")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4" and video.content[4:8] == b"ftyp"
    preview = client.get(f"/jobs/{job_id}/preview")
    assert preview.status_code == 200 and preview.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert job_id in {j["id"] for j in client.get("/jobs").json()["jobs"]}
    assert (service[2] / job_id / "edit.mp4").is_file()  # per-job output folder named by the id
    assert client.delete(f"/jobs/{job_id}").status_code == 409  # already done
    schema = client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/video", "/jobs/{job_id}/preview", "/health"} <= set(
        schema["paths"]
    )


def test_hostile_requests_get_4xx_with_a_message(client: TestClient) -> None:
    def check(response, code: int, needle: str) -> None:
        assert response.status_code == code, (response.status_code, response.text)
        assert needle.lower() in response.json()["detail"].lower(), response.text

    check(client.post("/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422, "json")
    check(client.post("/jobs", json=[1, 2]), 422, "invalid request")
    check(client.post("/jobs", json=job(data="../outside/secret")), 422, "'..'")
    check(client.post("/jobs", json=job(data="clip/../../outside/secret")), 422, "'..'")
    check(client.post("/jobs", json=job(data="/etc")), 422, "absolute")
    check(client.post("/jobs", json=job(data="escape")), 422, "outside the data root")  # symlink out of the root
    check(client.post("/jobs", json=job(data="nope")), 422, "does not exist")
    check(client.post("/jobs", json=job(fg_prompt="x" * 1001)), 422, "fg_prompt")
    check(client.post("/jobs", json=job(steps=10_000)), 422, "steps")
    check(client.post("/jobs", json=job(strength=0)), 422, "strength")
    check(client.post("/jobs", json=job(strength=1.0, keyframes=[0, 3])), 422, "strength")
    check(client.post("/jobs", json=job(image_resolution=100)), 422, "multiple of 64")
    check(client.post("/jobs", json=job(keyframes=[-1])), 422, "keyframes")
    check(client.post("/jobs", json=job(shell="rm -rf /")), 422, "shell")
    big = {**job(), "fg_prompt": "x" * 70_000}
    check(client.post("/jobs", json=big), 413, "larger than")
    chunks = iter([b'{"data": "clip", "fg_prompt": "' + b"x" * 40_000, b"y" * 40_000 + b'"}'])  # no Content-Length
    check(client.post("/jobs", content=chunks, headers={"content-type": "application/json"}), 413, "larger than")
    check(client.get("/jobs/" + "0" * 32), 404, "no job")
    assert client.get("/jobs/..%2F..%2Fetc").status_code in (404, 422)
    assert client.get("/jobs/not-a-job-id/video").status_code == 422
    # The service keeps serving.
    assert client.get("/health").json()["workers_alive"] == 1


def test_bearer_token(service) -> None:
    manager, data_root, _ = service
    with TestClient(create_app(manager, data_root=data_root, token=TOKEN)) as c:
        assert c.get("/health").status_code == 200  # liveness needs no token
        r = c.get("/jobs")
        assert (
            r.status_code == 401
            and "bearer" in r.json()["detail"].lower()
            and r.headers["www-authenticate"] == "Bearer"
        )
        assert c.get("/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/jobs", headers={"Authorization": TOKEN}).status_code == 401
        assert c.post("/jobs", json=job(data="../x")).status_code == 401  # auth is checked before the body is used
        assert c.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    check_bind("127.0.0.1", None)
    with pytest.raises(SvEngineError, match="--token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(SvEngineError, match="shorter"):
        check_bind("0.0.0.0", "short")
    check_bind("0.0.0.0", TOKEN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_socket_burst_cancel_and_no_lost_jobs(service) -> None:
    import uvicorn

    manager, data_root, _ = service
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(manager, data_root=data_root, token=TOKEN), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=30) as http:

            def submit(i: int):
                return http.post("/jobs", json=job(seed=i))

            with concurrent.futures.ThreadPoolExecutor(8) as executor:
                responses = list(executor.map(submit, range(10)))
            codes = [r.status_code for r in responses]
            assert set(codes) <= {202, 429}, [r.text for r in responses]
            accepted = [r.json()["id"] for r in responses if r.status_code == 202]
            rejected = [r for r in responses if r.status_code == 429]
            assert accepted and rejected and len(accepted) + len(rejected) == 10
            assert "queue full" in rejected[0].json()["detail"].lower() and rejected[0].headers["retry-after"]
            # Cancel the last accepted job while it still waits (the queue drains one job at a time).
            cancelled = http.delete(f"/jobs/{accepted[-1]}")
            if cancelled.status_code == 200:
                assert cancelled.json()["status"] == "cancelled"
            else:
                assert cancelled.status_code == 409  # it had already finished
            states = {i: wait_for(http, i, {"done", "failed", "cancelled"})["status"] for i in accepted}
            assert all(s in ("done", "cancelled") for s in states.values()), states
            assert sum(s == "done" for s in states.values()) >= len(accepted) - 1
            listed = {j["id"]: j["status"] for j in http.get("/jobs").json()["jobs"]}
            assert all(listed[i] == states[i] for i in accepted)  # none lost
            for i, s in states.items():
                assert http.get(f"/jobs/{i}/video").status_code == (200 if s == "done" else 409)
            assert http.get("/health").json()["status"] == "ok"
    finally:
        server.should_exit = True
        thread.join(15)


def test_killed_worker_mid_job_is_retried(client: TestClient, service) -> None:
    manager = service[0]
    actor = manager.pool.actors[0]
    pid_before = ray.get(actor.pid.remote(), timeout=30)
    # A slightly longer edit (two keyframes, four steps, background too) so the kill lands mid-edit.
    r = client.post(
        "/jobs",
        json=job(fg_prompt="a cat that survives", edit_background=True, steps=4, strength=0.8, keyframes=[0, 3]),
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    running = wait_for(client, job_id, {"running", "done", "failed"})
    assert running["status"] == "running", running
    time.sleep(0.2)  # inside the edit
    ray.kill(actor, no_restart=False)  # the worker dies mid-job; Ray restarts it
    done = wait_for(client, job_id, {"done", "failed"}, timeout=150)
    assert done["status"] == "done", done
    assert done["attempts"] == 2 and done["progress"] == 1.0
    assert client.get(f"/jobs/{job_id}/video").status_code == 200
    assert ray.get(actor.pid.remote(), timeout=30) != pid_before  # a fresh (warm again) worker process
    health = client.get("/health").json()
    assert health["workers_alive"] == 1 and health["status"] == "ok"
