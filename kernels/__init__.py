"""Triton-free CUDA kernels for StableVideo's UV mapping, compiled at run time with NVRTC.

Public ops (CUDA kernel on CUDA tensors, the torch reference on CPU; ``backend="auto"|"cuda"|"torch"``):

* :func:`render_composite` -- fused fg/bg atlas sampling + alpha composite -> uint8 frames.
* :func:`warp_atlas` -- one atlas into K keyframe crops, with a validity mask (:func:`pad_grids`
  batches crops of different sizes).
* :func:`splat_to_atlas` -- an edited keyframe back into atlas space (linear, griddata-like).

Each ``*_reference`` function is the torch specification its kernel is tested against.
"""

from sv_engine.kernels.render import render_composite, render_composite_reference
from sv_engine.kernels.splat import splat_to_atlas, splat_to_atlas_reference
from sv_engine.kernels.warp import pad_grids, warp_atlas, warp_atlas_reference

__all__ = [
    "pad_grids",
    "render_composite",
    "render_composite_reference",
    "splat_to_atlas",
    "splat_to_atlas_reference",
    "warp_atlas",
    "warp_atlas_reference",
]
