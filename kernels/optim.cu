// optim.cu -- fused, in-place optimizer updates: Adam, SGD (momentum / Nesterov / dampening /
// weight decay) and AdaGrad. One thread per parameter element (grid-stride loop).
//
// Each kernel performs *exactly* the arithmetic of minicnn/backend/numpy_backend.py (which is
// PyTorch's order of operations), one rounding per NumPy operation:
//   * the scalar coefficients are computed on the host in double precision, as Python does
//     (e.g. 1 - beta1, lr / (1 - beta1**step), sqrt(1 - beta2**step)), and then passed as T,
//     as NumPy casts a Python float to the array's dtype;
//   * the launcher compiles this file with --fmad=false, so that  a*b + c  stays a rounded
//     multiply followed by a rounded add (NumPy never fuses them);
//   * weight decay is a branch (has_wd), not a multiply by 0, because numpy_backend skips it
//     when weight_decay == 0 (0 * inf would be NaN).
// (CuPy compiles with -ftz=true, so float32 *denormal* values are flushed to zero; this is
// the only place where results can differ from NumPy, and only far below eps.)
#include "common.cuh"

// Adam:
//   g <- g + wd p                        (if has_wd)
//   m <- m + (1 - b1) (g - m)
//   v <- v b2;   v <- v + (1 - b2) (g g)
//   p <- p - step_size (m / (sqrt(v) / bc2_sqrt + eps))
//   with step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t)
template <typename T>
__device__ __forceinline__ void adam(T* __restrict__ p, const T* __restrict__ g,
                                     T* __restrict__ m, T* __restrict__ v, long long n,
                                     T wd, int has_wd, T one_minus_beta1, T beta2,
                                     T one_minus_beta2, T bc2_sqrt, T eps, T step_size)
{
    GRID_STRIDE_LOOP(i, n) {
        const T pi = p[i];
        T gi = ldg(g + i);
        if (has_wd) gi = gi + wd * pi;
        T mi = m[i];
        mi = mi + one_minus_beta1 * (gi - mi);
        T vi = v[i] * beta2;
        vi = vi + one_minus_beta2 * (gi * gi);
        const T denom = dsqrt(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * (mi / denom);
    }
}

// SGD:
//   g <- g + wd p                                      (if has_wd)
//   buf <- g (first step)  or  buf <- buf mu; buf <- buf + (1 - dampening) g   (if momentum)
//   d <- g + mu buf (Nesterov)  or  d <- buf            (if momentum; else d <- g)
//   p <- p - lr d
// buf is not touched (may be any valid pointer) when has_momentum == 0.
template <typename T>
__device__ __forceinline__ void sgd(T* __restrict__ p, const T* __restrict__ g,
                                    T* __restrict__ buf, long long n, T lr, T wd, int has_wd,
                                    T momentum, T one_minus_dampening, int has_momentum,
                                    int nesterov, int first)
{
    GRID_STRIDE_LOOP(i, n) {
        const T pi = p[i];
        T gi = ldg(g + i);
        if (has_wd) gi = gi + wd * pi;
        if (has_momentum) {
            T b;
            if (first) {
                b = gi;
            } else {
                b = buf[i] * momentum;
                b = b + one_minus_dampening * gi;
            }
            buf[i] = b;
            gi = nesterov ? gi + momentum * b : b;
        }
        p[i] = pi - lr * gi;
    }
}

// AdaGrad:
//   g <- g + wd p                     (if has_wd)
//   s <- s + g g
//   p <- p - (clr g) / (sqrt(s) + eps)
template <typename T>
__device__ __forceinline__ void adagrad(T* __restrict__ p, const T* __restrict__ g,
                                        T* __restrict__ s, long long n, T clr, T eps, T wd,
                                        int has_wd)
{
    GRID_STRIDE_LOOP(i, n) {
        const T pi = p[i];
        T gi = ldg(g + i);
        if (has_wd) gi = gi + wd * pi;
        const T si = s[i] + gi * gi;
        s[i] = si;
        p[i] = pi - clr * gi / (dsqrt(si) + eps);
    }
}

// adam_update_<dt>(p, g, m, v, n, wd, has_wd, 1-b1, b2, 1-b2, sqrt(1-b2^t), eps, lr/(1-b1^t))
// sgd_update_<dt>(p, g, buf, n, lr, wd, has_wd, momentum, 1-dampening, has_momentum,
//                 nesterov, first)
// adagrad_update_<dt>(p, g, s, n, clr, eps, wd, has_wd)
#define OPTIM_KERNELS(T, DT)                                                                \
extern "C" __global__ void adam_update_##DT(                                                \
    T* p, const T* g, T* m, T* v, long long n, T wd, int has_wd, T one_minus_beta1,          \
    T beta2, T one_minus_beta2, T bc2_sqrt, T eps, T step_size)                              \
{ adam<T>(p, g, m, v, n, wd, has_wd, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt,     \
          eps, step_size); }                                                                 \
extern "C" __global__ void sgd_update_##DT(                                                 \
    T* p, const T* g, T* buf, long long n, T lr, T wd, int has_wd, T momentum,               \
    T one_minus_dampening, int has_momentum, int nesterov, int first)                        \
{ sgd<T>(p, g, buf, n, lr, wd, has_wd, momentum, one_minus_dampening, has_momentum,         \
         nesterov, first); }                                                                 \
extern "C" __global__ void adagrad_update_##DT(                                             \
    T* p, const T* g, T* s, long long n, T clr, T eps, T wd, int has_wd)                     \
{ adagrad<T>(p, g, s, n, clr, eps, wd, has_wd); }
INSTANTIATE_F32_F64(OPTIM_KERNELS)
