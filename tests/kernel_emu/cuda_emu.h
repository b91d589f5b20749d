// cuda_emu.h -- run minicnn's CUDA kernel sources on the CPU, to test their logic without a GPU.
//
// A kernel file (kernels/*.cu) is compiled as plain C++ after this header. A launch
// `emu_launch(grid, block, kernel, args...)` runs the grid's blocks one after the other; in
// a block, each CUDA thread is a *fiber* (its own stack, swapped in and out by
// swapcontext on one OS thread). The scheduler runs thread 0 until it reaches
// `__syncthreads()` (or returns), then thread 1, ..., then starts the next round: one round
// per barrier, so every thread has arrived before any thread goes past it, as on a GPU.
// `__shared__` arrays are function-local statics, i.e. the running block's shared memory.
//
// Because each thread runs alone up to its next barrier, a *missing* barrier shows up
// deterministically: a thread that reads shared memory before the barrier that should
// separate it from the writes of the other threads reads stale (or NaN) data.
//
// What this checks: index arithmetic, tiling, bounds, split-K, shared-memory use and barrier
// placement of the real kernel source, on small shapes, against plain loops. What it cannot:
// speed, warp-level operations (our kernels use none, except the tensor-core mma of
// kernels/conv_tf32.cu, rung 6, emulated by mma_emu.h under a restriction stated there), or
// the GPU's rounding where the compiler contracts a*b + c into one FMA (the tolerances allow
// for it).
// A kernel source can tell it is compiled here: MINICNN_EMU is defined.
#pragma once
#define MINICNN_EMU 1
#include <math.h>
#include <string.h>

#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;   // set by the scheduler before each switch

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct alignas(16) float4 { float x, y, z, w; };     // the CUDA vector types the kernels use
struct alignas(16) double2 { double x, y; };
struct alignas(8) int2 { int x, y; };

inline ucontext_t emu_scheduler;                      // where a fiber returns to
inline ucontext_t* emu_running = nullptr;             // the fiber now running

inline void __syncthreads() { swapcontext(emu_running, &emu_scheduler); }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, sizeof d); return d; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
using std::max;
using std::min;

inline std::function<void()> emu_body;                // the kernel call of this launch
inline int* emu_done_flag = nullptr;
inline void emu_fiber_entry() { emu_body(); *emu_done_flag = 1; }      // then uc_link

template <typename Kernel, typename... Args>
void emu_launch(dim3 grid, dim3 block, Kernel kernel, Args... args)
{
    constexpr size_t STACK = 256 * 1024;
    gridDim = grid;
    blockDim = block;
    emu_body = [&] { kernel(args...); };
    const unsigned threads = block.x * block.y * block.z;
    std::vector<ucontext_t> ctx(threads);
    std::vector<std::vector<char>> stacks(threads, std::vector<char>(STACK));
    std::vector<int> done(threads);
    for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
    for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        for (unsigned t = 0; t < threads; ++t) {
            getcontext(&ctx[t]);
            ctx[t].uc_stack.ss_sp = stacks[t].data();
            ctx[t].uc_stack.ss_size = STACK;
            ctx[t].uc_link = &emu_scheduler;
            makecontext(&ctx[t], emu_fiber_entry, 0);
            done[t] = 0;
        }
        for (unsigned left = threads; left > 0;) {     // one round per barrier
            for (unsigned t = 0; t < threads; ++t) {
                if (done[t]) continue;
                threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                emu_running = &ctx[t];
                emu_done_flag = &done[t];
                swapcontext(&emu_scheduler, &ctx[t]);
                if (done[t]) --left;
            }
        }
    }
}

#include "mma_emu.h"   // to_tf32, mma_tf32_m16n8k8 (rung 6's tensor-core instruction)
