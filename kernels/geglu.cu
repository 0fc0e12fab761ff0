// GEGLU: out = value * GELU(gate) (erf form) for the rows of a (rows, 2 * inner) projection whose
// first half is the value and second half the gate; one thread per 8 outputs (16-byte loads and
// stores), computed in float and rounded once. Unfused, torch reads the two halves as strided views
// (its generic, unvectorised loops), writes GELU(gate), then reads it back for the product.
// Values are fp16 or bf16 bits in unsigned shorts (half.cuh).

#include "half.cuh"

extern "C" __global__ void __launch_bounds__(256)
    geglu(const unsigned short* __restrict__ projected, long long vectors, int inner, int bf16,
          unsigned short* __restrict__ out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= vectors) return;
    const int per_row = inner / 8;
    const long long row = i / per_row;
    const int col = (int)(i - row * per_row) * 8;
    const unsigned short* base = projected + row * 2 * inner + col;
    const uint4 value = __ldg(reinterpret_cast<const uint4*>(base));
    const uint4 gate = __ldg(reinterpret_cast<const uint4*>(base + inner));
    const unsigned int v[4] = {value.x, value.y, value.z, value.w};
    const unsigned int g[4] = {gate.x, gate.y, gate.z, gate.w};
    unsigned int o[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float g0 = sv_half_load(g[k] & 0xffffu, bf16), g1 = sv_half_load(g[k] >> 16, bf16);
        const float r0 = sv_half_load(v[k] & 0xffffu, bf16) * (0.5f * g0 * (1.f + erff(g0 * 0.70710678118654752f)));
        const float r1 = sv_half_load(v[k] >> 16, bf16) * (0.5f * g1 * (1.f + erff(g1 * 0.70710678118654752f)));
        o[k] = (unsigned int)sv_half_store(r0, bf16) | ((unsigned int)sv_half_store(r1, bf16) << 16);
    }
    reinterpret_cast<uint4*>(out + row * inner + col)[0] = make_uint4(o[0], o[1], o[2], o[3]);
}
