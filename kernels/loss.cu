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
// With reduce = 1 (reduction "sum" or "mean") the per-position loss and wt are not stored:
// each thread adds up its positions' loss, wt and bad flag (in its grid-stride order), the
// block adds its 256 threads' sums by a fixed tree in shared memory and stores them in
// partial[3 * block + {0, 1, 2}], and softmax_xent_reduce (one block) adds the partial sums
// of the blocks the same way: out = (sum loss, or sum loss / sum wt for the mean; sum wt;
// number of bad targets). Both orders depend on the grid only, which the launcher fixes from
// N*S: the result is the same at every run.
//
// backward, one thread per element (n, c, s):
//     gx = (p - [c == t]) * (g * w[t])         numpy_backend's order: p.copy(), p[t] - 1,
//                                              times scale = g * w[t]
//   g is read at g[pos * g_step]: g_step = 1 for a dense (N, *rest) gradient, 0 when the
//   upstream gradient is one value broadcast to every position (mean / sum reductions), so
//   that case needs no materialised broadcast.
#include "common.cuh"

constexpr int SCE_THREADS = 256;        // the launcher's block size (the reductions' trees)

// s[0..SCE_THREADS) summed into s[0] by a fixed tree (every thread of the block calls it)
template <typename T>
__device__ __forceinline__ void block_sum(T* s)
{
    for (int half = SCE_THREADS / 2; half > 0; half /= 2) {
        __syncthreads();
        if ((int)threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
    }
    __syncthreads();
}

template <typename T>
__device__ __forceinline__ void sce_forward(const T* __restrict__ x, const long long* __restrict__ t,
                                            const T* __restrict__ w, int has_w,
                                            T* __restrict__ loss, T* __restrict__ wt,
                                            T* __restrict__ p, int* __restrict__ bad,
                                            T* __restrict__ partial, int reduce,
                                            int N, int C, int S)
{
    const long long positions = (long long)N * S;
    T sum_loss = T(0), sum_w = T(0), n_bad = T(0);     // this thread's positions (reduce)
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
        T l, w_t;
        if (tt < 0 || tt >= C) {
            if (!reduce) *bad = 1;                     // every writer writes 1: no race issue
            n_bad += T(1);
            l = w_t = quiet_nan<T>();
        } else {
            w_t = has_w ? ldg(w + tt) : T(1);
            const T logp_t = (ldg(xr + tt * S) - m) - dlog(sum);
            l = -w_t * logp_t;
        }
        if (reduce) {
            sum_loss += l;
            sum_w += w_t;
        } else {
            loss[e] = l;
            wt[e] = w_t;
        }
        T* pr = p + base;
        for (int c = 0; c < C; ++c) {
            const long long o = (long long)c * S;
            pr[o] = dexp(ldg(xr + o) - m) / sum;
        }
    }
    if (reduce) {                                      // the block's three sums
        __shared__ T sh[3][SCE_THREADS];
        sh[0][threadIdx.x] = sum_loss;
        sh[1][threadIdx.x] = sum_w;
        sh[2][threadIdx.x] = n_bad;
        for (int k = 0; k < 3; ++k) block_sum(sh[k]);
        if (threadIdx.x < 3) partial[3 * blockIdx.x + threadIdx.x] = sh[threadIdx.x][0];
    }
}

// one block: out[0] = sum of the blocks' loss sums (divided by out[1] when mean), out[1] =
// sum of their weight sums, out[2] = number of bad targets
template <typename T>
__device__ __forceinline__ void sce_reduce(const T* __restrict__ partial, int blocks, int mean,
                                           T* __restrict__ out)
{
    __shared__ T sh[3][SCE_THREADS];
    for (int k = 0; k < 3; ++k) {
        T s = T(0);
        for (int b = threadIdx.x; b < blocks; b += SCE_THREADS) s += partial[3 * b + k];
        sh[k][threadIdx.x] = s;
        block_sum(sh[k]);
    }
    if (threadIdx.x == 0) {
        out[0] = mean ? sh[0][0] / sh[1][0] : sh[0][0];
        out[1] = sh[1][0];
        out[2] = sh[2][0];
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

// softmax_xent_forward_<dt>(x, t, w, has_w, loss, wt, p, bad, partial, reduce, N, C, S)
//   (SCE_THREADS threads per block; reduce = 0: loss, wt and bad written, partial unused;
//    reduce = 1: partial (3 per block) written, loss, wt and bad unused)
// softmax_xent_reduce_<dt>(partial, blocks, mean, out)       (one block of SCE_THREADS)
// softmax_xent_backward_<dt>(p, t, w, has_w, g, g_step, gx, N, C, S)
// (unused pointers, and w when has_w == 0, must point to valid memory; they are never read)
#define SCE_KERNELS(T, DT)                                                                  \
extern "C" __global__ void softmax_xent_forward_##DT(                                       \
    const T* x, const long long* t, const T* w, int has_w, T* loss, T* wt, T* p, int* bad,   \
    T* partial, int reduce, int N, int C, int S)                                             \
{ sce_forward<T>(x, t, w, has_w, loss, wt, p, bad, partial, reduce, N, C, S); }            \
extern "C" __global__ void softmax_xent_reduce_##DT(const T* partial, int blocks, int mean, \
                                                    T* out)                                 \
{ sce_reduce<T>(partial, blocks, mean, out); }                                             \
extern "C" __global__ void softmax_xent_backward_##DT(                                      \
    const T* p, const long long* t, const T* w, int has_w, const T* g, int g_step, T* gx,    \
    int N, int C, int S)                                                                     \
{ sce_backward<T>(p, t, w, has_w, g, g_step, gx, N, C, S); }
INSTANTIATE_F32_F64(SCE_KERNELS)
