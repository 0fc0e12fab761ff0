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


# ---- the studio's job kinds and routes (atlas, render with a keep-mask, clips, uploads, fit) ---------
def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def read_png_bytes(content: bytes, mode: str = "RGB") -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(content)).convert(mode)).astype(np.int16)


def test_atlas_edit_outputs_and_keep_mask_render(client: TestClient) -> None:
    import base64

    atlas = client.post("/jobs/atlas", json={"data": "clip"})
    assert atlas.status_code == 202 and atlas.json()["kind"] == "atlas", atlas.text
    atlas = wait_for(client, atlas.json()["id"], {"done", "failed"})
    assert atlas["status"] == "done" and {"fg_atlas.png", "bg_atlas.png", "atlas.json"} <= set(atlas["files"])
    assert "video" not in atlas  # an atlas job has no video
    placement = client.get(f"/jobs/{atlas['id']}/files/atlas.json").json()
    assert placement["video"] == "clip" and set(placement["fg"]["bbox"]) == {"top", "left", "height", "width"}
    original = read_png_bytes(client.get(f"/jobs/{atlas['id']}/files/fg_atlas.png").content)
    assert original.shape[:2] == (placement["fg"]["bbox"]["height"], placement["fg"]["bbox"]["width"])

    edit = wait_for(client, client.post("/jobs", json=job(seed=11)).json()["id"], {"done", "failed"})
    assert edit["status"] == "done" and edit["spec"]["seed"] == 11 and edit["kind"] == "edit"
    assert {"fg_atlas.png", "keyframe_0.png", "fg_atlas_edited.png", "bg_atlas_edited.png"} <= set(edit["files"])
    edited = read_png_bytes(client.get(f"/jobs/{edit['id']}/files/fg_atlas_edited.png").content)
    assert np.array_equal(read_png_bytes(client.get(f"/jobs/{edit['id']}/files/fg_atlas.png").content), original)
    assert np.abs(edited - original).mean() > 10  # tiny random models change the atlas a lot

    # Keep-mask: the left half keeps the original fg atlas, the right half the edit (±1: uint8 rounding).
    mask = np.zeros(edited.shape[:2], np.uint8)
    mask[:, : mask.shape[1] // 2] = 255
    spec = {"data": "clip", "atlases_from": edit["id"], "mask_png": base64.b64encode(png_bytes(mask)).decode()}
    render = client.post("/jobs/render", json=spec)
    assert render.status_code == 202, render.text
    assert "mask_png" not in render.json()["spec"]  # the mask is not echoed back
    render = wait_for(client, render.json()["id"], {"done", "failed"})
    assert render["status"] == "done" and render["kind"] == "render" and render["frames"] == 4, render
    kept = read_png_bytes(client.get(f"/jobs/{render['id']}/files/fg_atlas_kept.png").content)
    assert np.abs(kept[mask == 255] - original[mask == 255]).max() <= 1
    assert np.abs(kept[mask == 0] - edited[mask == 0]).max() <= 1
    assert client.get(render["video"]).content[4:8] == b"ftyp"

    def check(response, code: int, needle: str) -> None:
        assert response.status_code == code, (response.status_code, response.text)
        assert needle.lower() in response.json()["detail"].lower(), response.text

    check(client.post("/jobs/render", json={**spec, "atlases_from": atlas["id"]}), 409, "needs a done edit")
    check(client.post("/jobs/render", json={**spec, "atlases_from": "0" * 32}), 404, "no job")
    check(client.post("/jobs/render", json={**spec, "mask_png": "bm90IGEgcG5n"}), 400, "not a png")
    check(client.post("/jobs/render", json={**spec, "mask_png": "%%%"}), 400, "base64")
    huge = png_bytes(np.zeros((1, 1), np.uint8))
    huge = huge[:16] + (100_000).to_bytes(4, "big") + huge[20:]  # IHDR says 100000 px wide
    check(client.post("/jobs/render", json={**spec, "mask_png": base64.b64encode(huge).decode()}), 400, "at most")
    check(client.post("/jobs/render", json={**spec, "data": "escape"}), 422, "outside the data root")
    check(client.get(f"/jobs/{edit['id']}/files/nope.png"), 404, "no file")
    assert client.get(f"/jobs/{edit['id']}/files/..%2F..%2Fsecret.png").status_code == 404
    wrong = {**spec, "mask_png": base64.b64encode(png_bytes(np.zeros((5, 7), np.uint8))).decode()}
    failed = wait_for(client, client.post("/jobs/render", json=wrong).json()["id"], {"done", "failed"})
    assert failed["status"] == "failed" and "mask size" in failed["error"].lower(), failed


def test_clips_uploads_and_fit(client: TestClient, service) -> None:
    from sv_engine.stablevideo.video_io import write_mp4

    manager, data_root, _ = service
    clips = client.get("/clips").json()["clips"]
    assert [c["name"] for c in clips] == ["clip"]  # the symlink out of the root is not listed
    assert clips[0] | {"default_keyframes": None} == {
        "name": "clip", "frames": 4, "width": 48, "height": 32, "fitted": True, "default_keyframes": None
    }  # fmt: skip
    frame = client.get("/clips/clip/frames/0")
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    assert client.get("/clips/clip/frames/4").status_code == 404
    assert client.get("/clips/escape/frames/0").status_code == 422
    assert client.get("/clips/..%2Foutside/frames/0").status_code in (404, 422)

    assert client.put("/uploads/notes.txt", content=b"x").status_code == 400
    assert client.put("/uploads/empty.mp4", content=b"").status_code == 400
    assert client.put("/uploads/..%2F..%2Fx.mp4", content=b"x").status_code in (404, 422)
    with TestClient(create_app(manager, data_root=data_root, max_upload_bytes=2048)) as small:
        assert small.put("/uploads/big.mp4", content=b"x" * 4096).status_code == 413
        chunks = iter([b"x" * 1500, b"x" * 1500])  # streamed, no Content-Length
        assert small.put("/uploads/big.mp4", content=chunks).status_code == 413
    assert not [p for p in (data_root / ".uploads").iterdir() if "big" in p.name]  # nothing half-written kept

    # A small real clip (the demo's frames, downscaled; at 64x36 fit finds nothing moving) uploaded and fitted.
    from sv_engine.stablevideo.data import load_frames, read_config
    from sv_engine.stablevideo.demo import demo_data_dir

    demo = demo_data_dir()
    frames, _ = load_frames(demo, read_config(demo))
    small_frames = torch_resize(frames[:8], (72, 128))
    video = data_root.parent / "upload.mp4"
    write_mp4(video, small_frames)
    stored = client.put("/uploads/my clip.mp4".replace(" ", "_"), content=video.read_bytes())
    assert stored.status_code == 201, stored.text
    upload = stored.json()["upload"]
    assert upload.endswith("-my_clip.mp4") and (data_root / ".uploads" / upload).is_file()
    fit = {"upload": upload, "data": "fitted", "frames": 8, "width": 128, "height": 72, "minutes": 2, "iters": 20}
    r = client.post("/jobs/fit", json=fit)
    assert r.status_code == 202 and r.json()["kind"] == "fit", r.text
    assert client.post("/jobs/fit", json=fit).status_code == 409  # the same folder is being fitted
    done = wait_for(client, r.json()["id"], {"done", "failed"}, timeout=300)
    assert done["status"] == "done", done["error"]
    assert done["frames"] == 8 and "fit_preview.png" in done["files"], done
    assert "fitted" in {c["name"] for c in client.get("/clips").json()["clips"]}
    assert client.post("/jobs/fit", json=fit).status_code == 409  # never over an existing folder
    assert client.post("/jobs/fit", json={**fit, "data": "other", "upload": "nope.mp4"}).status_code == 404
    assert client.post("/jobs/fit", json={**fit, "data": "../up"}).status_code == 422


def torch_resize(frames, size: tuple[int, int]) -> np.ndarray:
    """(T, 3, H, W) float frames -> (T, h, w, 3) uint8 at ``size`` (h, w)."""
    import torch

    small = torch.nn.functional.interpolate(frames, size=size, mode="area")
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_studio_page_and_new_routes_behind_the_token(service) -> None:
    manager, data_root, _ = service
    with TestClient(create_app(manager, data_root=data_root, token=TOKEN)) as c:
        page = c.get("/ui/")  # the static page needs no token; everything it calls does
        assert page.status_code == 200 and "sv-engine studio" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "http" not in page.text.replace("http-equiv", "")  # no external asset of any kind
        assert c.get("/ui", follow_redirects=False).status_code in (307, 308)
        assert c.get("/ui/studio.js").status_code == 200 and c.get("/ui/__init__.py").status_code == 404
        for method, path in [("get", "/clips"), ("get", "/clips/clip/frames/0"), ("put", "/uploads/a.mp4")]:
            assert getattr(c, method)(path).status_code == 401, path
        for path in ("/jobs/atlas", "/jobs/render", "/jobs/fit"):
            assert c.post(path, json={}).status_code == 401, path
        assert c.get("/clips", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
