// Batched atlas warp: sample one atlas into K keyframe crops (K, h, w) in one launch, bilinear,
// align_corners=False, zero padding, plus a validity mask (grid inside [-1, 1]).
// One thread per output pixel: the grid load (8 bytes) and the three channel-planar output
// stores are coalesced across the warp.
#include "sample.cuh"

template <typename T>
__device__ void sv_warp_atlas(const T* __restrict__ atlas, int height, int width,
                              const float2* __restrict__ grids, long long pixels_per_item,
                              long long n_pixels, float* __restrict__ out,
                              unsigned char* __restrict__ valid) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_pixels) return;
    const long long item = i / pixels_per_item, p = i - item * pixels_per_item;
    const float2 g = __ldg(grids + i);
    const float3 v = sv_sample_bilinear(atlas, height, width, SV_PAD_ZEROS, g.x, g.y);
    float* o = out + item * 3 * pixels_per_item + p;
    o[0] = v.x;
    o[pixels_per_item] = v.y;
    o[2 * pixels_per_item] = v.z;
    valid[i] = (fabsf(g.x) <= 1.f && fabsf(g.y) <= 1.f) ? 1 : 0;
}

#define SV_WARP_KERNEL(NAME, T)                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        NAME(const T* atlas, int height, int width, const float2* grids, long long per_item,   \
             long long n, float* out, unsigned char* valid) {                                  \
        sv_warp_atlas<T>(atlas, height, width, grids, per_item, n, out, valid);                \
    }

SV_WARP_KERNEL(warp_atlas_f32, float)
SV_WARP_KERNEL(warp_atlas_f16, unsigned short)
