// mma_check.cpp -- the emulator's tensor-core instruction (mma_emu.h) alone, as
// a shared library that tests/test_ladder.py calls through ctypes:
//   g++ -std=c++20 -O1 -shared -fPIC -I tests/kernel_emu
//       tests/kernel_emu/mma_check.cpp -o mma_check.so
//
// mma_check(warps, a, b, c, d) runs one block of 32 * warps threads; lane l of
// warp w hands a[w][l][0..3], b[w][l][0..1], c[w][l][0..3] (TF32 bit patterns
// and floats, in the layout of the PTX ISA) to mma_tf32_m16n8k8 and gets
// d[w][l][0..3]. The test builds the fragments of random matrices from its own
// copy of the ISA's table and checks D = A B + C: that pins the layout.
// tf32_bits(f) is to_tf32(f).
#include "cuda_emu.h"

__global__ void mma_lanes(const unsigned* a, const unsigned* b, const float* c, float* d)
{
    const int t = threadIdx.x;
    mma_tf32_m16n8k8(d + 4 * t, a + 4 * t, b + 2 * t, c + 4 * t);
}

extern "C" void mma_check(int warps, const unsigned* a, const unsigned* b, const float* c,
                          float* d)
{
    emu_launch(dim3(1), dim3(32 * warps), mma_lanes, a, b, c, d);
}

extern "C" unsigned tf32_bits(float f) { return to_tf32(f); }
