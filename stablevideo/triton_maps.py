"""The NLA maps in one fused Triton kernel: fg mapping, bg mapping and alpha MLPs per pixel block,
their 256-wide activations kept on the chip (registers and an L2-resident scratch tile), instead of
FastMaps' one cuBLAS GEMM per layer whose activations make a round trip through HBM.

:class:`TritonMaps` packs an :class:`~sv_engine.stablevideo.nla.NLAField`'s weights in the kernel's
layout (:mod:`sv_engine.stablevideo._maps_kernel`); :meth:`TritonMaps.reference` runs the same packed
weights through torch ops (the kernel's arithmetic: fp16 hidden layers with fp32 accumulation, fp32
first layers, encoding and output layers), so the packing is tested where no GPU is.
"""

from __future__ import annotations

import torch
from sv_engine.stablevideo.data import VideoConfig
from sv_engine.stablevideo.nla import IMLP, NLAField, alpha_from_output, bg_uv, fg_uv, positional_encoding

from sv_engine.errors import SvEngineError

HIDDEN = 256
#: The alpha net's encoded input (3 dims × 2 × 5 frequencies = 30) padded to a tensor-core K.
ENCODED_PAD = 32


class _Packed:
    """One MLP in the kernel's layout: first layer (K, 256), hidden (L, 256, 256) fp16 as K×N, biases
    fp32, output layer (n_out, 256) fp32."""

    def __init__(self, mlp: IMLP, encoded: bool) -> None:
        layers = list(mlp.hidden)
        if mlp.skip_layers or any(layer.out_features != HIDDEN for layer in layers[:-1]) or len(layers) < 3:
            raise SvEngineError(
                f"TritonMaps takes 256-wide NLA MLPs without skips, got {len(layers)} layers, skips {mlp.skip_layers}.",
                "use FastMaps for this network.",
            )
        first, mids, last = layers[0], layers[1:-1], layers[-1]
        w0 = first.weight.detach().t().float()
        self.freqs = mlp._freqs.to(w0.device).float() if encoded else None
        if encoded:
            if w0.shape[0] > ENCODED_PAD:
                raise SvEngineError(f"encoded input of {w0.shape[0]} features > {ENCODED_PAD}.", "use FastMaps.")
            w0 = torch.cat([w0, w0.new_zeros(ENCODED_PAD - w0.shape[0], HIDDEN)]).half()
        elif w0.shape[0] != 3:
            raise SvEngineError(f"TritonMaps takes (x, y, t) inputs, got {w0.shape[0]}.", "use FastMaps.")
        self.w0 = w0.contiguous()
        self.b0 = first.bias.detach().float().contiguous()
        self.w = torch.stack([m.weight.detach().t() for m in mids]).half().contiguous()
        self.b = torch.stack([m.bias.detach() for m in mids]).float().contiguous()
        self.wl = last.weight.detach().float().contiguous()
        self.bl = last.bias.detach().float().contiguous()
        self.num_hidden = len(mids)

    def reference(self, xyt: torch.Tensor) -> torch.Tensor:
        """The kernel's arithmetic in torch ops: the output before tanh, (N, n_out) fp32."""
        if self.freqs is not None:
            enc = positional_encoding(xyt, self.freqs)
            enc = torch.cat([enc, enc.new_zeros(enc.shape[0], ENCODED_PAD - enc.shape[1])], dim=1).half()
            h = torch.relu(enc.float() @ self.w0.float() + self.b0).half()
        else:
            h = torch.relu(xyt @ self.w0 + self.b0).half()
        for w, b in zip(self.w, self.b, strict=True):
            h = torch.relu(h.float() @ w.float() + b).half()
        return h.float() @ self.wl.t() + self.bl


class TritonMaps:
    """``maps(config) -> (fg_uv, bg_uv, alpha)`` for every pixel of the video, like :class:`FastMaps`.

    ``block``: pixels per block (the register tile's rows); ``warps``: per program; ``column_tile``:
    the weight tile's width; ``programs_per_sm``: the persistent grid's size per multiprocessor.
    """

    def __init__(
        self, field: NLAField, block: int = 128, warps: int = 8, column_tile: int = 64, programs_per_sm: int = 1
    ) -> None:
        self.fg = _Packed(field.fg_mapping, encoded=False)
        self.bg = _Packed(field.bg_mapping, encoded=False)
        self.alpha = _Packed(field.alpha, encoded=True)
        if field.alpha.positional_dim * 6 > ENCODED_PAD:
            raise SvEngineError("the alpha net's encoding is wider than the kernel's.", "use FastMaps.")
        self.block, self.warps, self.column_tile, self.programs_per_sm = block, warps, column_tile, programs_per_sm
        self.device = self.fg.w.device

    @staticmethod
    def points(config: VideoConfig, device: torch.device | str = "cpu") -> torch.Tensor:
        """(T·H·W, 3) normalised (x, y, t) of every pixel, in the kernel's order (frame, row, column)."""
        w, h, t = config.resx, config.resy, config.num_frames
        idx = torch.arange(w * h * t, device=device)
        frame, pixel = idx // (w * h), idx % (w * h)
        half = max(w, h) / 2.0
        return torch.stack(
            [(pixel % w).float() / half - 1.0, (pixel // w).float() / half - 1.0, frame.float() / (t / 2.0) - 1.0],
            dim=1,
        )

    def reference(self, config: VideoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The maps through torch ops with the kernel's packed weights and arithmetic."""
        xyt = self.points(config, self.device)
        t, h, w = config.num_frames, config.resy, config.resx
        fg = fg_uv(torch.tanh(self.fg.reference(xyt)))
        bg = bg_uv(torch.tanh(self.bg.reference(xyt)))
        alpha = alpha_from_output(torch.tanh(self.alpha.reference(xyt)))[:, 0]
        return fg.view(t, h, w, 2), bg.view(t, h, w, 2), alpha.view(t, h, w)

    @torch.no_grad()
    def __call__(self, config: VideoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.device.type != "cuda":
            return self.reference(config)
        from sv_engine.stablevideo._maps_kernel import nla_maps_kernel

        w, h, t = config.resx, config.resy, config.num_frames
        n = w * h * t
        fg = torch.empty(n, 2, device=self.device)
        bg = torch.empty(n, 2, device=self.device)
        alpha = torch.empty(n, device=self.device)
        n_blocks = -(-n // self.block)
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        grid = min(n_blocks, sms * self.programs_per_sm)
        scratch = torch.empty(grid * self.block * HIDDEN, dtype=torch.float16, device=self.device)
        f, b, a = self.fg, self.bg, self.alpha
        nla_maps_kernel[(grid,)](
            fg, bg, alpha,
            f.w0, f.b0, f.w, f.b, f.wl, f.bl,
            b.w0, b.b0, b.w, b.b, b.wl, b.bl,
            a.freqs, a.w0, a.b0, a.w, a.b, a.wl, a.bl,
            scratch, n, w, w * h, max(w, h) / 2.0, t / 2.0, n_blocks,
            FG_NL=f.num_hidden, BG_NL=b.num_hidden, AL_NL=a.num_hidden, NF=len(a.freqs),
            BM=self.block, H=HIDDEN, BN=self.column_tile, KP=ENCODED_PAD,
            num_warps=self.warps,
        )  # fmt: skip
        return fg.view(t, h, w, 2), bg.view(t, h, w, 2), alpha.view(t, h, w)
