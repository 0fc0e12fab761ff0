"""An NLA MLP over every pixel (x, y, t) of a video in one fused kernel: ``nla_mlp.cu``.

The per-pixel maps of a video (fg uv, bg uv, alpha) are three ReLU MLPs of width 256 over every
(x, y, t). Run layer by layer, each 256-wide activation makes a round trip through memory; the kernel
keeps a point's activations in registers from its coordinates to its outputs (``nla_mlp.cu`` says
how). Weights go in as ``nn.Linear`` pairs ``(weight (out, in), bias (out,))`` and are packed once
(:func:`pack_mlp`); the kernel's math is :func:`pixel_field_reference` with the hidden layers' inputs
rounded to fp16 (fp32 accumulation; biases, the output layer and the encoding in fp32).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sv_engine.kernels import _checks
from sv_engine.kernels._nvrtc import KernelSource, launch, ptr

from sv_engine.errors import SvEngineError

M_TILES = (2, 1)  #: 16-point tiles a warp: 2 where the SM's shared memory holds them, else 1
SOURCE = KernelSource(
    "nla_mlp.cu",
    includes=("half.cuh",),
    kernels=tuple(f"nla_mlp_k{k}_m{m}" for m in M_TILES for k in (16, 32)),
)
_WARPS = 8

WIDTH = 256
_STAGE_BYTES = 32 * 1024  # one stage of hidden-layer weights
_STAGE_BUFFERS = 3
_PARKED_BYTES = 8 * 1024  # a 16-point tile's next-layer fragments
_MAX_OUTPUTS = 2
_MAX_FEATURES = 32

Linear = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PackedMLP:
    """One MLP's weights as the kernel reads them (:func:`pack_mlp`)."""

    weights: torch.Tensor  #: fp16: layer 0 (zero padded to 16 or 32 inputs), then the hidden layers, in fragment order
    biases: torch.Tensor  #: fp32 (1 + hidden_layers) * 256
    hidden_layers: int
    out_weight: torch.Tensor  #: fp32 (outputs, 256)
    out_bias: torch.Tensor  #: fp32 (outputs,)
    freqs: int  #: positional-encoding frequencies of the input (0: x, y, t as they are)

    @property
    def input_blocks(self) -> int:
        return _input_blocks(self.freqs)


def _features(freqs: int) -> int:
    return 6 * freqs if freqs else 3


def _input_blocks(freqs: int) -> int:
    return 1 if _features(freqs) <= 16 else 2


def why_not_packable(layers: Sequence[Linear], freqs: int) -> str | None:
    """Why the kernel cannot run these layers, or None: it takes 3 coordinates (or their encoding in
    at most 5 frequencies), 256-wide hidden layers without skips and 1 or 2 outputs."""
    if freqs < 0 or _features(freqs) > _MAX_FEATURES:
        return f"an encoding of {freqs} frequencies has more than {_MAX_FEATURES} features"
    if len(layers) < 2:
        return "it needs an input and an output layer"
    shapes = [tuple(w.shape) for w, _ in layers]
    expected = [(WIDTH, _features(freqs))] + [(WIDTH, WIDTH)] * (len(layers) - 2)
    if shapes[:-1] != expected:
        return f"the layers' shapes {shapes} are not {expected} + (outputs, {WIDTH})"
    if shapes[-1][1] != WIDTH or not 1 <= shapes[-1][0] <= _MAX_OUTPUTS:
        return f"the output layer is {shapes[-1]}, not (1 or 2, {WIDTH})"
    return None


def _fragment_order(weight: torch.Tensor, blocks: int) -> torch.Tensor:
    """(256, 16·blocks) -> the kernel's order: stage c (64 outputs), k-block, n-tile pair i, lane
    (g, t), then n-tile 2i and 2i+1's two registers each, of halves (k 2t, 2t+1) and (k 8+2t, 9+2t)."""
    w = weight.reshape(4, 4, 2, 8, blocks, 2, 4, 2)  # n = (c, i, odd, g), k = (k-block, half, t, pair)
    return w.permute(0, 4, 1, 3, 6, 2, 5, 7).reshape(-1)


def pack_mlp(layers: Sequence[Linear], freqs: int = 0) -> PackedMLP:
    """Packs ``nn.Linear`` ``(weight, bias)`` pairs for :func:`pixel_field` (once per set of weights)."""
    why = why_not_packable(layers, freqs)
    if why:
        raise SvEngineError(f"the fused NLA MLP cannot take these layers: {why}.", "Use backend='torch'.")
    blocks = _input_blocks(freqs)
    (w0, b0), *hidden, (w_out, b_out) = ((w.detach(), b.detach()) for w, b in layers)
    first = torch.zeros(WIDTH, 16 * blocks, dtype=torch.float16, device=w0.device)
    first[:, : w0.shape[1]] = w0.to(torch.float16)
    parts = [_fragment_order(first, blocks)] + [_fragment_order(w.to(torch.float16), 16) for w, _ in hidden]
    return PackedMLP(
        weights=torch.cat(parts).contiguous(),
        biases=torch.cat([b0.float()] + [b.float() for _, b in hidden]).contiguous(),
        hidden_layers=len(hidden),
        out_weight=w_out.float().contiguous(),
        out_bias=b_out.float().contiguous(),
        freqs=freqs,
    )


def pixel_points(width: int, height: int, frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every pixel's network input in (t, y, x) order: (x/(m/2) − 1, y/(m/2) − 1, t/(T/2) − 1),
    m = max(width, height) (NLA's normalisation)."""
    half = max(width, height) / 2.0
    t, y, x = torch.meshgrid(
        *(torch.arange(s, device=device, dtype=torch.float32) for s in (frames, height, width)), indexing="ij"
    )
    return torch.stack([x / half - 1.0, y / half - 1.0, t / (frames / 2.0) - 1.0], dim=-1).reshape(-1, 3)


def encode(xyt: torch.Tensor, freqs: int) -> torch.Tensor:
    """NLA's positional encoding: per frequency (2^f)·π, sin of x, y, t then cos of x, y, t."""
    if not freqs:
        return xyt
    bands = torch.tensor([(2.0**f) * math.pi for f in range(freqs)], device=xyt.device)
    proj = xyt[:, :, None] * bands
    return torch.cat((torch.sin(proj), torch.cos(proj)), dim=1).transpose(2, 1).reshape(xyt.shape[0], -1)


def pixel_field_reference(
    layers: Sequence[Linear], freqs: int, width: int, height: int, frames: int, scale: float, offset: float
) -> torch.Tensor:
    """The torch specification of :func:`pixel_field`, in fp32: ``scale·tanh(mlp(encode(p))) + offset``
    for every pixel p, (frames·height·width, outputs)."""
    device = layers[0][0].device
    h = encode(pixel_points(width, height, frames, device), freqs)
    for i, (w, b) in enumerate(layers):
        h = torch.nn.functional.linear(h, w.float(), b.float())
        if i < len(layers) - 1:
            h = torch.relu(h)
    return scale * torch.tanh(h) + offset


def fused_applies(device: torch.device) -> bool:
    """Whether :func:`pixel_field` runs the kernel on ``device``: a CUDA GPU with fp16 mma.sync and
    cp.async (compute capability 8.0 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def _shared_bytes(m_tiles: int) -> int:
    return _STAGE_BUFFERS * _STAGE_BYTES + _WARPS * m_tiles * _PARKED_BYTES


def default_m_tiles(device: torch.device) -> int:
    """2 tiles a warp where a block may take their 224 KB of shared memory (Hopper: 227 KB), else 1:
    each weight fragment read from shared memory then feeds two mma's."""
    optin = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 0)
    return next(m for m in M_TILES if m == M_TILES[-1] or _shared_bytes(m) <= optin)


def pixel_field(
    mlp: PackedMLP,
    width: int,
    height: int,
    frames: int,
    scale: float = 1.0,
    offset: float = 0.0,
    m_tiles: int | None = None,
) -> torch.Tensor:
    """``scale·tanh(mlp(p)) + offset`` for every pixel p = (x, y, t) of a video, (frames·height·width,
    outputs) float32 in (t, y, x) order, on the CUDA device holding ``mlp``. ``m_tiles``: 16-point
    tiles a warp, one of :data:`M_TILES` (default: :func:`default_m_tiles`)."""
    device = mlp.weights.device
    if not fused_applies(device):
        raise SvEngineError(
            f"the fused NLA MLP needs a CUDA GPU of compute capability 8.0 or newer, not {device}.",
            "Use pixel_field_reference (or the caller's torch path) there.",
        )
    for name, size in (("width", width), ("height", height), ("frames", frames)):
        if size < 1:
            raise SvEngineError(f"{name}={size} is not a video size.", "Pass positive sizes.")
    m_tiles = default_m_tiles(device) if m_tiles is None else m_tiles
    _checks.check_choice("m_tiles", m_tiles, M_TILES)
    n = width * height * frames
    outputs = mlp.out_weight.shape[0]
    out = torch.empty(n, outputs, dtype=torch.float32, device=device)
    tiles = -(-n // (16 * _WARPS * m_tiles))
    grid = min(tiles, torch.cuda.get_device_properties(device).multi_processor_count)
    kernel = f"nla_mlp_k{16 * mlp.input_blocks}_m{m_tiles}"
    args = [
        ptr(mlp.weights),
        ptr(mlp.biases),
        ctypes.c_int(mlp.hidden_layers),
        ptr(mlp.out_weight),
        ptr(mlp.out_bias),
        ctypes.c_int(outputs),
        ctypes.c_float(scale),
        ctypes.c_float(offset),
        ctypes.c_int(mlp.freqs),
        ctypes.c_int(width),
        ctypes.c_int(height),
        ctypes.c_int(frames),
        ctypes.c_longlong(n),
        ptr(out),
    ]
    _checks.check_tensor("weights", mlp.weights, (torch.float16,), (None,), device)
    launch(SOURCE.function(device, kernel), (grid, 1, 1), (32 * _WARPS, 1, 1), args, device, _shared_bytes(m_tiles))
    return out
