// ladder_check.cpp -- a rung of the ladder (dev/cuda/conv_*.cu) in the CPU
// emulator, as a shared library that Python calls through ctypes.
//
// Built once per rung (tests/test_ladder.py does this), e.g. for rung 1:
//   g++ -std=c++20 -O1 -shared -fPIC -I tests/kernel_emu -I dev/cuda
//       -DRUNG='"conv_1_naive.cu"'
//       -DKERNELS='X(conv1_forward) X(conv1_input_grad) X(conv1_weight_grad)'
//       tests/kernel_emu/ladder_check.cpp -o conv_1_naive.so
//
// Each kernel K of KERNELS gets an entry point
//   extern "C" void call_K(const unsigned dims[6], void** args)
// dims: the grid (x, y, z) and the block (x, y, z); args: a pointer to each
// argument, in order (as cudaLaunchKernel takes them). The argument types come
// from the kernel's own signature, so a rung needs no code here. The test
// launches the rung with dev/cuda/launch.py, the launchers the GPU runs, and
// compares the results with minicnn's NumPy backend.
#include "cuda_emu.h"
#include RUNG

#include <cstddef>
#include <utility>

template <typename... P, std::size_t... I>
void emu_call(void (*kernel)(P...), const unsigned* d, void** a,
              std::index_sequence<I...>)
{
    emu_launch(dim3(d[0], d[1], d[2]), dim3(d[3], d[4], d[5]), kernel,
               *static_cast<P*>(a[I])...);
}

template <typename... P>
void emu_call(void (*kernel)(P...), const unsigned* d, void** a)
{
    emu_call(kernel, d, a, std::index_sequence_for<P...>{});
}

#define X(name) \
    extern "C" void call_##name(const unsigned* d, void** a) { emu_call(name, d, a); }
KERNELS
#undef X
