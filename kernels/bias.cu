// A convolution's bias added in place to its channels-last (N, H, W, C) fp16/bf16 output, one thread
// per 8 channels of a pixel (16-byte loads and stores). The sum is computed in float and rounded once,
// as ATen's add: the same bits. ATen adds the bias of a cuDNN convolution as a separate broadcast
// add, which its elementwise loops run without vector loads (a (1, C, 1, 1) operand is not
// contiguous with the output).
// Values are fp16 or bf16 bits in unsigned shorts (half.cuh).

#include "half.cuh"

extern "C" __global__ void __launch_bounds__(256)
    channel_bias_add(unsigned short* __restrict__ y, const unsigned short* __restrict__ bias,
                     long long vectors, int channels, int bf16) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= vectors) return;
    const int c = (int)((i * 8) % channels);
    uint4* p = reinterpret_cast<uint4*>(y) + i;
    const uint4 v = *p;
    const uint4 b = __ldg(reinterpret_cast<const uint4*>(bias + c));
    const unsigned int vs[4] = {v.x, v.y, v.z, v.w};
    const unsigned int bs[4] = {b.x, b.y, b.z, b.w};
    unsigned int o[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float lo = sv_half_load(vs[k] & 0xffffu, bf16) + sv_half_load(bs[k] & 0xffffu, bf16);
        const float hi = sv_half_load(vs[k] >> 16, bf16) + sv_half_load(bs[k] >> 16, bf16);
        o[k] = (unsigned int)sv_half_store(lo, bf16) | ((unsigned int)sv_half_store(hi, bf16) << 16);
    }
    *p = make_uint4(o[0], o[1], o[2], o[3]);
}
