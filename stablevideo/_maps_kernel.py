"""Triton kernel of :mod:`sv_engine.stablevideo.triton_maps` (imported only where Triton and a GPU are).

One program walks blocks of ``BM`` pixels: it makes each pixel's (x, y, t) from its index, runs the fg
mapping, bg mapping and alpha MLPs one after the other and writes the three maps. The 256-wide hidden
activations never leave the chip: a layer's input is a (BM, 256) fp16 register tile, its weights are
read in (256, BN) column tiles (L2-resident: every program reads the same few hundred kB), and its
output goes through a per-program scratch tile that stays in L2 before being read back whole as the
next layer's input. First layers with 3 inputs are fp32 FMAs; the alpha net's positional encoding
(fp32 sin/cos, padded to 32 features) feeds a tensor-core dot; output layers (1-2 columns) are fp32
row reductions, as FastMaps keeps them fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, r, -r)


@triton.jit
def _first3(x, y, t, w_ptr, b_ptr, H: tl.constexpr):
    cols = tl.arange(0, H)
    w0 = tl.load(w_ptr + cols)
    w1 = tl.load(w_ptr + H + cols)
    w2 = tl.load(w_ptr + 2 * H + cols)
    b = tl.load(b_ptr + cols)
    h = x[:, None] * w0[None, :] + y[:, None] * w1[None, :] + t[:, None] * w2[None, :] + b[None, :]
    return tl.maximum(h, 0.0).to(tl.float16)


@triton.jit
def _first_encoded(x, y, t, freq_ptr, w_ptr, b_ptr, H: tl.constexpr, KP: tl.constexpr, NF: tl.constexpr):
    # NLA's encoding order: per frequency j, sin of (x, y, t) then cos of (x, y, t).
    cols = tl.arange(0, KP)
    j = cols // 6
    c = cols % 6
    d = c % 3
    used = cols < 6 * NF
    freq = tl.load(freq_ptr + j, mask=used, other=0.0)
    coord = tl.where(d[None, :] == 0, x[:, None], tl.where(d[None, :] == 1, y[:, None], t[:, None]))
    proj = coord * freq[None, :]
    feat = tl.where((c < 3)[None, :], tl.sin(proj), tl.cos(proj))
    feat = tl.where(used[None, :], feat, 0.0).to(tl.float16)
    w = tl.load(w_ptr + cols[:, None] * H + tl.arange(0, H)[None, :])
    acc = tl.dot(feat, w) + tl.load(b_ptr + tl.arange(0, H))[None, :]
    return tl.maximum(acc, 0.0).to(tl.float16)


@triton.jit
def _hidden(a, w_ptr, b_ptr, scratch, NL: tl.constexpr, BM: tl.constexpr, H: tl.constexpr, BN: tl.constexpr):
    rows = tl.arange(0, BM)
    ks = tl.arange(0, H)
    for layer in tl.static_range(NL):
        for n in tl.static_range(H // BN):
            cols = n * BN + tl.arange(0, BN)
            w = tl.load(w_ptr + layer * H * H + ks[:, None] * H + cols[None, :])
            acc = tl.dot(a, w) + tl.load(b_ptr + layer * H + cols)[None, :]
            tl.store(scratch + rows[:, None] * H + cols[None, :], tl.maximum(acc, 0.0).to(tl.float16))
        tl.debug_barrier()
        a = tl.load(scratch + rows[:, None] * H + ks[None, :])
        tl.debug_barrier()
    return a


@triton.jit
def _output(a, w_ptr, b_ptr, k: tl.constexpr, H: tl.constexpr):
    w = tl.load(w_ptr + k * H + tl.arange(0, H))
    return tl.sum(a.to(tl.float32) * w[None, :], axis=1) + tl.load(b_ptr + k)


@triton.jit
def nla_maps_kernel(
    fg_out,
    bg_out,
    alpha_out,
    fg_w0,
    fg_b0,
    fg_w,
    fg_b,
    fg_wl,
    fg_bl,
    bg_w0,
    bg_b0,
    bg_w,
    bg_b,
    bg_wl,
    bg_bl,
    al_freq,
    al_w0,
    al_b0,
    al_w,
    al_b,
    al_wl,
    al_bl,
    scratch_ptr,
    n_points,
    width,
    frame_size,
    half,
    t_half,
    n_blocks,
    FG_NL: tl.constexpr,
    BG_NL: tl.constexpr,
    AL_NL: tl.constexpr,
    NF: tl.constexpr,
    BM: tl.constexpr,
    H: tl.constexpr,
    BN: tl.constexpr,
    KP: tl.constexpr,
):
    pid = tl.program_id(0)
    scratch = scratch_ptr + pid * BM * H
    for blk in range(pid, n_blocks, tl.num_programs(0)):
        idx = blk * BM + tl.arange(0, BM)
        valid = idx < n_points
        i = tl.minimum(idx, n_points - 1)
        frame = i // frame_size
        pixel = i % frame_size
        x = (pixel % width).to(tl.float32) / half - 1.0
        y = (pixel // width).to(tl.float32) / half - 1.0
        t = frame.to(tl.float32) / t_half - 1.0

        h = _hidden(_first3(x, y, t, fg_w0, fg_b0, H), fg_w, fg_b, scratch, FG_NL, BM, H, BN)
        tl.store(fg_out + idx * 2, _tanh(_output(h, fg_wl, fg_bl, 0, H)) * 0.5 + 0.5, mask=valid)
        tl.store(fg_out + idx * 2 + 1, _tanh(_output(h, fg_wl, fg_bl, 1, H)) * 0.5 + 0.5, mask=valid)

        h = _hidden(_first3(x, y, t, bg_w0, bg_b0, H), bg_w, bg_b, scratch, BG_NL, BM, H, BN)
        tl.store(bg_out + idx * 2, _tanh(_output(h, bg_wl, bg_bl, 0, H)) * 0.5 - 0.5, mask=valid)
        tl.store(bg_out + idx * 2 + 1, _tanh(_output(h, bg_wl, bg_bl, 1, H)) * 0.5 - 0.5, mask=valid)

        h = _first_encoded(x, y, t, al_freq, al_w0, al_b0, H, KP, NF)
        h = _hidden(h, al_w, al_b, scratch, AL_NL, BM, H, BN)
        alpha = 0.99 * (_tanh(_output(h, al_wl, al_bl, 0, H)) + 1.0) * 0.5 + 0.001
        tl.store(alpha_out + idx, alpha, mask=valid)
