// Fused render + composite: for every pixel of T frames, sample the fg and bg atlases, clamp each
// to [0, 1], blend with alpha and write uint8 RGB. One launch for all frames; each thread shades 4
// consecutive pixels so that the grid and alpha loads are 16 bytes wide and the output is written
// as three 32-bit words.
//
// Quantisation: u8 = floor(255 * clamp(v, 0, 1)), i.e. truncation like StableVideo's
// `(255 * video).to(torch.uint8)`. The blend uses explicit _rn intrinsics (no FMA
// contraction) so that it rounds exactly like the torch reference's separate tensor operations.
#include "sample.cuh"

struct SvAtlas {
    const void* data;
    int height, width, padding;
};

__device__ __forceinline__ unsigned int sv_quantize(float v) {
    v = fminf(fmaxf(v, 0.f), 1.f);
    return (unsigned int)floorf(__fmul_rn(v, 255.f));
}

__device__ __forceinline__ float sv_mix(float a, float x, float y) {
    // a * x + (1 - a) * y, rounded after each operation.
    return __fadd_rn(__fmul_rn(a, x), __fmul_rn(__fsub_rn(1.f, a), y));
}

template <typename T>
__device__ __forceinline__ float3 sv_sample_clamped(const SvAtlas& atlas, float gx, float gy) {
    const float3 v = sv_sample_bilinear(static_cast<const T*>(atlas.data), atlas.height,
                                        atlas.width, atlas.padding, gx, gy);
    return make_float3(fminf(fmaxf(v.x, 0.f), 1.f), fminf(fmaxf(v.y, 0.f), 1.f),
                       fminf(fmaxf(v.z, 0.f), 1.f));
}

// Shades one pixel into rgb[0..2].
template <typename T>
__device__ __forceinline__ void sv_shade(const SvAtlas& fg, const SvAtlas& bg, float fx, float fy,
                                         float bx, float by, float a, unsigned int rgb[3]) {
    const float3 f = sv_sample_clamped<T>(fg, fx, fy);
    const float3 b = sv_sample_clamped<T>(bg, bx, by);
    rgb[0] = sv_quantize(sv_mix(a, f.x, b.x));
    rgb[1] = sv_quantize(sv_mix(a, f.y, b.y));
    rgb[2] = sv_quantize(sv_mix(a, f.z, b.z));
}

template <typename T>
__device__ void sv_render_composite(SvAtlas fg, SvAtlas bg, const float* __restrict__ fg_grid,
                                    const float* __restrict__ bg_grid,
                                    const float* __restrict__ alpha, unsigned char* __restrict__ out,
                                    long long n_pixels) {
    const long long quad = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long first = quad * 4;
    if (first >= n_pixels) return;

    if (first + 4 <= n_pixels) {
        // Vector path: 4 pixels = 2 float4 of each grid, 1 float4 of alpha, 12 output bytes.
        const float4* fg4 = reinterpret_cast<const float4*>(fg_grid) + quad * 2;
        const float4* bg4 = reinterpret_cast<const float4*>(bg_grid) + quad * 2;
        const float4 f0 = __ldg(fg4), f1 = __ldg(fg4 + 1), b0 = __ldg(bg4), b1 = __ldg(bg4 + 1);
        const float4 a4 = __ldg(reinterpret_cast<const float4*>(alpha) + quad);
        const float fx[4] = {f0.x, f0.z, f1.x, f1.z}, fy[4] = {f0.y, f0.w, f1.y, f1.w};
        const float bx[4] = {b0.x, b0.z, b1.x, b1.z}, by[4] = {b0.y, b0.w, b1.y, b1.w};
        const float a[4] = {a4.x, a4.y, a4.z, a4.w};
        unsigned int words[3] = {0u, 0u, 0u};
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            unsigned int rgb[3];
            sv_shade<T>(fg, bg, fx[p], fy[p], bx[p], by[p], a[p], rgb);
#pragma unroll
            for (int c = 0; c < 3; ++c) {
                const int byte = p * 3 + c;
                words[byte >> 2] |= rgb[c] << (8 * (byte & 3));
            }
        }
        unsigned int* ow = reinterpret_cast<unsigned int*>(out) + quad * 3;
        ow[0] = words[0]; ow[1] = words[1]; ow[2] = words[2];
        return;
    }
    // Tail (n_pixels not a multiple of 4): one pixel at a time.
    for (long long i = first; i < n_pixels; ++i) {
        unsigned int rgb[3];
        sv_shade<T>(fg, bg, fg_grid[2 * i], fg_grid[2 * i + 1], bg_grid[2 * i], bg_grid[2 * i + 1],
                    alpha[i], rgb);
        for (int c = 0; c < 3; ++c) out[i * 3 + c] = (unsigned char)rgb[c];
    }
}

#define SV_RENDER_KERNEL(NAME, T)                                                              \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                   \
        SvAtlas fg, SvAtlas bg, const float* fg_grid, const float* bg_grid, const float* alpha, \
        unsigned char* out, long long n) {                                                     \
        sv_render_composite<T>(fg, bg, fg_grid, bg_grid, alpha, out, n);                       \
    }

SV_RENDER_KERNEL(render_composite_f32, float)
SV_RENDER_KERNEL(render_composite_f16, unsigned short)
