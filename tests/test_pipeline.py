"""End-to-end edits on the bundled demo clip with tiny random models (CPU)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from sv_engine.engine.parity import psnr
from sv_engine.stablevideo import background as background_module
from sv_engine.stablevideo import pipeline as pipeline_module
from sv_engine.stablevideo.demo import demo_data_dir
from sv_engine.stablevideo.model_source import load_components
from sv_engine.stablevideo.params import EditParams
from sv_engine.stablevideo.pipeline import EditResult, StableVideoPipeline, _should_overlap
from sv_engine.stablevideo.stage_timer import StageTimer

# Small diffusion sizes keep a whole edit to seconds on a 2-core CPU; the atlas maths is full size.
FAST = dict(steps=4, image_resolution=128, depth_resolution=128, keyframes=[5, 15, 25], seed=7)


@pytest.fixture(scope="module")
def components():
    return load_components(torch.device("cpu"), tiny=True)


@pytest.fixture(scope="module")
def pipeline(components) -> StableVideoPipeline:
    """One pipeline for the module: its later edits reuse the opened demo clip (its maps take most of an
    edit on the CPU)."""
    return StableVideoPipeline(components, torch.device("cpu"))


@pytest.fixture(scope="module")
def edit(pipeline) -> EditResult:
    return pipeline.edit(demo_data_dir(), EditParams("a red toy", "snowy hills", **FAST))


def test_edit_shapes_and_timings(edit: EditResult) -> None:
    t, h, w = 30, 216, 384
    assert edit.frames.shape == (t, h, w, 3) and edit.frames.dtype == np.uint8
    assert edit.fg_atlas.shape[0] == 3 and edit.bg_atlas.shape == edit.session.atlas.bg_grid_atlas.shape
    assert len(edit.foreground.keyframe_edits) == 3
    assert {"foreground", "background", "render", "splat"} <= set(edit.timings)
    assert not edit.overlapped_background  # the default: sequential
    assert edit.preview().ndim == 3


def test_edit_is_reproducible_with_a_seed(components, edit: EditResult) -> None:
    pipeline = StableVideoPipeline(components, torch.device("cpu"))
    again = pipeline.edit(demo_data_dir(), EditParams("a red toy", "snowy hills", **FAST))
    assert np.array_equal(again.frames, edit.frames)
    # A warm pipeline reuses the opened video (maps, atlases) for the next edit: same result.
    warm = pipeline.edit(demo_data_dir(), EditParams("a red toy", "snowy hills", **FAST))
    assert warm.session is again.session
    assert np.array_equal(warm.frames, edit.frames)


def test_a_warm_edit_reuses_the_videos_depth(components, edit: EditResult, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bg atlas's depth is the video's: the depth model runs once per video and detect resolution,
    and an edit with the reused depth gives exactly what a fresh pipeline gives."""
    runs: list[int | None] = []
    estimate = background_module.estimate_depth

    def counted(model, image, resolution):
        runs.append(resolution)
        return estimate(model, image, resolution)

    monkeypatch.setattr(background_module, "estimate_depth", counted)
    pipeline = StableVideoPipeline(components, torch.device("cpu"))
    first = pipeline.edit(demo_data_dir(), EditParams("a red toy", "snowy hills", **FAST))
    other_prompts = EditParams("a blue car", "a desert road", **FAST)
    second = pipeline.edit(demo_data_dir(), other_prompts)
    assert runs == [FAST["depth_resolution"]]
    assert "depth" in first.timings and "depth" not in second.timings
    assert np.array_equal(first.frames, edit.frames)
    fresh = StableVideoPipeline(components, torch.device("cpu")).edit(demo_data_dir(), other_prompts)
    assert np.array_equal(second.frames, fresh.frames)
    pipeline.edit(demo_data_dir(), EditParams("a red toy", "snowy hills", **{**FAST, "depth_resolution": 64}))
    assert runs == [FAST["depth_resolution"], FAST["depth_resolution"], 64]  # the fresh pipeline's, then 64


def test_overlapped_background_is_bit_identical(components, edit: EditResult) -> None:
    """The background edit in a worker thread (forced on CPU) gives exactly the sequential frames."""
    overlapped = StableVideoPipeline(components, torch.device("cpu"), overlap_background=True).edit(
        demo_data_dir(), EditParams("a red toy", "snowy hills", **FAST)
    )
    assert overlapped.overlapped_background
    assert {"background", "depth", "background diffusion"} <= set(overlapped.timings)
    assert np.array_equal(overlapped.frames, edit.frames)
    assert torch.equal(overlapped.bg_atlas, edit.bg_atlas)


def test_overlapped_background_errors_propagate_and_the_worker_is_joined(
    components, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = StableVideoPipeline(components, torch.device("cpu"), overlap_background=True)
    params = EditParams("a red toy", "snowy hills", **FAST)
    workers: list[threading.Thread] = []

    def failing_background(*args, **kwargs):
        workers.append(threading.current_thread())
        raise ValueError("background failed")

    monkeypatch.setattr(pipeline_module, "edit_foreground", lambda *args, **kwargs: None)
    monkeypatch.setattr(pipeline_module, "edit_background", failing_background)
    with pytest.raises(ValueError, match="background failed"):
        pipeline.edit(demo_data_dir(), params)
    assert workers[0] is not threading.main_thread()

    # The foreground raising must still wait for the background worker to finish.
    def slow_background(*args, **kwargs):
        workers.append(threading.current_thread())
        time.sleep(0.2)
        return None, None  # render is never reached

    def failing_foreground(*args, **kwargs):
        raise RuntimeError("foreground failed")

    monkeypatch.setattr(pipeline_module, "edit_foreground", failing_foreground)
    monkeypatch.setattr(pipeline_module, "edit_background", slow_background)
    with pytest.raises(RuntimeError, match="foreground failed"):
        pipeline.edit(demo_data_dir(), params)
    assert not workers[1].is_alive()


def test_overlap_decision(components) -> None:
    """The background runs beside the keyframe loop when asked, unless a callable both halves call is
    not thread-safe (CUDA-graph replay into static buffers); each half's own graphed step is fine."""

    def safe(*args):
        return None

    def graphed(*args):
        return None

    def graphed_depth(*args):
        return None

    graphed.thread_safe = graphed_depth.thread_safe = False
    assert _should_overlap([safe], True)
    assert not _should_overlap([safe], False)
    assert not _should_overlap([safe, graphed], True)  # e.g. CUDA-graph replay: unsafe wins over a request

    def overlaps(unet_controlnet: dict, overrides: dict | None = None) -> bool:
        pipeline = StableVideoPipeline(components, torch.device("cpu"), unet_controlnet, overrides, True)
        return pipeline.overlap_background

    assert overlaps({"canny": graphed, "depth": graphed_depth})  # one graphed model per half
    assert not overlaps({"canny": graphed, "depth": graphed})  # one graphed model for both halves
    assert not overlaps({"canny": graphed, "depth": graphed_depth}, {"vae_decode": graphed})  # a shared one


def test_stage_timer_accumulates_across_threads() -> None:
    timer = StageTimer()
    both_inside = threading.Barrier(2)

    def work(name: str) -> None:
        with timer("shared"), timer(name):
            both_inside.wait()  # the two stages are open at the same time
            time.sleep(0.05)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = timer.as_dict()
    assert seconds["a"] >= 0.05 and seconds["b"] >= 0.05
    assert seconds["shared"] >= 0.1


def test_temporal_consistency(edit: EditResult) -> None:
    """One fg atlas point renders the same colour in every frame where it is (opaquely) visible.

    For a pixel of frame 5 inside the object, every other frame's pixel whose fg atlas position lies
    within 0.3 texel of it must have the same colour up to the atlas' local variation over that
    distance, the uint8 quantisation and the (1 − alpha) share of the background.
    """
    atlas = edit.session.atlas
    uv = atlas.fg.uv_pix.cpu()
    alpha = atlas.alpha.cpu()
    fg = torch.nn.functional.pad(edit.fg_atlas[None], _pad(atlas), mode="replicate")[0]
    gy, gx = torch.gradient(fg, dim=(1, 2))
    lipschitz = torch.sqrt(gx**2 + gy**2).amax(dim=0)
    ys, xs = torch.nonzero(alpha[5] > 0.99, as_tuple=True)  # SV alpha tops out at 0.991
    checked = 0
    for k in torch.linspace(0, len(ys) - 1, 6).long():
        y0, x0 = int(ys[k]), int(xs[k])
        target = uv[5, y0, x0]
        colour = edit.frames[5, y0, x0].astype(float) / 255
        for t in range(alpha.shape[0]):
            dist = (uv[t] - target).norm(dim=-1)
            dist[alpha[t] < 0.99] = float("inf")
            d, idx = dist.reshape(-1).min(dim=0)
            if d > 0.3:
                continue
            y, x = divmod(int(idx), uv.shape[2])
            u, v = (int(c) for c in target.round())
            slope = float(lipschitz[max(v - 2, 0) : v + 3, max(u - 2, 0) : u + 3].max())
            tolerance = slope * float(d) + 2 / 255 + float(1 - alpha[t, y, x]) + float(1 - alpha[5, y0, x0])
            assert np.abs(edit.frames[t, y, x].astype(float) / 255 - colour).max() <= tolerance + 1e-6, (t, y, x)
            checked += 1
    assert checked >= 12  # the object is seen in many frames


def _pad(atlas) -> tuple[int, int, int, int]:
    top, left, height, width = atlas.fg_bbox
    grid_h, grid_w = atlas.fg_grid_atlas.shape[-2:]
    return (left, grid_w - (left + width), top, grid_h - (top + height))


@pytest.mark.slow
def test_ort_backend_edit_matches_torch(components, edit: EditResult, tmp_path) -> None:
    """`--backend ort` (ONNX Runtime CPU, fp32) reproduces the torch edit: PSNR ≥ 40 dB on the frames.

    Per component ORT fp32 is ~1e-6 relative; through 3 keyframes × DDIM steps and uint8 quantisation
    only a few pixels may flip by 1 LSB, so anything under 40 dB means a real mismatch.
    """
    from sv_engine.export.runtime import accelerate
    from sv_engine.export.spec import ShapeRange

    shapes = ShapeRange(height=(64, 128, 512), width=(64, 128, 1024), multiple=64)
    accelerated = accelerate(components, "ort", "fp32", torch.device("cpu"), onnx_dir=tmp_path / "onnx", shapes=shapes)
    # ORT on the CPU runs on the calling thread: safe beside an overlapped background edit.
    assert all(
        fn.thread_safe for fn in [*accelerated.unet_controlnet.values(), *accelerated.denoiser_overrides().values()]
    )
    pipeline = StableVideoPipeline(
        components, torch.device("cpu"), accelerated.unet_controlnet, accelerated.denoiser_overrides()
    )
    ort_edit = pipeline.edit(demo_data_dir(), EditParams("a red toy", "snowy hills", **FAST))
    assert psnr(edit.frames, ort_edit.frames) >= 40.0


def test_a_clip_given_to_the_build_opens_while_the_models_load(edit: EditResult, monkeypatch: pytest.MonkeyPatch):
    """`sv-engine edit` hands its clip to build_pipeline: the clip is open when the build returns (one
    read of the folder, none in the edit) and the edit renders what a pipeline that opened it itself
    renders (same tiny models, seed 0)."""
    from sv_engine.export.compose import RuntimeConfig, build_pipeline
    from sv_engine.stablevideo import session as session_module

    reads: list[str] = []
    real = session_module.load_video_data
    monkeypatch.setattr(session_module, "load_video_data", lambda root: reads.append(root) or real(root))
    runtime = build_pipeline(RuntimeConfig(tiny=True, device="cpu"), open_videos=(demo_data_dir(),))
    assert len(reads) == 1 and "finish the warm-up" in runtime.seconds_per_phase
    result = runtime.pipeline.edit(demo_data_dir(), EditParams("a red toy", "snowy hills", **FAST))
    assert len(reads) == 1
    assert np.array_equal(result.frames, edit.frames)


def test_the_later_keyframes_new_sizes_are_prepared_before_the_first_step(pipeline, edit, monkeypatch) -> None:
    """edit_foreground tells the denoiser the generation sizes of keyframes 2.. that differ from the first
    one's before its first step (a CUDA-graph engine captures them meanwhile)."""
    from sv_engine.stablevideo.models.diffusion import ControlledDenoiser

    prepared: list[tuple[int, int, list]] = []
    steps: list[tuple[int, tuple[int, int]]] = []
    guided = ControlledDenoiser._guided

    def record_step(self, latents, *args, **kwargs):
        steps.append((id(self), tuple(s * self.latent_factor for s in latents.shape[-2:])))
        return guided(self, latents, *args, **kwargs)

    monkeypatch.setattr(ControlledDenoiser, "_guided", record_step)
    # the demo's crops all come out square: the later keyframes generated at other sizes instead
    from sv_engine.stablevideo import foreground as foreground_module

    resized: list[int] = []
    resize = foreground_module.resize_image

    def sizes_by_keyframe(image, resolution):
        resized.append(resolution)
        return resize(image, (128, 192, 128)[len(resized) - 1])

    monkeypatch.setattr(foreground_module, "resize_image", sizes_by_keyframe)
    monkeypatch.setattr(
        ControlledDenoiser, "prepare", lambda self, sizes: prepared.append((id(self), len(steps), list(sizes)))
    )
    params = EditParams("a red toy", "snowy hills", **{**FAST, "steps": 2})
    pipeline.edit(demo_data_dir(), params)
    [(fg, steps_before, sizes)] = prepared
    fg_sizes = list(dict.fromkeys(size for who, size in steps if who == fg))
    assert fg_sizes == [(128, 128), (192, 192)]
    assert sizes == fg_sizes[1:] and not [s for who, s in steps[:steps_before] if who == fg]
