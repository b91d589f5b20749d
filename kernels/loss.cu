// loss.cu -- fused softmax cross-entropy over the class axis, forward and backward.
//
// Logits x have shape (N, C, *rest); S = prod(rest) (1 for (N, C) logits). Viewed as
// (N, C, S), element (n, c, s) is at  (n*C + c)*S + s, and a "position" is (n, s) with flat
// index n*S + s (the layout of the targets t, shape (N, *rest), int64).
//
// forward, one thread per position (the C values of one position are S apart in memory, so
// neighbouring threads -- neighbouring s -- read neighbouring addresses):
//     m    = max_c x[c]                        (NaN propagates, as numpy's max)
//     s    = sum_c exp(x[c] - m)
//     loss = -w[t] * ((x[t] - m) - log s)      the stable log-softmax, as numpy_backend
//     wt   = w[t]          (1 without class weights)
//     p[c] = exp(x[c] - m) / s
//   A target outside [0, C) is never used as an index: the position gets NaN loss and wt and
//   the kernel sets *bad = 1, which the launcher turns into a ValueError.
//
// backward, one thread per element (n, c, s):
//     gx = (p - [c == t]) * (g * w[t])         numpy_backend's order: p.copy(), p[t] - 1,
//                                              times scale = g * w[t]
//   g is read at g[pos * g_step]: g_step = 1 for a dense (N, *rest) gradient, 0 when the
//   upstream gradient is one value broadcast to every position (mean / sum reductions), so
//   that case needs no materialised broadcast.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void sce_forward(const T* __restrict__ x, const long long* __restrict__ t,
                                            const T* __restrict__ w, int has_w,
                                            T* __restrict__ loss, T* __restrict__ wt,
                                            T* __restrict__ p, int* __restrict__ bad,
                                            int N, int C, int S)
{
    const long long positions = (long long)N * S;
    GRID_STRIDE_LOOP(e, positions) {
        const long long n = e / S, s = e - n * S;
        const long long base = n * C * S + s;          // element (n, 0, s); class c at + c*S
        const T* xr = x + base;
        T m = ldg(xr);
        for (int c = 1; c < C; ++c) {
            const T v = ldg(xr + (long long)c * S);
            if (v > m || (is_nan(v) && !is_nan(m))) m = v;
        }
        T sum = T(0);
        for (int c = 0; c < C; ++c) sum += dexp(ldg(xr + (long long)c * S) - m);
        const long long tt = ldg(t + e);
        if (tt < 0 || tt >= C) {
            *bad = 1;                                  // every writer writes 1: no race issue
            loss[e] = quiet_nan<T>();
            wt[e] = quiet_nan<T>();
        } else {
            const T w_t = has_w ? ldg(w + tt) : T(1);
            const T logp_t = (ldg(xr + tt * S) - m) - dlog(sum);
            loss[e] = -w_t * logp_t;
            wt[e] = w_t;
        }
        T* pr = p + base;
        for (int c = 0; c < C; ++c) {
            const long long o = (long long)c * S;
            pr[o] = dexp(ldg(xr + o) - m) / sum;
        }
    }
}

template <typename T>
__device__ __forceinline__ void sce_backward(const T* __restrict__ p, const long long* __restrict__ t,
                                             const T* __restrict__ w, int has_w,
                                             const T* __restrict__ g, int g_step,
                                             T* __restrict__ gx, int N, int C, int S)
{
    const long long total = (long long)N * C * S;
    GRID_STRIDE_LOOP(e, total) {
        const long long s = e % S, nc = e / S;         // e = (n*C + c)*S + s
        const int c = (int)(nc % C);
        const long long n = nc / C;
        const long long pos = n * S + s;
        const long long tt = ldg(t + pos);
        if (tt < 0 || tt >= C) { gx[e] = quiet_nan<T>(); continue; }
        T scale = ldg(g + pos * g_step);
        if (has_w) scale = scale * ldg(w + tt);
        const T pe = ldg(p + e);
        const T d = (c == tt) ? pe - T(1) : pe;
        gx[e] = d * scale;
    }
}

// softmax_xent_forward_<dt>(x, t, w, has_w, loss, wt, p, bad, N, C, S)
// softmax_xent_backward_<dt>(p, t, w, has_w, g, g_step, gx, N, C, S)
// (w must point to valid memory even when has_w == 0; it is then never read)
#define SCE_KERNELS(T, DT)                                                                  \
extern "C" __global__ void softmax_xent_forward_##DT(                                       \
    const T* x, const long long* t, const T* w, int has_w, T* loss, T* wt, T* p, int* bad,   \
    int N, int C, int S)                                                                     \
{ sce_forward<T>(x, t, w, has_w, loss, wt, p, bad, N, C, S); }                              \
extern "C" __global__ void softmax_xent_backward_##DT(                                      \
    const T* p, const long long* t, const T* w, int has_w, const T* g, int g_step, T* gx,    \
    int N, int C, int S)                                                                     \
{ sce_backward<T>(p, t, w, has_w, g, g_step, gx, N, C, S); }
INSTANTIATE_F32_F64(SCE_KERNELS)
