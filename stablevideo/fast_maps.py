"""The NLA maps on a GPU in half precision: fused bias+ReLU GEMMs over L2-sized chunks, replayed from
one CUDA graph.

Why each piece: a 70-frame 768×432 video is 23 M points through three MLPs (~37 TFLOP, ≈ 47 ms at the
H200's fp16 matrix rate), but unfused their 256-wide activations make every layer a memory-bound
pass over GBs: the bias add and ReLU ride in cuBLASLt's GEMM epilogue (``torch._addmm_activation``),
one captured graph launches a chunk's ~25 kernels without the host (chunks of 2^18 points measured
fastest of 2^15..2^18: a chunk's activations in L2 did not pay). Each chunk makes its own points from
the pixel index (x, y, t), so the graph's only input is the chunk's first index.

Accuracy: the hidden layers run in fp16 with fp32 accumulation; the narrow output layers (2-3
columns) and the positional encoding run in fp32. On the H200 (benchmarks/results/engines-*.json, the bundled
clip's fitted NLA at 70x768x432): 227 ms against 1160 ms for the fp32 reference and 295 ms for bf16
autocast; largest error against fp32 1e-4 in uv (bf16 autocast: 3.4e-3) and 0.008 in alpha.

Where the GPU has fp16 mma.sync (compute capability 8.0+), each MLP instead runs as one fused kernel
(``kernels/nla_mlp.cu``): a point's activations stay in registers from its coordinates to its outputs,
so no activation makes the round trip through memory. The GEMM path stays for other GPUs and for
networks the kernel does not take.
"""

from __future__ import annotations

import torch
from sv_engine.kernels import nla_mlp
from sv_engine.stablevideo.data import VideoConfig
from sv_engine.stablevideo.nla import IMLP, NLAField, alpha_from_output, bg_uv, fg_uv, positional_encoding

#: Measured on the H200 (engines-*.json): 2^15 303 ms, 2^16 279, 2^17 245, 2^18 227 ms.
CHUNK = 1 << 18


class _HalfMLP:
    """An :class:`IMLP` as fp16 GEMMs with fused bias+ReLU; the last layer in fp32."""

    def __init__(self, mlp: IMLP, dtype: torch.dtype) -> None:
        self.skip = mlp.skip_layers
        device = mlp.hidden[0].weight.device
        self.freqs = mlp._freqs.to(device) if mlp.positional_dim else None  # on the device before any capture
        layers = list(mlp.hidden)
        self.hidden = [(layer.weight.detach().t().to(dtype), layer.bias.detach().to(dtype)) for layer in layers[:-1]]
        last = layers[-1]
        self.last = (last.weight.detach().t().float(), last.bias.detach().float())
        self.dtype = dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        encoded = (positional_encoding(x, self.freqs) if self.freqs is not None else x).to(self.dtype)
        h = encoded
        for i, (w, b) in enumerate(self.hidden):
            if i in self.skip:
                h = torch.cat((h, encoded), dim=1)
            h = torch._addmm_activation(b, h, w)  # relu(h @ w + b) in the GEMM's epilogue
        w, b = self.last
        if len(self.hidden) in self.skip:
            h = torch.cat((h, encoded), dim=1)
        return torch.tanh(torch.addmm(b, h.float(), w))


#: Each map's output as ``scale·tanh(out) + offset`` (:func:`fg_uv`, :func:`bg_uv`, :func:`alpha_from_output`).
_FG_UV, _BG_UV, _ALPHA = (0.5, 0.5), (0.5, -0.5), (0.99 * 0.5, 0.99 * 0.5 + 0.001)


def _linears(mlp: IMLP) -> list[nla_mlp.Linear]:
    return [(layer.weight, layer.bias) for layer in mlp.hidden]


class _FusedMaps:
    """The three MLPs as fused kernels (:mod:`sv_engine.kernels.nla_mlp`), packed once."""

    def __init__(self, field: NLAField, m_tiles: int | None = None) -> None:
        self.m_tiles = m_tiles
        self.fg, self.bg, self.alpha = (
            nla_mlp.pack_mlp(_linears(m), m.positional_dim) for m in (field.fg_mapping, field.bg_mapping, field.alpha)
        )

    @staticmethod
    def takes(field: NLAField) -> bool:
        nets = (field.fg_mapping, field.bg_mapping, field.alpha)
        return all(not m.skip_layers and nla_mlp.why_not_packable(_linears(m), m.positional_dim) is None for m in nets)

    def __call__(self, config: VideoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = (config.resx, config.resy, config.num_frames)
        t, h, w = config.num_frames, config.resy, config.resx
        fg = nla_mlp.pixel_field(self.fg, *size, *_FG_UV, m_tiles=self.m_tiles).view(t, h, w, 2)
        bg = nla_mlp.pixel_field(self.bg, *size, *_BG_UV, m_tiles=self.m_tiles).view(t, h, w, 2)
        alpha = nla_mlp.pixel_field(self.alpha, *size, *_ALPHA, m_tiles=self.m_tiles).view(t, h, w)
        return fg, bg, alpha


class FastMaps:
    """``maps(config) -> (fg_uv, bg_uv, alpha)`` for every pixel of the video, on a CUDA device.

    ``fused``: ``None`` runs the fused kernels wherever they apply, ``False`` the fp16 GEMMs; ``m_tiles``:
    16-point tiles a warp of the fused kernels (default: as many as the GPU's shared memory holds)."""

    def __init__(
        self,
        field: NLAField,
        dtype: torch.dtype = torch.float16,
        chunk: int = CHUNK,
        fused: bool | None = None,
        m_tiles: int | None = None,
    ) -> None:
        self.fg, self.bg, self.alpha = (_HalfMLP(m, dtype) for m in (field.fg_mapping, field.bg_mapping, field.alpha))
        self.chunk = chunk
        self.device = next(field.parameters()).device
        self.graphs = self.device.type == "cuda"  # elsewhere (tests on the CPU) the chunks run directly
        use_fused = fused is not False and dtype == torch.float16 and nla_mlp.fused_applies(self.device)
        self.fused = _FusedMaps(field, m_tiles) if use_fused and _FusedMaps.takes(field) else None

    def _chunk(self, start: torch.Tensor, config: VideoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w, h, t = config.resx, config.resy, config.num_frames
        # Python scalars only: a host-to-device copy cannot be captured into the graph.
        idx = torch.clamp(start + torch.arange(self.chunk, device=self.device), max=w * h * t - 1)  # tail repeats
        frame, pixel = idx // (w * h), idx % (w * h)
        half = max(w, h) / 2.0  # normalize_xyt: (x/(m/2) - 1, y/(m/2) - 1, t/(T/2) - 1)
        xyt = torch.stack(
            [(pixel % w).float() / half - 1.0, (pixel // w).float() / half - 1.0, frame.float() / (t / 2.0) - 1.0],
            dim=1,
        )
        return fg_uv(self.fg(xyt)), bg_uv(self.bg(xyt)), alpha_from_output(self.alpha(xyt))[:, 0]

    @torch.no_grad()
    def __call__(self, config: VideoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.fused is not None:
            return self.fused(config)
        n = config.resx * config.resy * config.num_frames
        fg = torch.empty(n, 2, device=self.device)
        bg = torch.empty(n, 2, device=self.device)
        alpha = torch.empty(n, device=self.device)
        start = torch.zeros((), dtype=torch.long, device=self.device)
        run = lambda: self._chunk(start, config)  # noqa: E731
        if self.graphs:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._chunk(start, config)  # warm-up outside the capture: cuBLAS picks kernels, workspaces
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._chunk(start, config)
            run = lambda: (graph.replay(), out)[1]  # noqa: E731
        for first in range(0, n, self.chunk):
            start.fill_(first)
            chunk_fg, chunk_bg, chunk_alpha = run()
            size = min(self.chunk, n - first)
            fg[first : first + size] = chunk_fg[:size]
            bg[first : first + size] = chunk_bg[:size]
            alpha[first : first + size] = chunk_alpha[:size]
        t, h, w = config.num_frames, config.resy, config.resx
        return fg.view(t, h, w, 2), bg.view(t, h, w, 2), alpha.view(t, h, w)
