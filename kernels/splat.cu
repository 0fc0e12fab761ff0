// Splat an edited keyframe into atlas space: linear interpolation over the keyframe's pixel-grid
// triangles, evaluated at the integer atlas points (x, y) (griddata(method="linear") on a regular
// grid). Deterministic in two passes and no float atomics:
//   1. raster: one thread per triangle walks its bounding box and atomicMin()s its triangle id into
//      every atlas point it covers (winner buffer pre-filled with 0xFFFFFFFF). atomicMin is
//      order-independent, so the lowest covering triangle id wins wherever triangles overlap.
//   2. resolve: one thread per atlas point recomputes the winner's barycentrics and interpolates
//      all channels; uncovered points get 0 and coverage 0.
// Triangles: quad q = i * (w - 1) + j has corners p00 = (i, j), p01 = (i, j + 1), p10, p11 and is
// split along p00-p11 into triangle 2q = (p00, p01, p11) and 2q + 1 = (p00, p11, p10).
// Barycentrics are computed in fp64 and this file is compiled with --fmad=false, so every value
// is rounded exactly like the torch reference's separate float64 operations: coverage is identical.
#define SV_NO_TRIANGLE 0xffffffffu
#define SV_BARY_EPS 1e-9  // points this close (in barycentric units) to an edge count as inside

struct SvBary {
    double wa, wb, wc;
    bool inside;
};

__device__ __forceinline__ void sv_triangle_vertices(unsigned int tri, int w, long long v[3]) {
    const long long q = tri >> 1;
    const long long i = q / (w - 1), j = q - i * (w - 1);
    const long long p00 = i * w + j, p01 = p00 + 1, p10 = p00 + w, p11 = p10 + 1;
    v[0] = p00;
    v[1] = (tri & 1u) ? p11 : p01;
    v[2] = (tri & 1u) ? p10 : p11;
}

__device__ __forceinline__ SvBary sv_barycentric(double ax, double ay, double bx, double by,
                                                 double cx, double cy, double px, double py) {
    const double e1x = bx - ax, e1y = by - ay, e2x = cx - ax, e2y = cy - ay;
    const double d = e1x * e2y - e2x * e1y;
    const double qx = px - ax, qy = py - ay;
    SvBary r;
    r.wb = (qx * e2y - e2x * qy) / d;
    r.wc = (e1x * qy - qx * e1y) / d;
    r.wa = 1.0 - r.wb - r.wc;
    // d == 0 (degenerate) gives inf/NaN weights, which fail these tests.
    r.inside = d != 0.0 && r.wa >= -SV_BARY_EPS && r.wb >= -SV_BARY_EPS && r.wc >= -SV_BARY_EPS;
    return r;
}

extern "C" __global__ void __launch_bounds__(256)
splat_raster(const float2* __restrict__ points, int h, int w, int atlas_h, int atlas_w,
             unsigned int* __restrict__ winner) {
    const long long n_tri = 2LL * (h - 1) * (w - 1);
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_tri) return;
    long long v[3];
    sv_triangle_vertices((unsigned int)t, w, v);
    const float2 a = __ldg(points + v[0]), b = __ldg(points + v[1]), c = __ldg(points + v[2]);
    if (!(isfinite(a.x) && isfinite(a.y) && isfinite(b.x) && isfinite(b.y) && isfinite(c.x) &&
          isfinite(c.y)))
        return;  // a NaN/inf vertex marks an invalid pixel: its triangles cover nothing
    const double lo_x = fmin(fmin((double)a.x, (double)b.x), (double)c.x);
    const double hi_x = fmax(fmax((double)a.x, (double)b.x), (double)c.x);
    const double lo_y = fmin(fmin((double)a.y, (double)b.y), (double)c.y);
    const double hi_y = fmax(fmax((double)a.y, (double)b.y), (double)c.y);
    // Integer points of the bounding box, clipped to the atlas (both ends clamped so that the int
    // conversions stay defined for far-off vertices).
    const int x0 = (int)fmin(fmax(ceil(lo_x), 0.0), (double)atlas_w);
    const int x1 = (int)fmax(fmin(floor(hi_x), (double)(atlas_w - 1)), -1.0);
    const int y0 = (int)fmin(fmax(ceil(lo_y), 0.0), (double)atlas_h);
    const int y1 = (int)fmax(fmin(floor(hi_y), (double)(atlas_h - 1)), -1.0);
    for (int y = y0; y <= y1; ++y) {
        for (int x = x0; x <= x1; ++x) {
            const SvBary r = sv_barycentric(a.x, a.y, b.x, b.y, c.x, c.y, x, y);
            if (r.inside) atomicMin(winner + (long long)y * atlas_w + x, (unsigned int)t);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
splat_resolve(const float2* __restrict__ points, const float* __restrict__ values, int channels,
              int h, int w, int atlas_h, int atlas_w, const unsigned int* __restrict__ winner,
              float* __restrict__ atlas, unsigned char* __restrict__ coverage) {
    const long long n = (long long)atlas_h * atlas_w;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned int t = winner[i];
    if (t == SV_NO_TRIANGLE) {
        coverage[i] = 0;
        for (int ch = 0; ch < channels; ++ch) atlas[ch * n + i] = 0.f;
        return;
    }
    long long v[3];
    sv_triangle_vertices(t, w, v);
    const float2 a = __ldg(points + v[0]), b = __ldg(points + v[1]), c = __ldg(points + v[2]);
    const long long y = i / atlas_w, x = i - y * atlas_w;
    const SvBary r = sv_barycentric(a.x, a.y, b.x, b.y, c.x, c.y, (double)x, (double)y);
    const long long plane = (long long)h * w;
    coverage[i] = 1;
    for (int ch = 0; ch < channels; ++ch) {
        const float* val = values + ch * plane;
        const double s = r.wa * (double)__ldg(val + v[0]) + r.wb * (double)__ldg(val + v[1]) +
                         r.wc * (double)__ldg(val + v[2]);
        atlas[ch * n + i] = (float)s;
    }
}
