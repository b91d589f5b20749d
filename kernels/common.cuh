// common.cuh -- small helpers shared by every minicnn kernel file.
//
// The .cu files are compiled at run time by NVRTC (through cupy.RawModule) with this folder
// on the include path, and by nvcc in tests/test_kernels_compile.py. NVRTC has no C/C++
// standard library headers, so nothing here includes one: the built-in CUDA math functions
// (sqrtf, expf, ...) and plain C types (int, long long, unsigned char) are all we use.
//
// Conventions in every kernel file:
//   * arrays are dense, C-contiguous (the Python side makes them so before a launch);
//   * a kernel template `foo<T>` is instantiated for float and double through
//     `extern "C"` wrappers named `foo_f32` / `foo_f64` (plain C names, no C++ mangling, so
//     that Python finds them with RawModule.get_function("foo_f32"));
//   * tensor index arithmetic is done in 32-bit `int`: the Python side refuses shapes whose
//     element counts (plus a tile of overhang) do not fit (see minicnn/backend/cuda/checks.py).
//     Element-wise grid-stride loops use 64-bit counters so that `i += stride` can never
//     overflow even on the last lap.
#pragma once

// ------------------------------------------------------------------ index helpers
// Dense C-order layout: element (a, b, c) of an array of shape (A, B, C) is at (a*B + b)*C + c.
// The kernels write these offsets out in full, next to a comment naming the tensor.

// ceil(a / b) for a >= 0, b > 0.
__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Grid-stride loop: `for i in [0, n)` spread over every thread of the grid, however many
// blocks were launched (the launcher caps the grid, so large arrays take several laps).
#define GRID_STRIDE_LOOP(i, n)                                                         \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);      \
         i += (long long)blockDim.x * gridDim.x)

// ------------------------------------------------------------------ loads
// Read-only load through the non-coherent (texture) cache. Only for memory that no thread
// of the same kernel writes.
template <typename T>
__device__ __forceinline__ T ldg(const T* p) { return __ldg(p); }

// ------------------------------------------------------------------ math, float and double
// Overloads so that templates can say dsqrt(x) for T = float or double. All of these are the
// correctly rounded / accurate versions (no --use_fast_math).
__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }

// NaN test without <cmath>: NaN is the only value that compares unequal to itself.
template <typename T>
__device__ __forceinline__ bool is_nan(T x) { return x != x; }

// ReLU of one value, exactly numpy.maximum(v, 0): NaN stays NaN, -0.0 and +0.0 give 0 (the
// activation kernels, and the conv epilogues that fuse it)
template <typename T>
__device__ __forceinline__ T relu1(T v) { return (v > T(0) || is_nan(v)) ? v : T(0); }

// A quiet NaN of type T (written where an input is invalid, e.g. a class index out of range,
// so that a bad value can never pass for a result).
template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000LL);
}

// ------------------------------------------------------------------ instantiation
// Define the float and double `extern "C"` entry points of a kernel body written as a
// macro: INSTANTIATE_F32_F64(MACRO) expands MACRO(float, f32) and MACRO(double, f64).
#define INSTANTIATE_F32_F64(MACRO) MACRO(float, f32) MACRO(double, f64)
