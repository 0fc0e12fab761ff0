"""Builds the bundled demo data folder: analytic frames + an NLA checkpoint fitted to the analytic maps.

    python -m sv_engine.stablevideo.demo.build_demo --out stablevideo/demo/data/skicat

The four NLA networks (StableVideo's exact architectures) are fitted separately to the analytic
scene of :mod:`sv_engine.stablevideo.demo.scene`:

* fg / bg mapping: MSE on the network output against out = (uv − 0.5)/0.5 resp. (uv + 0.5)/0.5,
  at random continuous (x, y, t) in the video volume;
* alpha: MSE on the pre-tanh activation against the analytic logit z (alpha = 0.99·(tanh z + 1)/2
  + 0.001 is exactly SV's formula), half the points sampled around the object;
* atlas (ONE net for both layers): MSE on (net + 1)/2 against the bilinear textures at random
  atlas coordinates in the fg patch ([0, 1]² side) and the bg texture ([−1, 0]² side).

Adam with cosine-decayed learning rate, fixed seeds, ``torch.set_num_threads`` (default 1). Bitwise
reproducibility holds for the same torch build and thread count. Writes the data folder with
:func:`sv_engine.stablevideo.data.write_video_data` and a ``<name>.fit.json`` report beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
from sv_engine.stablevideo.data import write_video_data
from sv_engine.stablevideo.demo import scene
from sv_engine.stablevideo.maps import pixel_grid
from sv_engine.stablevideo.nla import IMLP, NLAField, NLAModel, atlas_rgb, normalize_xyt
from tqdm import tqdm

log = logging.getLogger("sv_engine.stablevideo.demo.build_demo")

DEFAULT_STEPS = {"fg_mapping": 1500, "bg_mapping": 3000, "alpha": 1500, "atlas": 3000}
BATCH = {"fg_mapping": 2048, "bg_mapping": 2048, "alpha": 2048, "atlas": 3072}
LR = {"fg_mapping": 1e-3, "bg_mapping": 1e-3, "alpha": 1e-3, "atlas": 1e-3}
FG_ATLAS_FRACTION = 0.35  # share of atlas samples drawn in the fg patch (the rest in the bg texture)


def random_pixels(n: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform continuous (x, y, t) over the video volume (pixel units, t in [0, T−1])."""
    r = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    scale = torch.tensor([scene.RESX, scene.RESY, 0.0], dtype=torch.float64)
    xyt = r * scale - torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    xyt[:, 2] = r[:, 2] * (scene.NUM_FRAMES - 1)
    return xyt


def pixels_near_object(n: int, gen: torch.Generator) -> torch.Tensor:
    """(x, y, t) in a box of 1.6× the object's ellipse around its centre (pixel units)."""
    t = torch.rand(n, generator=gen, dtype=torch.float64) * (scene.NUM_FRAMES - 1)
    cx, cy, s, _ = scene.object_pose(t)
    a = max(scene.ELLIPSE_AXES) * 1.6
    off = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * a * s[:, None]
    return torch.stack([cx + off[:, 0], cy + off[:, 1], t], dim=-1)


def normalized(xyt: torch.Tensor) -> torch.Tensor:
    return normalize_xyt(xyt.float(), scene.RESX, scene.RESY, scene.NUM_FRAMES)


def cosine_lr(step: int, steps: int, base: float, floor: float = 0.01) -> float:
    warm = min(1.0, (step + 1) / 100)
    return base * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / steps)))


def _train(name: str, net: IMLP, steps: int, batch_fn, loss_fn, progress: bool) -> float:
    opt = torch.optim.Adam(net.parameters(), lr=LR[name])
    bar = tqdm(range(steps), desc=f"fit {name}", disable=not progress, mininterval=2.0)
    ema = None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, LR[name])
        inputs, target = batch_fn()
        loss = loss_fn(net, inputs, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 250 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{ema:.3e}")
            log.info("%s step %d/%d loss %.3e lr %.2e", name, step, steps, ema, opt.param_groups[0]["lr"])
    return float(ema)


def fit(
    steps: dict[str, int],
    seed: int = 0,
    progress: bool = True,
    nla: NLAModel | None = None,
    only: set[str] | None = None,
) -> tuple[NLAModel, dict]:
    """Fits the four nets (or only ``only``, starting from ``nla``); each net has its own sample generator."""
    torch.manual_seed(seed)
    nla = nla or NLAModel.random(seed)
    gens = {
        name: torch.Generator().manual_seed(seed + 1 + k)
        for k, name in enumerate(("bg_mapping", "fg_mapping", "alpha", "atlas"))
    }
    report: dict = {"steps": steps, "seconds": {}}

    def fg_batch():
        xyt = random_pixels(BATCH["fg_mapping"], gens["fg_mapping"])
        fg, _, _ = scene.analytic_fields(xyt)
        return normalized(xyt), (fg - 0.5) / 0.5

    def bg_batch():
        xyt = random_pixels(BATCH["bg_mapping"], gens["bg_mapping"])
        _, bg, _ = scene.analytic_fields(xyt)
        return normalized(xyt), (bg + 0.5) / 0.5

    def alpha_batch():
        half = BATCH["alpha"] // 2
        xyt = torch.cat([random_pixels(half, gens["alpha"]), pixels_near_object(BATCH["alpha"] - half, gens["alpha"])])
        _, _, z = scene.analytic_fields(xyt)
        return normalized(xyt), z[:, None]

    fg_tex, bg_tex = scene.analytic_textures()
    fg_box, bg_box = scene.fg_fit_box(), scene.bg_fit_box()

    def box_uv(n: int, box, shift: float) -> torch.Tensor:
        i0, j0, i1, j1 = box
        r = torch.rand(n, 2, generator=gens["atlas"], dtype=torch.float64)
        pix = torch.stack([i0 - 0.5 + r[:, 0] * (i1 - i0), j0 - 0.5 + r[:, 1] * (j1 - j0)], dim=-1)
        return (pix / scene.ATLAS_RES - shift).float()

    def atlas_batch():
        n_fg = int(BATCH["atlas"] * FG_ATLAS_FRACTION)
        uv_fg, uv_bg = box_uv(n_fg, fg_box, 0.0), box_uv(BATCH["atlas"] - n_fg, bg_box, 1.0)
        return torch.cat([uv_fg, uv_bg]), torch.cat([fg_tex.sample(uv_fg), bg_tex.sample(uv_bg)])

    def mse_out(net, x, target):
        return torch.mean((net(x) - target) ** 2)

    def mse_pre_tanh(net, x, target):
        return torch.mean((net.pre_activation(x) - target) ** 2)

    def mse_rgb(net, x, target):
        return torch.mean((atlas_rgb(net(x)) - target) ** 2)

    jobs = [
        ("bg_mapping", nla.bg_mapping, bg_batch, mse_out),
        ("fg_mapping", nla.fg_mapping, fg_batch, mse_out),
        ("alpha", nla.alpha, alpha_batch, mse_pre_tanh),
        ("atlas", nla.atlas, atlas_batch, mse_rgb),
    ]
    report["final_loss"] = {}
    for name, net, batch_fn, loss_fn in jobs:
        if only is not None and name not in only:
            continue
        start = time.perf_counter()
        net.train()
        report["final_loss"][name] = _train(name, net, steps[name], batch_fn, loss_fn, progress)
        net.eval()
        report["seconds"][name] = round(time.perf_counter() - start, 1)
        log.info("%s fitted in %.1f s", name, report["seconds"][name])
    return nla, report


@torch.no_grad()
def evaluate(nla: NLAModel, frames: list[int] | None = None) -> dict:
    """Fitted vs analytic maps over the given frames (default: all) and atlas PSNR on the integer atlas grid."""
    field = NLAField(nla).eval()
    frames = list(range(scene.NUM_FRAMES)) if frames is None else frames
    fg_err, bg_err, a_err, interior_min, outside_max = [], [], [], 1.0, 0.0
    for t in frames:
        pts = normalize_xyt(pixel_grid(scene.RESX, scene.RESY, t), scene.RESX, scene.RESY, scene.NUM_FRAMES)
        fg, bg, alpha = field(pts)
        gt = scene.analytic_maps(t)
        fg_err.append((fg - gt.fg_uv.reshape(-1, 2)).abs().amax(-1))
        bg_err.append((bg - gt.bg_uv.reshape(-1, 2)).abs().amax(-1))
        ga = gt.alpha.reshape(-1)
        a_err.append((alpha - ga).abs())
        interior = ga >= 0.9905
        outside = ga <= 0.0015
        interior_min = min(interior_min, float(alpha[interior].min()))
        outside_max = max(outside_max, float(alpha[outside].max()))
    fg_err, bg_err, a_err = torch.cat(fg_err), torch.cat(bg_err), torch.cat(a_err)

    def psnr(tex: scene.Texture, box) -> float:
        uv = tex.grid_uv(box).reshape(-1, 2)
        pred = torch.cat([atlas_rgb(nla.atlas(c)) for c in uv.split(50_000)])
        mse = torch.mean((pred.clamp(0, 1) - tex.sample(uv)) ** 2)
        return float(10 * torch.log10(1.0 / mse))

    fg_tex, bg_tex = scene.analytic_textures()
    return {
        "frames": frames,
        "fg_uv_abs_err": {
            "max": float(fg_err.max()),
            "p99": float(fg_err.quantile(0.99)),
            "median": float(fg_err.median()),
        },
        "bg_uv_abs_err": {
            "max": float(bg_err.max()),
            "p99": float(bg_err.quantile(0.99)),
            "median": float(bg_err.median()),
        },
        "alpha_abs_err": {"max": float(a_err.max()), "p99": float(a_err.quantile(0.99)), "mean": float(a_err.mean())},
        "alpha_interior_min": interior_min,
        "alpha_outside_max": outside_max,
        "atlas_psnr_db": {"fg_patch": psnr(fg_tex, scene.fg_fit_box()), "bg": psnr(bg_tex, scene.bg_fit_box())},
    }


def build(
    out: Path,
    steps: dict[str, int] | None = None,
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
    only: set[str] | None = None,
) -> dict:
    """Renders the frames, fits the NLA nets (``only``: refit just these, starting from the checkpoint in ``out``)
    and writes the folder."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    steps = {**DEFAULT_STEPS, **(steps or {})}
    start = time.perf_counter()
    frames = scene.render_frames_uint8()
    start_nla = None
    if only:
        from sv_engine.stablevideo.data import load_checkpoint

        start_nla = load_checkpoint(Path(out) / "checkpoint")[0]
    nla, report = fit(steps, seed, progress, start_nla, only)
    if only:
        previous = Path(out).parent / f"{Path(out).name}.fit.json"
        old = json.loads(previous.read_text()) if previous.is_file() else {}
        report["refit_only"] = sorted(only)
        report["seconds"] = {**old.get("seconds", {}), **report["seconds"]}
        report["final_loss"] = {**old.get("final_loss", {}), **report["final_loss"]}
    report["fit_seconds"] = round(time.perf_counter() - start, 1)
    out = Path(out)
    write_video_data(out, frames, nla, extra_checkpoint={"iteration": sum(steps.values())})
    log.info("wrote %s", out)
    report["eval"] = evaluate(nla)
    report["seed"], report["threads"], report["torch"] = seed, threads, torch.__version__
    (out.parent / f"{out.name}.fit.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("fit report: %s", json.dumps(report["eval"], indent=None))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "data" / "skicat",
        help="data folder to write (its name is the clip name)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a shared machine)")
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="scale every network's step count (quick trials)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(DEFAULT_STEPS),
        help="refit only these nets, starting from the checkpoint in --out",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    steps = {k: max(1, int(v * args.steps_scale)) for k, v in DEFAULT_STEPS.items()}
    build(
        args.out,
        steps,
        args.seed,
        args.threads,
        progress=not args.no_progress,
        only=set(args.only) if args.only else None,
    )


if __name__ == "__main__":
    main()
