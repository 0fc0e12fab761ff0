"""Benchmark of the UV-mapping kernels against torch, each as a fraction of its HBM byte floor.

Sizes (the pipeline's): render 70 frames of 768×432 (W×H) from two 2048² fp16 RGBA atlases; warp
3 keyframes of 512×768 (h×w) from a 2048² fp16 RGBA atlas; splat one 432×768 keyframe (RGB)
into a 2000² atlas. Grids are smooth (a per-frame similarity transform plus a small bend), like
real atlas mappings, so atlas reads are coherent.

Byte floors (each input read once, each output written once; the winner buffer of the splat and
atlas texels outside the sampled region are not counted):
* render: 2 grids (8 B/px) + alpha (4 B/px) + frames (3 B/px) + both atlases (8 B/texel, whole).
* warp: grid (8 B/px) + crops (12 B/px) + valid (1 B/px) + the atlas texels inside each
  keyframe's grid bounding box (8 B/texel).
* splat: points (8 B/px) + values (12 B/px) + atlas (12 B/texel) + coverage (1 B/texel).
Floor time = bytes / the device-to-device copy bandwidth measured in the same run.

Usage: ``python -m sv_engine.benchmarks.kernels_bench OUT.json [--repeat N] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from sv_engine.benchmarks.timing import environment, time_fn
from sv_engine.kernels import (
    render_composite,
    render_composite_reference,
    splat_to_atlas,
    splat_to_atlas_reference,
    warp_atlas,
    warp_atlas_reference,
)

log = logging.getLogger(__name__)

RENDER = dict(frames=70, height=432, width=768, atlas=2048)
WARP = dict(keyframes=3, height=512, width=768, atlas=2048)
SPLAT = dict(height=432, width=768, atlas=2000, channels=3)
TARGETS_MS = {"render": 1.0, "warp": 0.3, "splat": 2.0}  # on an H100
_INPUT_SETS = 3  # rotated between repeats so that warp/splat inputs do not sit in L2


def smooth_grid(n: int, h: int, w: int, device: torch.device, seed: int, scale: float = 0.35) -> torch.Tensor:
    """(n, h, w, 2) grids: frame k sees a rotated, shifted window of the atlas with a mild bend."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grids = []
    for _ in range(n):
        theta, dx, dy = ((torch.rand(3, generator=gen) - 0.5) * torch.tensor([0.3, 0.6, 0.6])).tolist()
        c, s = math.cos(theta), math.sin(theta)
        # Rotate in frame pixel units (both axes over w) so the window keeps the frame's aspect ratio.
        px, py = xs * w, ys * h
        gx = scale * (c * px - s * py) / w + dx + 0.02 * torch.sin(3 * ys)
        gy = scale * (s * px + c * py) / w + dy + 0.02 * torch.sin(3 * xs)
        grids.append(torch.stack((gx, gy), -1))
    return torch.stack(grids).to(device)


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted), median of 10 copies of 1 GiB."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    stats = time_fn(lambda: dst.copy_(src), device, 10, warmup=2)
    return 2 * src.numel() / (stats["median_ms"] * 1e-3)


class _Rotate:
    """Calls ``fn(*inputs[i])`` for i = 0, 1, 2, 0, ... (one input set per call)."""

    def __init__(self, fn: Callable, inputs: list[tuple]) -> None:
        self.fn, self.inputs, self.i = fn, inputs, 0

    def __call__(self):
        args = self.inputs[self.i % len(self.inputs)]
        self.i += 1
        return self.fn(*args)


def _report(name: str, kernel: dict | None, baseline: dict, floor_bytes: int, bandwidth: float | None) -> dict:
    out = {"floor_bytes": floor_bytes, "baseline_torch": baseline, "kernel": kernel, "target_ms": TARGETS_MS[name]}
    if kernel is not None:
        out["speedup_vs_torch"] = baseline["median_ms"] / kernel["median_ms"]
        out["meets_target"] = kernel["median_ms"] <= TARGETS_MS[name]
    if bandwidth:
        floor_ms = floor_bytes / bandwidth * 1e3
        out["floor_ms"] = floor_ms
        out["fraction_of_floor"] = floor_ms / (kernel or baseline)["median_ms"]
    return out


def bench_render(device: torch.device, repeat: int, bandwidth: float | None) -> dict:
    t, h, w, r = RENDER["frames"], RENDER["height"], RENDER["width"], RENDER["atlas"]
    gen = torch.Generator().manual_seed(0)
    fg = torch.rand(r, r, 4, generator=gen).half().to(device)
    bg = torch.rand(r, r, 4, generator=gen).half().to(device)
    fg_grid, bg_grid = smooth_grid(t, h, w, device, 1), smooth_grid(t, h, w, device, 2, scale=0.45)
    alpha = torch.rand(t, h, w, generator=gen).to(device)
    args = (fg, bg, fg_grid, bg_grid, alpha)
    baseline = time_fn(lambda: render_composite_reference(*args, fg_padding="border"), device, max(3, repeat // 5))
    kernel = None
    if device.type == "cuda":
        kernel = time_fn(lambda: render_composite(*args, fg_padding="border", backend="cuda"), device, repeat)
        diff = (
            render_composite(*args, fg_padding="border").int()
            - render_composite_reference(*args, fg_padding="border").int()
        ).abs()
        kernel["max_abs_diff_lsb"] = int(diff.max())
        kernel["frac_pixels_differing"] = float((diff > 0).float().mean())
    floor = t * h * w * (2 * 8 + 4 + 3) + 2 * r * r * 8
    return _report("render", kernel, baseline, floor, bandwidth) | {"shape": RENDER}


def bench_warp(device: torch.device, repeat: int, bandwidth: float | None) -> dict:
    k, h, w, r = WARP["keyframes"], WARP["height"], WARP["width"], WARP["atlas"]
    gen = torch.Generator().manual_seed(3)
    sets = [
        (torch.rand(r, r, 4, generator=gen).half().to(device), smooth_grid(k, h, w, device, 10 + i))
        for i in range(_INPUT_SETS)
    ]
    baseline = time_fn(_Rotate(warp_atlas_reference, sets), device, repeat)
    kernel = None
    if device.type == "cuda":
        kernel = time_fn(_Rotate(lambda a, g: warp_atlas(a, g, backend="cuda"), sets), device, repeat)
        (got, got_valid), (want, want_valid) = warp_atlas(*sets[0]), warp_atlas_reference(*sets[0])
        kernel["max_rel_diff"] = float(((got - want).abs() / want.abs().clamp(min=1e-6)).max())
        kernel["valid_equal"] = bool(torch.equal(got_valid, want_valid))
    grids = sets[0][1]
    texels = 0
    for g in grids:  # atlas texels inside each keyframe's grid bounding box
        lo, hi = g.flatten(0, 1).amin(0).clamp(-1, 1), g.flatten(0, 1).amax(0).clamp(-1, 1)
        texels += int(((hi - lo) / 2 * r + 1).prod())
    floor = k * h * w * (8 + 12 + 1) + texels * 8
    return _report("warp", kernel, baseline, floor, bandwidth) | {"shape": WARP}


def bench_splat(device: torch.device, repeat: int, bandwidth: float | None) -> dict:
    h, w, r, c = SPLAT["height"], SPLAT["width"], SPLAT["atlas"], SPLAT["channels"]
    gen = torch.Generator().manual_seed(4)
    sets = []
    for i in range(_INPUT_SETS):
        # A keyframe magnified ~2× into the atlas, bent: ~4 atlas points per triangle.
        g = smooth_grid(1, h, w, torch.device("cpu"), 20 + i, scale=0.6)[0]
        points = ((g + 1) * 0.5 * r).contiguous()
        sets.append((points.to(device), torch.rand(c, h, w, generator=gen).to(device), r))
    reps = repeat if device.type == "cuda" else max(1, repeat // 10)
    baseline = time_fn(_Rotate(splat_to_atlas_reference, sets), device, reps, warmup=1)
    kernel = None
    if device.type == "cuda":
        kernel = time_fn(_Rotate(lambda p, v, s: splat_to_atlas(p, v, s, backend="cuda"), sets), device, repeat)
        (got, got_cov), (want, want_cov) = splat_to_atlas(*sets[0]), splat_to_atlas_reference(*sets[0])
        kernel["coverage_equal"] = bool(torch.equal(got_cov, want_cov))
        kernel["max_abs_diff"] = float((got - want).abs().max())
        kernel["covered_points"] = int(got_cov.sum())
        cpu = [tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in sets[0])]
        kernel["cpu_reference"] = time_fn(_Rotate(splat_to_atlas_reference, cpu), torch.device("cpu"), 1, warmup=0)
    floor = h * w * (8 + 4 * c) + r * r * (4 * c + 1)
    return _report("splat", kernel, baseline, floor, bandwidth) | {"shape": SPLAT}


def run(device: str | torch.device = "cuda", repeat: int = 50) -> dict:
    """Time every kernel and its torch baseline on ``device``; a JSON-ready dict of the results."""
    device = torch.device(device)
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    result = {
        "environment": environment(device, note=None),
        "copy_bandwidth_GBps": bandwidth / 1e9 if bandwidth else None,
    }
    for name, bench in (("render", bench_render), ("warp", bench_warp), ("splat", bench_splat)):
        log.info("benchmarking %s on %s", name, device)
        result[name] = bench(device, repeat, bandwidth)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _table(result: dict) -> str:
    rows = [
        f"{'op':<8}{'kernel ms':>11}{'p90':>8}{'torch ms':>10}{'speedup':>9}"
        f"{'floor ms':>10}{'of floor':>10}{'target':>8}"
    ]
    for name in ("render", "warp", "splat"):
        r = result[name]
        k = r["kernel"] or {}
        rows.append(
            f"{name:<8}{k.get('median_ms', float('nan')):>11.3f}{k.get('p90_ms', float('nan')):>8.3f}"
            f"{r['baseline_torch']['median_ms']:>10.3f}{r.get('speedup_vs_torch', float('nan')):>9.1f}"
            f"{r.get('floor_ms', float('nan')):>10.3f}{r.get('fraction_of_floor', float('nan')):>10.2f}"
            f"{r['target_ms']:>8.2f}"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the JSON results")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    cli = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    results = run(cli.device, cli.repeat)
    cli.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["environment"]))
    print(_table(results))
