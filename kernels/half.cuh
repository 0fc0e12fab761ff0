// fp16 / bf16 <-> float for kernels that take either (``bf16`` says which), as 16-bit words: NVRTC
// compiles without the CUDA headers, so the conversions are PTX.
#pragma once

__device__ __forceinline__ float sv_half_load(unsigned short v, int bf16) {
    if (bf16) return __uint_as_float(((unsigned int)v) << 16);
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
}

__device__ __forceinline__ unsigned short sv_half_store(float f, int bf16) {
    unsigned short h;
    if (bf16) {
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    } else {
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    }
    return h;
}
