"""`sv-engine fit --mask-model DIR`: SAM 2 video masks (transformers' Sam2VideoModel) from a tiny random
SAM 2 checkpoint saved in Hugging Face layout, prompted by a box / point; folders that are not SAM 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sv_engine.stablevideo.fit import FitOptions, fit_arrays
from sv_engine.stablevideo.fit.sam2_masks import check_sam2_folder, sam2_masks
from sv_engine.stablevideo.fit.separation import Box, Hints, Point
from sv_engine.stablevideo.fit.synthetic import make_clip

from sv_engine.errors import SvEngineError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SAM 2 video model, 128-px input, ~1 M parameters (the real architecture, every module)."""
    from transformers import Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    s = 128
    backbone = Sam2HieraDetConfig(
        image_size=[s, s],
        hidden_size=8,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
        fpn_hidden_size=128,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": 128, "image_size": s, "patch_size": 16},
        mask_decoder_config={"hidden_size": 128, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        image_size=s,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,  # the memory attention's cross-attention expects 64
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sam2") / "tiny-sam2"
    Sam2VideoModel(config).save_pretrained(folder)
    return folder


def test_sam2_masks_from_a_prompt(tiny_sam2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random weights segment nothing meaningful: this checks the path (load, prompt in the model's input
    pixels with SAM's box labels, propagate both ways from the prompted frame, masks at the frames' size)."""
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    seen: list[tuple[int, np.ndarray, np.ndarray]] = []
    real_add = Sam2VideoInferenceSession.add_point_inputs

    def spy(self, obj_idx: int, frame_idx: int, inputs: dict) -> None:  # noqa: ANN001
        seen.append((frame_idx, inputs["point_coords"].numpy(), inputs["point_labels"].numpy()))
        return real_add(self, obj_idx, frame_idx, inputs)

    monkeypatch.setattr(Sam2VideoInferenceSession, "add_point_inputs", spy)
    frames, _ = make_clip(5, 64, 48)
    prompt = Hints([Box(8, 8, 24, 20, frame=2)], [Point(20, 18, frame=2)])
    masks = sam2_masks(tiny_sam2, frames, prompt, torch.device("cpu"), progress=False)
    assert masks.shape == (5, 48, 64) and masks.dtype == bool
    assert len(seen) == 1 and seen[0][0] == 2
    scale = np.array([128 / 64, 128 / 48])  # frames -> the model's 128x128 input
    assert np.allclose(seen[0][1][0, 0], np.array([[8, 8], [32, 28], [20, 18]]) * scale)
    assert seen[0][2][0, 0].tolist() == [2, 3, 1]  # box corners first, then the positive point
    again = sam2_masks(tiny_sam2, frames, prompt, torch.device("cpu"), progress=False)
    assert (masks == again).all()  # deterministic
    with pytest.raises(SvEngineError, match="needs a prompt"):
        sam2_masks(tiny_sam2, frames, Hints(), torch.device("cpu"))


def test_fit_with_mask_model(tiny_sam2: Path, tmp_path: Path) -> None:
    frames, _ = make_clip(5, 32, 24)
    hints = Hints([Box(4, 4, 12, 10, frame=0)])
    expected = sam2_masks(tiny_sam2, frames, hints, torch.device("cpu"), progress=False)
    options = FitOptions(
        out=tmp_path / "s", iters=2, device="cpu", progress=False, batch_size=256, hints=hints, mask_model=tiny_sam2
    )
    fit_arrays(frames, None, options)
    report = json.loads((tmp_path / "s" / "fit_report.json").read_text())
    assert report["mask_source"].startswith("SAM 2") and report["separation"] is None
    assert report["mask_coverage_per_frame"] == pytest.approx(expected.reshape(5, -1).mean(1), abs=1e-4)


def test_not_a_sam2_folder(tmp_path: Path, tiny_sam2: Path) -> None:
    with pytest.raises(SvEngineError, match="not a folder"):
        check_sam2_folder(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SvEngineError, match="no readable config.json"):
        check_sam2_folder(empty)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SvEngineError, match="not a SAM 2 checkpoint.*'bert'"):
        check_sam2_folder(bert)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_sam2 / "config.json").read_text())
    with pytest.raises(SvEngineError, match="holds no weights"):
        check_sam2_folder(no_weights)
    check_sam2_folder(tiny_sam2)

    frames, _ = make_clip(4, 32, 24)
    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(src / f"{i:03d}.png"), f)
    base = [sys.executable, "-m", "sv_engine", "fit", str(src), "--out", str(tmp_path / "o"), "--size", "32x24"]
    for extra, what in [
        (["--mask-model", str(bert), "--fg-box", "1,1,8,8"], "not a SAM 2 checkpoint"),
        (["--mask-model", str(tiny_sam2)], "needs a prompt"),
    ]:
        run = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        errors = [ln for ln in run.stderr.splitlines() if "ERROR" in ln or "Traceback" in ln]
        assert run.returncode == 2 and len(errors) == 1 and what in errors[0], run.stderr
    assert not (tmp_path / "o").exists()
