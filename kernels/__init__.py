"""Triton-free CUDA kernels for StableVideo's UV mapping, compiled at run time with NVRTC.

Public ops (CUDA kernel on CUDA tensors, the torch reference on CPU; ``backend="auto"|"cuda"|"torch"``):

* :func:`render_composite` -- fused fg/bg atlas sampling + alpha composite -> uint8 frames.
* :func:`warp_atlas` -- one atlas into K keyframe crops, with a validity mask (:func:`pad_grids`
  batches crops of different sizes).
* :func:`splat_to_atlas` -- an edited keyframe back into atlas space (linear, griddata-like).
* :func:`group_norm.group_norm` -- GroupNorm (+ SiLU) over channels-last fp16/bf16 activations in one pass (the
  networks' norms; ``F.group_norm`` where it does not apply).
* :func:`geglu.geglu` -- the feed-forward's value * GELU(gate) in one pass.
* :func:`bias.add_channel_bias_` -- a convolution's bias added to its channels-last output, vectorised.
* :func:`nla_mlp.pixel_field` -- an NLA MLP over every pixel of a video, fully fused (the NLA maps).

Each ``*_reference`` function is the torch specification its kernel is tested against.
"""

from pathlib import Path

import torch
from sv_engine.kernels import bias, geglu, group_norm, nla_mlp, render, splat, warp
from sv_engine.kernels.render import render_composite, render_composite_reference
from sv_engine.kernels.splat import splat_to_atlas, splat_to_atlas_reference
from sv_engine.kernels.warp import pad_grids, warp_atlas, warp_atlas_reference

#: Every kernel's source: what :func:`precompile` builds.
SOURCES = (render.SOURCE, splat.SOURCE, warp.SOURCE, group_norm.SOURCE, geglu.SOURCE, bias.SOURCE, nla_mlp.SOURCE)


def precompile(arch: str) -> list[Path]:
    """Compiles every kernel for ``arch`` (e.g. ``"sm_90"``) into the disk cache, unless kept there
    already, so that a later process's first edit loads cubins instead of running NVRTC (the three
    kernels' first calls took 0.85 s of a fresh H200 process's first edit with an empty cache:
    benchmarks/results/first-use-nvidia-h200-2026-12-02-*.json).
    Needs NVRTC, not a GPU. Returns the cubins' paths."""
    for source in SOURCES:
        source.compile(arch)
    return [source.cubin_path(arch) for source in SOURCES]


def load(device: torch.device) -> None:
    """Loads every kernel's module on the CUDA ``device`` (cubins from the disk cache, compiled where
    missing), so that their first calls in an edit only launch (the loading can then run beside other
    work: sv_engine.export.compose)."""
    for source in SOURCES:
        source.load(device)


__all__ = [
    "SOURCES",
    "load",
    "pad_grids",
    "precompile",
    "render_composite",
    "render_composite_reference",
    "splat_to_atlas",
    "splat_to_atlas_reference",
    "warp_atlas",
    "warp_atlas_reference",
]
