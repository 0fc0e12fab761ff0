"""The NLA objective (Kasten et al. 2021), evaluated on one random point batch.

Terms (NLA's names and default weights): RGB reconstruction through ``atlas(uv)`` of both layers,
gradient loss, sparsity, optical-flow consistency of both mappings, local rigidity (1 px) and global
rigidity (large offsets, early iterations only), alpha BCE against masks while bootstrapping,
alpha-flow consistency. All mapping nets share one big call per step, the atlas one call for both
layers, so the step is a handful of large matmuls (fast on GPU, bf16 autocast for atlas / alpha;
the mappings stay fp32: bf16 uv would be ~8 atlas pixels off on the 2000-px grid).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from sv_engine.stablevideo.nla import NLAModel, alpha_from_output, atlas_rgb


@dataclass
class LossWeights:
    """NLA's config.json defaults."""

    rgb: float = 5000.0
    gradient: float = 1000.0
    sparsity: float = 1000.0
    flow: float = 5.0
    rigidity: float = 1.0
    global_rigidity_fg: float = 5.0
    global_rigidity_bg: float = 50.0
    alpha_bootstrap: float = 2000.0
    alpha_flow: float = 49.0


@dataclass
class Layout:
    """Pixel <-> network units. ``half`` = m/2 pixels per normalised unit; ``fg_scale`` / ``bg_scale``:
    mapping-output units per normalised unit of the initial layout (NLA's uv_mapping_scale, 0.8)."""

    resx: int
    resy: int
    num_frames: int
    fg_scale: float = 0.8
    bg_scale: float = 0.8

    @property
    def half(self) -> float:
        return max(self.resx, self.resy) / 2.0

    def normalize(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.stack([x / self.half - 1.0, y / self.half - 1.0, t / (self.num_frames / 2.0) - 1.0], dim=1)


@dataclass
class FitTensors:
    """The video on the training device: frames (T, H, W, 3) float [0, 1], masks (T, H, W) float or None,
    flows (T-1, H, W, 2) and their validity (T-1, H, W) bool (forward t->t+1, backward t+1->t)."""

    frames: torch.Tensor
    masks: torch.Tensor | None
    flow_fw: torch.Tensor
    flow_bw: torch.Tensor
    valid_fw: torch.Tensor
    valid_bw: torch.Tensor


@dataclass
class StepFlags:
    bootstrap: bool = True
    global_rigidity: bool = True
    global_derivative: float = 100.0


@dataclass
class LossTerms:
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    total: torch.Tensor | None = None


def autocast_for(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rigidity_loss(jac: torch.Tensor) -> torch.Tensor:
    """NLA eq. 9: ||JᵀJ||_F + ||(JᵀJ)⁻¹||_F, minimal for a rotation (scaled to the initial layout). jac: (N, 2, 2)."""
    jtj = jac.transpose(1, 2) @ jac
    a = jtj[:, 0, 0] + 0.001
    b = jtj[:, 0, 1]
    c = jtj[:, 1, 0]
    d = jtj[:, 1, 1] + 0.001
    det = (a * d - b * c).unsqueeze(-1)
    inv = torch.stack([d, -b, -c, a], dim=1) / det
    return (jtj.reshape(-1, 4).pow(2).sum(1).sqrt() + inv.pow(2).sum(1).sqrt()).mean()


def _jacobian(
    out0: torch.Tensor,
    out_x: torch.Tensor,
    out_y: torch.Tensor,
    step_x: torch.Tensor,
    step_y: torch.Tensor,
    px_scale: float,
) -> torch.Tensor:
    """Finite-difference Jacobian of a mapping in initial-layout pixels per pixel: (N, 2, 2)."""
    d_dx = (out_x - out0) / step_x[:, None] * px_scale
    d_dy = (out_y - out0) / step_y[:, None] * px_scale
    return torch.stack([d_dx, d_dy], dim=2)  # rows: u, v; cols: x, y


def sample_batch(
    data: FitTensors, n: int, device: torch.device, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t_count, h, w = data.frames.shape[:3]
    idx = torch.randint(t_count * h * w, (n,), device=device, generator=generator)
    t = idx // (h * w)
    rem = idx % (h * w)
    return rem % w, rem // w, t


def nla_step(
    nla: NLAModel,
    data: FitTensors,
    layout: Layout,
    weights: LossWeights,
    batch: int,
    flags: StepFlags,
    amp: bool = True,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """One NLA loss evaluation on ``batch`` random pixels (plus neighbour / flow / rigidity points)."""
    device = data.frames.device
    t_count, h, w = data.frames.shape[:3]
    x, y, t = sample_batch(data, batch, device, generator)
    s = max(1, batch // 8)  # neighbour subset: gradient loss + local rigidity
    f = max(1, batch // 8)  # flow subset
    g = max(1, batch // 16) if flags.global_rigidity else 0

    xs, ys, ts = x[:s], y[:s], t[:s]
    dx = torch.where(xs < w - 1, 1, -1)
    dy = torch.where(ys < h - 1, 1, -1)

    xf, yf, tf = x[:f], y[:f], t[:f]
    t_fw = tf.clamp(max=t_count - 2)
    flow_fw = data.flow_fw[t_fw, yf, xf]
    ok_fw = data.valid_fw[t_fw, yf, xf] & (tf < t_count - 1)
    t_bw = (tf - 1).clamp(min=0)
    flow_bw = data.flow_bw[t_bw, yf, xf]
    ok_bw = data.valid_bw[t_bw, yf, xf] & (tf > 0)

    xg, yg, tg = x[:g], y[:g], t[:g]
    big = flags.global_derivative
    gx_step = torch.where(xg + big <= w - 1, big, -big).float()
    gy_step = torch.where(yg + big <= h - 1, big, -big).float()

    xf_, yf_ = xf.float(), yf.float()
    px = [
        x.float(),
        (xs + dx).float(),
        xs.float(),
        xf_ + flow_fw[:, 0],
        xf_ + flow_bw[:, 0],
        xg.float() + gx_step,
        xg.float(),
    ]
    py = [
        y.float(),
        ys.float(),
        (ys + dy).float(),
        yf_ + flow_fw[:, 1],
        yf_ + flow_bw[:, 1],
        yg.float(),
        yg.float() + gy_step,
    ]
    pt = [t.float(), ts.float(), ts.float(), (tf + 1).float(), (tf - 1).float(), tg.float(), tg.float()]
    sizes = [batch, s, s, f, f, g, g]
    xyt = layout.normalize(torch.cat(px), torch.cat(py), torch.cat(pt))

    fg_out = nla.fg_mapping(xyt)
    bg_out = nla.bg_mapping(xyt)
    n_alpha = batch + 2 * s + 2 * f
    n_rgb = batch + 2 * s
    with autocast_for(device, amp):
        alpha = alpha_from_output(nla.alpha(xyt[:n_alpha]).float())[:, 0]
        uv = torch.cat([fg_out[:n_rgb] * 0.5 + 0.5, bg_out[:n_rgb] * 0.5 - 0.5])
        colors = atlas_rgb(nla.atlas(uv).float())
    c_fg, c_bg = colors[:n_rgb], colors[n_rgb:]
    a_rgb = alpha[:n_rgb, None]
    rgb = a_rgb * c_fg + (1 - a_rgb) * c_bg

    fg_p = torch.split(fg_out, sizes)
    bg_p = torch.split(bg_out, sizes)
    rgb0, rgb_x, rgb_y = torch.split(rgb, [batch, s, s])
    alpha0, alpha_x, alpha_y, alpha_fw, alpha_bw = torch.split(alpha, [batch, s, s, f, f])

    gt0 = data.frames[t, y, x]
    gt_x = data.frames[ts, ys, xs + dx]
    gt_y = data.frames[ts, ys + dy, xs]
    v: dict[str, torch.Tensor] = {}
    v["rgb"] = (rgb0 - gt0).pow(2).sum(1).mean()
    v["gradient"] = (
        ((rgb_x - rgb0[:s]) - (gt_x - gt0[:s])).pow(2).sum(1) + ((rgb_y - rgb0[:s]) - (gt_y - gt0[:s])).pow(2).sum(1)
    ).mean()
    v["sparsity"] = (c_fg[:batch] * (1 - alpha0[:, None])).pow(2).sum(1).mean()

    fg_px = layout.half / layout.fg_scale
    bg_px = layout.half / layout.bg_scale
    sx, sy = dx.float(), dy.float()
    v["rigidity"] = rigidity_loss(_jacobian(fg_p[0][:s], fg_p[1], fg_p[2], sx, sy, fg_px)) + rigidity_loss(
        _jacobian(bg_p[0][:s], bg_p[1], bg_p[2], sx, sy, bg_px)
    )
    if g:
        v["global_rigidity_fg"] = rigidity_loss(_jacobian(fg_p[0][:g], fg_p[5], fg_p[6], gx_step, gy_step, fg_px))
        v["global_rigidity_bg"] = rigidity_loss(_jacobian(bg_p[0][:g], bg_p[5], bg_p[6], gx_step, gy_step, bg_px))

    a_f = alpha0[:f].detach()
    w_fw, w_bw = ok_fw.float(), ok_bw.float()
    n_fw, n_bw = w_fw.sum().clamp(min=1), w_bw.sum().clamp(min=1)

    def flow_term(
        out: list[torch.Tensor] | tuple[torch.Tensor, ...], px_scale: float, weight: torch.Tensor
    ) -> torch.Tensor:
        err_fw = (out[3] - out[0][:f]).norm(dim=1) * px_scale
        err_bw = (out[4] - out[0][:f]).norm(dim=1) * px_scale
        return 0.5 * (err_fw * weight * w_fw).sum() / n_fw + 0.5 * (err_bw * weight * w_bw).sum() / n_bw

    v["flow"] = flow_term(fg_p, fg_px, a_f) + flow_term(bg_p, bg_px, 1 - a_f)
    v["alpha_flow"] = (
        0.5 * ((alpha_fw - alpha0[:f]).abs() * w_fw).sum() / n_fw
        + 0.5 * ((alpha_bw - alpha0[:f]).abs() * w_bw).sum() / n_bw
    )
    if flags.bootstrap and data.masks is not None:
        v["alpha_bootstrap"] = F.binary_cross_entropy(alpha0.clamp(1e-4, 1 - 1e-4), data.masks[t, y, x])

    total = sum(getattr(weights, name) * val for name, val in v.items())
    return LossTerms(v, total)


def pretrain_step(
    nla: NLAModel,
    data: FitTensors,
    layout: Layout,
    targets_fn,
    batch: int,
    amp: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Warm start with direct targets (cheaper and better conditioned than the full objective):
    the mappings regress the flow-initialised layout (NLA pretrains them to a scaled identity), the
    atlas regresses each pixel's colour at its target uv in its mask's layer, alpha the masks (BCE)."""
    device = data.frames.device
    x, y, t = sample_batch(data, batch, device, generator)
    xyt = layout.normalize(x.float(), y.float(), t.float())
    fg_target, bg_target = targets_fn(x.float(), y.float(), t)
    v = {
        "map_fg": (nla.fg_mapping(xyt) - fg_target).pow(2).sum(1).mean(),
        "map_bg": (nla.bg_mapping(xyt) - bg_target).pow(2).sum(1).mean(),
    }
    mask = data.masks[t, y, x]
    uv = torch.where(mask[:, None] > 0.5, fg_target * 0.5 + 0.5, bg_target * 0.5 - 0.5)
    q = max(
        1, batch // 4
    )  # sparsity: the fg atlas is black where the fg layer is unused (as NLA's sparsity loss wants)
    with autocast_for(device, amp):
        alpha = alpha_from_output(nla.alpha(xyt).float())[:, 0]
        color = atlas_rgb(nla.atlas(torch.cat([uv, fg_target[:q] * 0.5 + 0.5])).float())
    v["atlas_rgb"] = (color[:batch] - data.frames[t, y, x]).pow(2).sum(1).mean()
    v["sparsity"] = (color[batch:] * (1 - mask[:q, None])).pow(2).sum(1).mean()
    v["alpha_bootstrap"] = F.binary_cross_entropy(alpha.clamp(1e-4, 1 - 1e-4), mask)
    return v["map_fg"] + v["map_bg"] + v["atlas_rgb"] + 0.2 * v["sparsity"] + 0.4 * v["alpha_bootstrap"], v
