"""Distillation of a fitted hash-grid NLA into the original NLA MLPs (StableVideo's checkpoint format).

The student regresses the teacher's outputs on random pixels of the video: both uv mappings and alpha at
the pixel, the atlas colour at the uv each layer maps it to (jittered by up to half a video pixel, so the
atlas between the samples is taught too). Each term is weighted by where it is seen: the fg mapping and
the fg atlas by the teacher's alpha, the bg ones by 1 - alpha (plus a floor, so hidden areas stay sane).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sv_engine.stablevideo.fit.losses import FitTensors, Layout, autocast_for, sample_batch
from sv_engine.stablevideo.hash_nla import HashNLAModel
from sv_engine.stablevideo.nla import NLAModel, alpha_from_output, atlas_rgb

SEEN_FLOOR = 0.05


def distill_step(
    student: NLAModel,
    teacher: HashNLAModel,
    data: FitTensors,
    layout: Layout,
    batch: int,
    amp: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One distillation loss on ``batch`` random pixels: (total, terms)."""
    device = data.frames.device
    x, y, t = sample_batch(data, batch, device, generator)
    xyt = layout.normalize(x.float(), y.float(), t.float())
    half_px = torch.tensor(
        [0.25 * layout.fg_scale / layout.half, 0.25 * layout.bg_scale / layout.half], device=device
    )  # half a video pixel in uv units, per layer
    with torch.no_grad():
        fg_t, bg_t = teacher.fg_mapping(xyt), teacher.bg_mapping(xyt)
        alpha_t = alpha_from_output(teacher.alpha(xyt))[:, 0]
        jitter = (torch.rand(2 * batch, 2, device=device, generator=generator) * 2 - 1) * half_px.repeat_interleave(
            batch
        )[:, None]
        uv = torch.cat([fg_t * 0.5 + 0.5, bg_t * 0.5 - 0.5]) + jitter
        color_t = atlas_rgb(teacher.atlas(uv))
    seen_fg, seen_bg = alpha_t + SEEN_FLOOR, 1 - alpha_t + SEEN_FLOOR
    v = {
        "map_fg": ((student.fg_mapping(xyt) - fg_t).pow(2).sum(1) * seen_fg).mean(),
        "map_bg": ((student.bg_mapping(xyt) - bg_t).pow(2).sum(1) * seen_bg).mean(),
    }
    with autocast_for(device, amp):
        alpha_s = alpha_from_output(student.alpha(xyt).float())[:, 0]
        color_s = atlas_rgb(student.atlas(uv).float())
    v["alpha"] = F.binary_cross_entropy(alpha_s.clamp(1e-4, 1 - 1e-4), alpha_t.clamp(0, 1))
    v["atlas_rgb"] = ((color_s - color_t).pow(2).sum(1) * torch.cat([seen_fg, seen_bg])).mean()
    return sum(v.values()), v
