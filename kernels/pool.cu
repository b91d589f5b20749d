// pool.cu -- 2-D max pooling (NCHW, no padding), forward and backward.
//
//   y[n, c, p, q]   = max_{i < kH, j < kW} x[n, c, p*sH + i, q*sW + j]
//   idx[n, c, p, q] = i*kW + j of that max (the window offset, as numpy_backend: the *first*
//                     maximum in row-major window order; a NaN counts as the maximum, the
//                     first NaN wins, like numpy.argmax)
//   Ho = (H - kH) // sH + 1,   Wo likewise
//
// idx is stored as uint8 when kH*kW <= 256 (as numpy_backend), else as int32: the kernels are
// instantiated for both index types (suffixes _u8 / _i32).
//
// Each thread decomposes its element's flat index into coordinates. The kernels the H200
// timed (NOTES entry 15) do it in 64 bits (E = long long: the GPU has no 64-bit divider, each
// division is a call to a software routine); the `_div32` kernels do it in 32 bits (E = int:
// one division and one multiply-subtract per coordinate; the launchers keep every element
// count below 2^31). Same results bit for bit; untimed (entry 17), so the launcher takes them
// only when CudaConfig's untimed set has "pool_div32".
//
// Backward is a *gather*, one thread per input pixel (n, c, h, v): it visits the outputs
// (p, q) whose window covers the pixel,
//     p*sH <= h <= p*sH + kH - 1   <=>   ceil((h - kH + 1) / sH) <= p <= floor(h / sH),
// (likewise q) and adds gy[n, c, p, q] when that window's argmax points at this pixel,
// i.e. idx == (h - p*sH)*kW + (v - q*sW). Overlapping windows (stride < kernel) therefore
// need no atomics, every gx element is written exactly once, and the result is deterministic.
// The visiting order (p descending, then q descending = window offset i ascending, then j
// ascending) is the order in which numpy_backend adds the contributions, so float results
// match it bit for bit.
#include "common.cuh"

template <typename T, typename I, typename E>
__device__ __forceinline__ void maxpool2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                                  I* __restrict__ idx, int NC, int H, int W,
                                                  int Ho, int Wo, int kH, int kW, int sH, int sW)
{
    const long long total = (long long)NC * Ho * Wo;
    GRID_STRIDE_LOOP(e, total) {
        // e = ((nc * Ho) + p) * Wo + q, decomposed in E's width
        const E ei = (E)e, t = ei / Wo;
        const int q = (int)(ei - t * Wo), nc = (int)(t / Ho), p = (int)(t - (E)nc * Ho);
        const T* win = x + ((long long)nc * H + p * sH) * W + q * sW;  // top-left of window
        T best = win[0];
        int arg = 0;
        for (int i = 0; i < kH; ++i) {
            for (int j = 0; j < kW; ++j) {
                const T v = ldg(win + i * W + j);
                // strictly greater keeps the first maximum; a NaN beats any number, and once
                // `best` is NaN nothing replaces it (NaN > v and v > NaN are both false)
                if (v > best || (is_nan(v) && !is_nan(best))) { best = v; arg = i * kW + j; }
            }
        }
        y[e] = best;
        idx[e] = (I)arg;
    }
}

template <typename T, typename I, typename E>
__device__ __forceinline__ void maxpool2d_backward(const T* __restrict__ gy,
                                                   const I* __restrict__ idx,
                                                   T* __restrict__ gx, int NC, int H, int W,
                                                   int Ho, int Wo, int kH, int kW, int sH, int sW)
{
    const long long total = (long long)NC * H * W;
    GRID_STRIDE_LOOP(e, total) {
        // e = ((nc * H) + h) * W + v, decomposed in E's width (as in the forward)
        const E ei = (E)e, t = ei / W;
        const int v = (int)(ei - t * W), nc = (int)(t / H), h = (int)(t - (E)nc * H);
        // outputs whose window covers row h: p in [p_lo, p_hi] (empty if p_lo > p_hi)
        const int p_lo = h - kH + 1 <= 0 ? 0 : ceil_div(h - kH + 1, sH);
        const int p_hi = min(h / sH, Ho - 1);
        const int q_lo = v - kW + 1 <= 0 ? 0 : ceil_div(v - kW + 1, sW);
        const int q_hi = min(v / sW, Wo - 1);
        const long long plane = (long long)nc * Ho * Wo;
        T acc = T(0);
        for (int p = p_hi; p >= p_lo; --p) {           // window row i = h - p*sH ascending
            const int i = h - p * sH;
            for (int q = q_hi; q >= q_lo; --q) {       // window col j = v - q*sW ascending
                const int j = v - q * sW;
                const long long o = plane + (long long)p * Wo + q;
                if ((int)ldg(idx + o) == i * kW + j) acc += ldg(gy + o);
            }
        }
        gx[e] = acc;
    }
}

// maxpool2d_forward_<u8|i32>_<f32|f64>[_div32](x, y, idx, NC, H, W, Ho, Wo, kH, kW, sH, sW)
// maxpool2d_backward_<u8|i32>_<f32|f64>[_div32](gy, idx, gx, NC, H, W, Ho, Wo, kH, kW, sH, sW)
#define POOL_KERNELS(T, DT, I, IT, E, SFX)                                                  \
extern "C" __global__ void maxpool2d_forward_##IT##_##DT##SFX(                              \
    const T* x, T* y, I* idx, int NC, int H, int W, int Ho, int Wo,                          \
    int kH, int kW, int sH, int sW)                                                          \
{ maxpool2d_forward<T, I, E>(x, y, idx, NC, H, W, Ho, Wo, kH, kW, sH, sW); }                \
extern "C" __global__ void maxpool2d_backward_##IT##_##DT##SFX(                             \
    const T* gy, const I* idx, T* gx, int NC, int H, int W, int Ho, int Wo,                  \
    int kH, int kW, int sH, int sW)                                                          \
{ maxpool2d_backward<T, I, E>(gy, idx, gx, NC, H, W, Ho, Wo, kH, kW, sH, sW); }

#define POOL_KERNELS_BOTH(T, DT, I, IT)                                                     \
    POOL_KERNELS(T, DT, I, IT, long long, )                                                 \
    POOL_KERNELS(T, DT, I, IT, int, _div32)

POOL_KERNELS_BOTH(float, f32, unsigned char, u8)
POOL_KERNELS_BOTH(double, f64, unsigned char, u8)
POOL_KERNELS_BOTH(float, f32, int, i32)
POOL_KERNELS_BOTH(double, f64, int, i32)
