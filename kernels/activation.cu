// activation.cu -- ReLU forward and backward, element-wise over any (contiguous) shape.
//
//   relu_forward:   y  = max(x, 0)        exactly numpy.maximum(x, 0): NaN stays NaN and
//                                         -0.0 becomes +0.0 (x > 0 is false for -0.0)
//   relu_backward:  gx = gy * [y > 0]     the mask is multiplied, not selected, exactly as
//                                         numpy_backend (so gy = inf/NaN where y <= 0 gives NaN)
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void relu_forward(const T* __restrict__ x, T* __restrict__ y,
                                             long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        const T v = ldg(x + i);
        y[i] = (v > T(0) || is_nan(v)) ? v : T(0);
    }
}

template <typename T>
__device__ __forceinline__ void relu_backward(const T* __restrict__ gy, const T* __restrict__ y,
                                              T* __restrict__ gx, long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        gx[i] = ldg(gy + i) * (ldg(y + i) > T(0) ? T(1) : T(0));
    }
}

// relu_forward_<dt>(x, y, n)      relu_backward_<dt>(gy, y, gx, n)
#define RELU_KERNELS(T, DT)                                                                 \
extern "C" __global__ void relu_forward_##DT(const T* x, T* y, long long n)                 \
{ relu_forward<T>(x, y, n); }                                                               \
extern "C" __global__ void relu_backward_##DT(const T* gy, const T* y, T* gx, long long n)  \
{ relu_backward<T>(gy, y, gx, n); }
INSTANTIATE_F32_F64(RELU_KERNELS)
