// Bilinear atlas sampling with torch.nn.functional.grid_sample's conventions:
// grid (x, y) in [-1, 1], x along the width, align_corners=False, padding "zeros" or "border".
// Atlases are channels-last RGBA (H, W, 4), fp32 or fp16 (fp16 is passed as raw 16-bit words and
// converted with cvt.f32.f16 so that no CUDA header is needed at run time).
#pragma once

#define SV_PAD_ZEROS 0
#define SV_PAD_BORDER 1

__device__ __forceinline__ float sv_half_to_float(unsigned int h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)h));
    return f;
}

// One RGBA texel: a 16-byte load for fp32, an 8-byte load for fp16.
__device__ __forceinline__ float4 sv_load_texel(const float* atlas, long long index) {
    return __ldg(reinterpret_cast<const float4*>(atlas) + index);
}
__device__ __forceinline__ float4 sv_load_texel(const unsigned short* atlas, long long index) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(atlas) + index);
    return make_float4(sv_half_to_float(v.x & 0xffffu), sv_half_to_float(v.x >> 16),
                       sv_half_to_float(v.y & 0xffffu), sv_half_to_float(v.y >> 16));
}

// RGB of the atlas at grid point (gx, gy). Weights and the nw, ne, sw, se accumulation order follow
// ATen's grid_sampler_2d kernel so that results agree with F.grid_sample to the last bits.
template <typename T>
__device__ __forceinline__ float3 sv_sample_bilinear(const T* atlas, int height, int width,
                                                     int padding, float gx, float gy) {
    float ix = ((gx + 1.f) * width - 1.f) * 0.5f;
    float iy = ((gy + 1.f) * height - 1.f) * 0.5f;
    if (padding == SV_PAD_BORDER) {
        ix = fminf(fmaxf(ix, 0.f), (float)(width - 1));
        iy = fminf(fmaxf(iy, 0.f), (float)(height - 1));
    }
    float3 out = make_float3(0.f, 0.f, 0.f);
    // Outside (-1, size) every corner is out of range: the sample is zero. Returning early also
    // keeps the float->int conversions below defined for huge or NaN coordinates.
    if (!(ix > -1.f && ix < (float)width && iy > -1.f && iy < (float)height)) return out;

    const float x0 = floorf(ix), y0 = floorf(iy);
    const float x1 = x0 + 1.f, y1 = y0 + 1.f;
    const int xi = (int)x0, yi = (int)y0;
    const float w_nw = (x1 - ix) * (y1 - iy);
    const float w_ne = (ix - x0) * (y1 - iy);
    const float w_sw = (x1 - ix) * (iy - y0);
    const float w_se = (ix - x0) * (iy - y0);
    const bool x0_in = xi >= 0, x1_in = xi + 1 < width;
    const bool y0_in = yi >= 0, y1_in = yi + 1 < height;
    const long long row0 = (long long)yi * width, row1 = row0 + width;
    if (y0_in && x0_in) { float4 t = sv_load_texel(atlas, row0 + xi);     out.x += t.x * w_nw; out.y += t.y * w_nw; out.z += t.z * w_nw; }
    if (y0_in && x1_in) { float4 t = sv_load_texel(atlas, row0 + xi + 1); out.x += t.x * w_ne; out.y += t.y * w_ne; out.z += t.z * w_ne; }
    if (y1_in && x0_in) { float4 t = sv_load_texel(atlas, row1 + xi);     out.x += t.x * w_sw; out.y += t.y * w_sw; out.z += t.z * w_sw; }
    if (y1_in && x1_in) { float4 t = sv_load_texel(atlas, row1 + xi + 1); out.x += t.x * w_se; out.y += t.y * w_se; out.z += t.z * w_se; }
    return out;
}
