// activation.cu -- ReLU forward and backward, element-wise over any (contiguous) shape.
//
//   relu_forward:   y  = max(x, 0)        exactly numpy.maximum(x, 0): NaN stays NaN and
//                                         -0.0 becomes +0.0 (x > 0 is false for -0.0)
//   relu_backward:  gx = gy * [y > 0]     the mask is multiplied, not selected, exactly as
//                                         numpy_backend (so gy = inf/NaN where y <= 0 gives NaN)
//
// Two versions of each: one element per loop step (any pointers), and `_vec`, 16 bytes per
// load and store (4 floats or 2 doubles, one 128-bit memory instruction each, so a warp moves
// 512 contiguous bytes at a time), for pointers that the launcher has checked are 16-byte
// aligned; its first threads also do the n % (16 / sizeof(T)) elements after the last
// whole vector. Both compute each element with the same expression.
#include "common.cuh"

// relu1: common.cuh
template <typename T>
__device__ __forceinline__ T relu_grad1(T gy, T y) { return gy * (y > T(0) ? T(1) : T(0)); }

// 16 bytes of T, aligned so that a copy of one is a single vector load or store.
template <typename T>
struct alignas(16) Pack16 { T e[16 / sizeof(T)]; };

template <typename T>
__device__ __forceinline__ void relu_forward(const T* __restrict__ x, T* __restrict__ y,
                                             long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = relu1(ldg(x + i));
    }
}

template <typename T>
__device__ __forceinline__ void relu_backward(const T* __restrict__ gy, const T* __restrict__ y,
                                              T* __restrict__ gx, long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        gx[i] = relu_grad1(ldg(gy + i), ldg(y + i));
    }
}

template <typename T>
__device__ __forceinline__ void relu_forward_vec(const T* __restrict__ x, T* __restrict__ y,
                                                 long long n)
{
    constexpr int W = 16 / sizeof(T);
    const long long nv = n / W;                                  // whole vectors
    const Pack16<T>* __restrict__ xv = reinterpret_cast<const Pack16<T>*>(x);
    Pack16<T>* __restrict__ yv = reinterpret_cast<Pack16<T>*>(y);
    GRID_STRIDE_LOOP(i, nv) {
        Pack16<T> v = xv[i];
#pragma unroll
        for (int j = 0; j < W; ++j) v.e[j] = relu1(v.e[j]);
        yv[i] = v;
    }
    GRID_STRIDE_LOOP(i, n - nv * W) {                            // the tail
        y[nv * W + i] = relu1(ldg(x + nv * W + i));
    }
}

template <typename T>
__device__ __forceinline__ void relu_backward_vec(const T* __restrict__ gy,
                                                  const T* __restrict__ y,
                                                  T* __restrict__ gx, long long n)
{
    constexpr int W = 16 / sizeof(T);
    const long long nv = n / W;
    const Pack16<T>* __restrict__ gyv = reinterpret_cast<const Pack16<T>*>(gy);
    const Pack16<T>* __restrict__ yv = reinterpret_cast<const Pack16<T>*>(y);
    Pack16<T>* __restrict__ gxv = reinterpret_cast<Pack16<T>*>(gx);
    GRID_STRIDE_LOOP(i, nv) {
        const Pack16<T> g = gyv[i], m = yv[i];
        Pack16<T> out;
#pragma unroll
        for (int j = 0; j < W; ++j) out.e[j] = relu_grad1(g.e[j], m.e[j]);
        gxv[i] = out;
    }
    GRID_STRIDE_LOOP(i, n - nv * W) {
        const long long k = nv * W + i;
        gx[k] = relu_grad1(ldg(gy + k), ldg(y + k));
    }
}

// relu_forward_<dt>(x, y, n)      relu_backward_<dt>(gy, y, gx, n)
// relu_forward_vec_<dt>(x, y, n)  relu_backward_vec_<dt>(gy, y, gx, n)   (16-byte aligned)
#define RELU_KERNELS(T, DT)                                                                 \
extern "C" __global__ void relu_forward_##DT(const T* x, T* y, long long n)                 \
{ relu_forward<T>(x, y, n); }                                                               \
extern "C" __global__ void relu_backward_##DT(const T* gy, const T* y, T* gx, long long n)  \
{ relu_backward<T>(gy, y, gx, n); }                                                         \
extern "C" __global__ void relu_forward_vec_##DT(const T* x, T* y, long long n)             \
{ relu_forward_vec<T>(x, y, n); }                                                           \
extern "C" __global__ void relu_backward_vec_##DT(const T* gy, const T* y, T* gx,           \
                                                  long long n)                              \
{ relu_backward_vec<T>(gy, y, gx, n); }
INSTANTIATE_F32_F64(RELU_KERNELS)
