// One NLA MLP (StableVideo's fg mapping, bg mapping or alpha network: 256 wide, ReLU, no skips) over
// every pixel (x, y, t) of a video, fully fused: the points are made from their index, the positional
// encoding, every layer and the output's tanh and affine map run in one kernel, and only the outputs
// reach memory. Layer by layer through cuBLAS, each 256-wide activation is a round trip through HBM
// (1 KB a point a layer): at 23 M points that traffic, not the FLOPs, set the time.
//
// Layout (mma.sync m16n8k16, fp16 in, fp32 accumulate): each of a block's 8 warps owns MT tiles of
// 16 points and holds their activations as the A fragments of the layer it computes, in registers.
// An m16n8 accumulator tile's C layout for columns 16j..16j+15 is exactly the A layout of k-block j,
// so a layer's output becomes the next layer's input without leaving the thread: each lane parks its
// next fragments in shared-memory slots only it reads (8 KB a tile), which frees the registers a
// second set would take. The weights stream through shared memory in stages of 64 output columns
// (8 n-tiles, all k-blocks), triple buffered with cp.async and shared by the block's warps; with two
// tiles a warp each weight fragment read feeds two mma's (on the H200 one tile a warp, or 16 warps of
// one tile, were slower). The host packs every stage in fragment order (nla_mlp.py): lane l's B
// registers of n-tiles 2i and 2i+1, k-block k sit at [k][i][l], so each warp's load is one contiguous
// 512-byte row of 16-byte words. Biases and the narrow output layer (1-2 columns, CUDA cores, fp32 weights) stay in fp32.

#include "half.cuh"

#define WIDTH 256                                    // hidden width
#define HIDDEN_KB (WIDTH / 16)                       // k-blocks of a hidden layer
#define STAGE_NT 8                                   // n-tiles per stage: 64 output columns
#define STAGES_PER_LAYER (WIDTH / 8 / STAGE_NT)      // 4
#define HIDDEN_STAGE_U2 (HIDDEN_KB * STAGE_NT * 32)  // uint2 words of a hidden stage (32 KB)
#define MAX_OUT 2
#define STAGE_BUFFERS 3
#define NEXT_U4 (HIDDEN_KB * 32)                     // a warp's parked fragments: uint4 words (8 KB)

__device__ __forceinline__ unsigned sv_pack_half2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));  // first operand -> upper half
    return r;
}

__device__ __forceinline__ void sv_mma(float (&c)[4], const unsigned (&a)[4], uint2 b) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
}

__device__ __forceinline__ void sv_cp_async16(void* dst, const void* src) {
    unsigned addr;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(addr) : "l"(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(addr), "l"(src) : "memory");
}

__device__ __forceinline__ void sv_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void sv_cp_wait_prior() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

// Stage s of the weights (the same for every tile): stages 0-3 are layer 0's (KB0 k-blocks each),
// then 4 per hidden layer.
template <int KB0, int THREADS>
__device__ __forceinline__ void sv_copy_stage(uint2* dst, const uint2* __restrict__ weights, int stage) {
    const int first = KB0 * STAGE_NT * 32;
    const uint2* src;
    int count;
    if (stage < STAGES_PER_LAYER) {
        src = weights + stage * first;
        count = first;
    } else {
        src = weights + STAGES_PER_LAYER * first + (long long)(stage - STAGES_PER_LAYER) * HIDDEN_STAGE_U2;
        count = HIDDEN_STAGE_U2;
    }
    for (int i = threadIdx.x * 2; i < count; i += THREADS * 2) sv_cp_async16(dst + i, src + i);
}

// Starts stage `stage` of this tile: waits until its weights are in buffer q % 3 for every thread,
// then queues the copy of the stage two ahead (into the next tile's first stages near the end). Three
// buffers let one barrier a stage do: the buffer refilled was last read in stage q - 1, which every
// warp has finished once it passes this stage's barrier.
template <int KB0, int THREADS>
__device__ __forceinline__ const uint2* sv_begin_stage(uint2* smem, const uint2* __restrict__ weights, int stage,
                                                       int stages, bool next_tile, int q) {
    sv_cp_wait_prior();
    __syncthreads();
    uint2* ahead = smem + ((q + 2) % STAGE_BUFFERS) * HIDDEN_STAGE_U2;
    if (stage + 2 < stages) {
        sv_copy_stage<KB0, THREADS>(ahead, weights, stage + 2);
    } else if (next_tile) {
        sv_copy_stage<KB0, THREADS>(ahead, weights, stage + 2 - stages);
    }
    sv_cp_commit();  // an empty group where nothing was queued keeps wait_group's count right
    return smem + (q % STAGE_BUFFERS) * HIDDEN_STAGE_U2;
}

// One stage for MT m-tiles of 16 points: 64 output columns (n-tiles 8c..8c+7) of a layer with KB
// k-blocks, bias added, ReLU, rounded into the next layer's A fragments (k-blocks 4c..4c+3), parked in
// this lane's slots of `next` ([m-tile][k-block][lane]). Each B fragment read from shared memory feeds
// MT mma's.
template <int KB, int MT>
__device__ __forceinline__ void sv_stage(const unsigned (&a)[MT][KB][4], const uint2* b,
                                         const float* __restrict__ bias, int c, int lane, uint4* next) {
    const int t = lane & 3;
    float acc[MT][STAGE_NT][4];
#pragma unroll
    for (int j = 0; j < STAGE_NT; ++j) {
        const int col = c * 64 + j * 8 + t * 2;
        const float b0 = __ldg(bias + col), b1 = __ldg(bias + col + 1);
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[m][j][0] = acc[m][j][2] = b0, acc[m][j][1] = acc[m][j][3] = b1;
    }
    const uint4* pairs = reinterpret_cast<const uint4*>(b);  // n-tiles 2i and 2i + 1 in one 16-byte load
#pragma unroll
    for (int k = 0; k < KB; ++k) {
#pragma unroll
        for (int i = 0; i < STAGE_NT / 2; ++i) {
            const uint4 w = pairs[(k * (STAGE_NT / 2) + i) * 32 + lane];
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                sv_mma(acc[m][2 * i], a[m][k], make_uint2(w.x, w.y));
                sv_mma(acc[m][2 * i + 1], a[m][k], make_uint2(w.z, w.w));
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int j = 0; j < STAGE_NT / 2; ++j) {
            const float* lo = acc[m][2 * j];
            const float* hi = acc[m][2 * j + 1];
            next[(m * HIDDEN_KB + c * (STAGE_NT / 2) + j) * 32 + lane] =
                make_uint4(sv_pack_half2(fmaxf(lo[0], 0.f), fmaxf(lo[1], 0.f)),   // row g, columns 2t, 2t+1
                           sv_pack_half2(fmaxf(lo[2], 0.f), fmaxf(lo[3], 0.f)),   // row g + 8
                           sv_pack_half2(fmaxf(hi[0], 0.f), fmaxf(hi[1], 0.f)),   // row g, columns 8 + 2t, 9 + 2t
                           sv_pack_half2(fmaxf(hi[2], 0.f), fmaxf(hi[3], 0.f)));  // row g + 8
        }
    }
}

// Feature j of a point: (x, y, t) itself, or NLA's encoding: for frequency f = j / 6, sin of x, y, t
// then cos of x, y, t, at (2^f)·π.
__device__ __forceinline__ float sv_pick(const float (&xyt)[3], int c) {
    return c == 0 ? xyt[0] : (c == 1 ? xyt[1] : xyt[2]);  // selects: a runtime index would spill xyt
}

__device__ __forceinline__ float sv_feature(const float (&xyt)[3], int j, int freqs) {
    if (freqs == 0) return j < 3 ? sv_pick(xyt, j) : 0.f;
    if (j >= 6 * freqs) return 0.f;
    const int f = j / 6, c = j - 6 * f;
    const float freq = (float)(1 << f) * 3.14159265358979323846f;  // = fp32 of 2^f·π: scaling by 2^f is exact
    const float v = sv_pick(xyt, c < 3 ? c : c - 3) * freq;
    return c < 3 ? sinf(v) : cosf(v);
}

__device__ __forceinline__ void sv_point(long long p, int width, int height, int frames, float (&xyt)[3]) {
    const long long plane = (long long)width * height;
    const long long frame = p / plane;
    const long long pixel = p - frame * plane;
    const float half = (float)max(width, height) * 0.5f;
    xyt[0] = (float)(pixel % width) / half - 1.f;
    xyt[1] = (float)(pixel / width) / half - 1.f;
    xyt[2] = (float)frame / (0.5f * (float)frames) - 1.f;
}

template <int MT>
__device__ __forceinline__ void sv_take(unsigned (&a)[MT][HIDDEN_KB][4], const uint4* next, int lane) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int k = 0; k < HIDDEN_KB; ++k) {
            const uint4 v = next[(m * HIDDEN_KB + k) * 32 + lane];
            a[m][k][0] = v.x, a[m][k][1] = v.y, a[m][k][2] = v.z, a[m][k][3] = v.w;
        }
    }
}

template <int KB0, int WARPS, int MT>
__device__ __forceinline__ void sv_mlp_field(const uint2* __restrict__ weights, const float* __restrict__ biases,
                                             int hidden_layers, const float* __restrict__ out_weight,
                                             const float* __restrict__ out_bias, int outputs, float out_scale,
                                             float out_offset, int freqs, int width, int height, int frames,
                                             long long n, float* __restrict__ out) {
    constexpr int THREADS = WARPS * 32, ROWS = WARPS * MT * 16;  // ROWS: points per block iteration
    extern __shared__ uint2 smem[];  // two weight stages, then each warp's parked fragments
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    uint4* next = reinterpret_cast<uint4*>(smem + STAGE_BUFFERS * HIDDEN_STAGE_U2) + warp * MT * NEXT_U4;
    const long long tiles = (n + ROWS - 1) / ROWS;
    const int stages = STAGES_PER_LAYER * (1 + hidden_layers);
    int q = 0;
    for (int stage = 0; stage < 2; ++stage) {  // the first two stages in flight (a tile has at least 4)
        if (blockIdx.x < tiles) sv_copy_stage<KB0, THREADS>(smem + stage * HIDDEN_STAGE_U2, weights, stage);
        sv_cp_commit();
    }
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const bool next_tile = tile + gridDim.x < tiles;
        const long long row0 = tile * ROWS + warp * MT * 16 + g;  // m-tile m: rows row0 + 16m (+ 8)
        unsigned a0[MT][KB0][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            float p0[3], p1[3];
            sv_point(min(row0 + 16 * m, n - 1), width, height, frames, p0);
            sv_point(min(row0 + 16 * m + 8, n - 1), width, height, frames, p1);
#pragma unroll
            for (int k = 0; k < KB0; ++k) {
                const int j = k * 16 + t * 2;
                a0[m][k][0] = sv_pack_half2(sv_feature(p0, j, freqs), sv_feature(p0, j + 1, freqs));
                a0[m][k][1] = sv_pack_half2(sv_feature(p1, j, freqs), sv_feature(p1, j + 1, freqs));
                a0[m][k][2] = sv_pack_half2(sv_feature(p0, j + 8, freqs), sv_feature(p0, j + 9, freqs));
                a0[m][k][3] = sv_pack_half2(sv_feature(p1, j + 8, freqs), sv_feature(p1, j + 9, freqs));
            }
        }
        unsigned a[MT][HIDDEN_KB][4];
#pragma unroll
        for (int c = 0; c < STAGES_PER_LAYER; ++c) {
            const uint2* b = sv_begin_stage<KB0, THREADS>(smem, weights, c, stages, next_tile, q++);
            sv_stage<KB0, MT>(a0, b, biases, c, lane, next);
        }
        sv_take<MT>(a, next, lane);  // a lane reads back only its own slots: program order suffices
        for (int layer = 0; layer < hidden_layers; ++layer) {
#pragma unroll
            for (int c = 0; c < STAGES_PER_LAYER; ++c) {
                const int stage = STAGES_PER_LAYER * (1 + layer) + c;
                const uint2* b = sv_begin_stage<KB0, THREADS>(smem, weights, stage, stages, next_tile, q++);
                sv_stage<HIDDEN_KB, MT>(a, b, biases + (1 + layer) * WIDTH, c, lane, next);
            }
            sv_take<MT>(a, next, lane);
        }
        // The output layer on the CUDA cores: each lane holds 64 of a row's 256 activations; the four
        // lanes of a row group add their partial sums.
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            float sum[MAX_OUT][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
            for (int k = 0; k < HIDDEN_KB; ++k) {
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int col = k * 16 + t * 2 + (r >> 1) * 8;
                    const float h0 = sv_half_load(a[m][k][r] & 0xffffu, 0), h1 = sv_half_load(a[m][k][r] >> 16, 0);
#pragma unroll
                    for (int o = 0; o < MAX_OUT; ++o) {
                        if (o < outputs) {
                            sum[o][r & 1] += h0 * __ldg(out_weight + o * WIDTH + col) +
                                             h1 * __ldg(out_weight + o * WIDTH + col + 1);
                        }
                    }
                }
            }
#pragma unroll
            for (int o = 0; o < MAX_OUT; ++o) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    sum[o][r] += __shfl_xor_sync(0xffffffffu, sum[o][r], 1);
                    sum[o][r] += __shfl_xor_sync(0xffffffffu, sum[o][r], 2);
                }
            }
            if (t == 0) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const long long p = row0 + 16 * m + r * 8;
                    if (p < n) {
#pragma unroll
                        for (int o = 0; o < MAX_OUT; ++o) {
                            if (o < outputs) {
                                out[p * outputs + o] =
                                    out_scale * tanhf(sum[o][r] + __ldg(out_bias + o)) + out_offset;
                            }
                        }
                    }
                }
            }
        }
    }
}

// Layer 0 takes (x, y, t) (one k-block, zero padded) or NLA's encoding of up to 5 frequencies (two).
// 8 warps a block, each with MT m-tiles: 2 where the SM's shared memory holds the 224 KB (Hopper),
// else 1 (160 KB).
#define SV_NLA_KERNEL(NAME, KB0, MT)                                                                              \
    extern "C" __global__ void __launch_bounds__(256, 1)                                                           \
        NAME(const uint2* __restrict__ weights, const float* __restrict__ biases, int hidden_layers,             \
             const float* __restrict__ out_weight, const float* __restrict__ out_bias, int outputs,              \
             float out_scale, float out_offset, int freqs, int width, int height, int frames, long long n,       \
             float* __restrict__ out) {                                                                          \
        sv_mlp_field<KB0, 8, MT>(weights, biases, hidden_layers, out_weight, out_bias, outputs, out_scale,       \
                                 out_offset, freqs, width, height, frames, n, out);                              \
    }

SV_NLA_KERNEL(nla_mlp_k16_m2, 1, 2)
SV_NLA_KERNEL(nla_mlp_k32_m2, 2, 2)
SV_NLA_KERNEL(nla_mlp_k16_m1, 1, 1)
SV_NLA_KERNEL(nla_mlp_k32_m1, 2, 1)
