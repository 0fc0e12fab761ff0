// GroupNorm (+ SiLU) over channels-last (N, H, W, C) fp16/bf16 activations, in three launches:
//
//   stats    block = (channel pairs of whole groups) x (pixel lanes), over one tile of pixels: each
//            thread sums two channels of its pixels, shifted by its first value (no cancellation
//            when |mean| >> std), the block merges its threads per group in a fixed order (Chan's
//            formula) and writes (count, mean, M2) per (n, tile, group). No atomics: the result is
//            the same bits on every run, which CUDA-graph replays and the parity tests rely on.
//   finalize one block per (n, group) merges the tiles in a fixed order, then writes each channel's
//            scale = rstd * gamma and shift = beta - mean * scale (ATen's fused form).
//   apply    one thread per 8 channels of one pixel (16-byte loads and stores): x * scale + shift,
//            then SiLU where asked, rounded once.
//
// PyTorch's CUDA GroupNorm reads NCHW only: a channels-last input is copied to NCHW, normalised, and
// the next channels-last convolution copies it back, with SiLU a fourth pass over the tensor.
// Values are fp16 or bf16 bits in unsigned shorts (half.cuh).

#define SV_GN_MAX_THREADS 256

#include "half.cuh"

// (count, mean, M2) of b merged into a: Chan et al.'s pairwise update.
__device__ __forceinline__ void sv_gn_merge(float& n, float& mean, float& m2, float nb, float mb, float m2b) {
    if (nb == 0.f) return;
    if (n == 0.f) {
        n = nb;
        mean = mb;
        m2 = m2b;
        return;
    }
    const float total = n + nb;
    const float delta = mb - mean;
    const float wb = nb / total;
    mean += delta * wb;
    m2 += m2b + delta * delta * n * wb;
    n = total;
}

// grid (C/2 / blockDim.x, tiles, N), block (channel pairs, lanes). blockDim.x covers whole groups.
extern "C" __global__ void __launch_bounds__(SV_GN_MAX_THREADS)
    group_norm_nhwc_stats(const unsigned short* __restrict__ x, int channels, int pixels,
                          int channels_per_group, int pixels_per_tile, int bf16,
                          float* __restrict__ partial) {
    __shared__ float s_n[SV_GN_MAX_THREADS], s_mean[SV_GN_MAX_THREADS], s_m2[SV_GN_MAX_THREADS];
    const int pair = blockIdx.x * blockDim.x + threadIdx.x;
    const int tile = blockIdx.y, n = blockIdx.z;
    const int begin = tile * pixels_per_tile;
    const int end = min(pixels, begin + pixels_per_tile);
    const unsigned int* row = reinterpret_cast<const unsigned int*>(x + (long long)n * pixels * channels) + pair;
    const int pairs = channels / 2;

    float shift = 0.f, sum = 0.f, sq = 0.f;
    int count = 0;
    for (int p = begin + threadIdx.y; p < end; p += blockDim.y) {
        const unsigned int v = __ldg(row + (long long)p * pairs);
        const float a = sv_half_load(v & 0xffffu, bf16), b = sv_half_load(v >> 16, bf16);
        if (count == 0) shift = a;
        const float da = a - shift, db = b - shift;
        sum += da + db;
        sq += da * da + db * db;
        count += 2;
    }
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    const float fc = (float)count;
    s_n[t] = fc;
    s_mean[t] = count ? shift + sum / fc : 0.f;
    s_m2[t] = count ? fmaxf(sq - sum * sum / fc, 0.f) : 0.f;
    __syncthreads();

    const int pairs_per_group = channels_per_group / 2;
    const int groups_here = blockDim.x / pairs_per_group;
    if (t < groups_here) {
        float gn = 0.f, gmean = 0.f, gm2 = 0.f;
        for (int lane = 0; lane < (int)blockDim.y; ++lane) {
            for (int j = 0; j < pairs_per_group; ++j) {
                const int s = lane * blockDim.x + t * pairs_per_group + j;
                sv_gn_merge(gn, gmean, gm2, s_n[s], s_mean[s], s_m2[s]);
            }
        }
        const int groups = channels / channels_per_group;
        const int group = blockIdx.x * groups_here + t;
        float* out = partial + (((long long)n * gridDim.y + tile) * groups + group) * 3;
        out[0] = gn;
        out[1] = gmean;
        out[2] = gm2;
    }
}

// grid (groups, N), block a power of two <= 256: merges the tiles' partials of one (n, group) (each
// thread a few, then a fixed tree: the same order every run), writes its channels' scale and shift
// (float, N x C). A tile per thread keeps the loads independent: the loop over one warp's tiles was
// bound by their latency.
extern "C" __global__ void __launch_bounds__(SV_GN_MAX_THREADS)
    group_norm_nhwc_finalize(const float* __restrict__ partial, int tiles, int channels,
                             int channels_per_group, const unsigned short* __restrict__ gamma,
                             const unsigned short* __restrict__ beta, float eps, int bf16,
                             float* __restrict__ scale, float* __restrict__ shift) {
    __shared__ float s_n[SV_GN_MAX_THREADS], s_mean[SV_GN_MAX_THREADS], s_m2[SV_GN_MAX_THREADS];
    const int group = blockIdx.x, n = blockIdx.y, t = threadIdx.x;
    const int groups = gridDim.x;
    float gn = 0.f, gmean = 0.f, gm2 = 0.f;
    for (int tile = t; tile < tiles; tile += blockDim.x) {
        const float* p = partial + (((long long)n * tiles + tile) * groups + group) * 3;
        sv_gn_merge(gn, gmean, gm2, p[0], p[1], p[2]);
    }
    s_n[t] = gn;
    s_mean[t] = gmean;
    s_m2[t] = gm2;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            sv_gn_merge(gn, gmean, gm2, s_n[t + stride], s_mean[t + stride], s_m2[t + stride]);
            s_n[t] = gn;
            s_mean[t] = gmean;
            s_m2[t] = gm2;
        }
        __syncthreads();
    }
    const float mean = s_mean[0];
    const float rstd = rsqrtf(fmaxf(s_m2[0] / s_n[0], 0.f) + eps);
    for (int j = t; j < channels_per_group; j += blockDim.x) {
        const int c = group * channels_per_group + j;
        const float a = rstd * sv_half_load(gamma[c], bf16);
        scale[(long long)n * channels + c] = a;
        shift[(long long)n * channels + c] = sv_half_load(beta[c], bf16) - mean * a;
    }
}

// One thread per 8 consecutive channels of one pixel; C % 8 == 0 and 16-byte aligned x and y.
extern "C" __global__ void __launch_bounds__(256)
    group_norm_nhwc_apply(const unsigned short* __restrict__ x, const float* __restrict__ scale,
                          const float* __restrict__ shift, long long vectors, int channels,
                          long long pixels_channels, int silu, int bf16, unsigned short* __restrict__ y) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= vectors) return;
    const long long e = i * 8;
    const long long n = e / pixels_channels;
    const int c = (int)(e % channels);
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(x) + i);
    const float4* sc = reinterpret_cast<const float4*>(scale + n * channels + c);
    const float4* sh = reinterpret_cast<const float4*>(shift + n * channels + c);
    const float4 s0 = __ldg(sc), s1 = __ldg(sc + 1), h0 = __ldg(sh), h1 = __ldg(sh + 1);
    const float a[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
    const float b[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
    const unsigned int words[4] = {v.x, v.y, v.z, v.w};
    unsigned int out[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        float lo = fmaf(sv_half_load(words[k] & 0xffffu, bf16), a[2 * k], b[2 * k]);
        float hi = fmaf(sv_half_load(words[k] >> 16, bf16), a[2 * k + 1], b[2 * k + 1]);
        if (silu) {
            lo = lo / (1.f + __expf(-lo));
            hi = hi / (1.f + __expf(-hi));
        }
        out[k] = (unsigned int)sv_half_store(lo, bf16) | ((unsigned int)sv_half_store(hi, bf16) << 16);
    }
    reinterpret_cast<uint4*>(y)[i] = make_uint4(out[0], out[1], out[2], out[3]);
}
