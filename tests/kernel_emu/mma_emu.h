// mma_emu.h -- the tensor-core instruction of rung 6 (kernels/conv_tf32.cu)
// in the CPU emulator: TF32 rounding and the warp-wide 16x8x8 matrix product.
//
// Included by cuda_emu.h, which defines MINICNN_EMU: a kernel source then
// leaves out its inline-PTX versions of these two functions and gets these.
//
// to_tf32(f): cvt.rna.tf32.f32. Round fp32 to 10 mantissa bits, to nearest,
// ties away from zero: add half a unit of the last kept bit (0x1000) to the
// magnitude's bit pattern and clear the 13 low bits (a carry into the
// exponent is the correct rounding up). Infinities and NaNs pass unchanged.
//
// mma_tf32_m16n8k8(d, a, b, c): mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32.
// On the GPU the 32 lanes of a warp each hand in their fragments (4 values of
// A, 2 of B, 4 of C; the layout table of conv_tf32.cu) and each get 4 of D.
// Here each lane is a fiber that runs alone, so the lanes meet in a per-warp
// staging area:
//   1. each lane writes its A and B fragments into its warp's stage;
//   2. __syncthreads(): every lane of the block has written;
//   3. each lane computes its 4 elements of D, C + sum over k of A B, in fp32
//      (k in order; the products of two TF32 values are exact in fp32), from
//      the stage, finding element (row, k) of A in the lane and register the
//      table gives it;
//   4. __syncthreads() again before the stage can be overwritten by the next
//      call.
// The restriction: the emulator's barrier is the whole block's, so every
// thread of the block must call mma_tf32_m16n8k8 the same number of times,
// in the same order (true of rung 6, where all warps run the same loop), and
// the block's size must be a multiple of 32. On the GPU only the warp must
// agree. The accumulation order of the hardware is not specified; the tests
// allow for fp32 rounding differences only.
#pragma once

inline unsigned to_tf32(float f)
{
    unsigned u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;    // inf, NaN
    return (u + 0x1000u) & ~0x1fffu;
}

inline float emu_tf32_value(unsigned u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

constexpr int EMU_MAX_WARPS = 32;                       // 1024 threads
struct EmuMmaStage { unsigned a[32][4], b[32][2]; };    // [lane][register]
inline EmuMmaStage emu_mma_stage[EMU_MAX_WARPS];

// A[row][k] and B[k][col] of the warp's 16x8x8 product, from the stage: the
// fragment table read backwards (lane = 4 g + t).
inline float emu_mma_a(const EmuMmaStage& s, int row, int k)
{
    return emu_tf32_value(s.a[4 * (row % 8) + k % 4][row / 8 + 2 * (k / 4)]);
}

inline float emu_mma_b(const EmuMmaStage& s, int k, int col)
{
    return emu_tf32_value(s.b[4 * col + k % 4][k / 4]);
}

inline void mma_tf32_m16n8k8(float d[4], const unsigned a[4], const unsigned b[2],
                             const float c[4])
{
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int lane = t % 32, g = lane / 4, tg = lane % 4;
    EmuMmaStage& s = emu_mma_stage[t / 32];
    for (int r = 0; r < 4; ++r) s.a[lane][r] = a[r];
    for (int r = 0; r < 2; ++r) s.b[lane][r] = b[r];
    __syncthreads();                                    // every fragment staged
    float out[4];
    for (int r = 0; r < 4; ++r) {                       // c_r = C[g + 8 (r/2)][2 tg + r%2]
        const int row = g + 8 * (r / 2), col = 2 * tg + r % 2;
        float sum = c[r];
        for (int k = 0; k < 8; ++k) sum += emu_mma_a(s, row, k) * emu_mma_b(s, k, col);
        out[r] = sum;
    }
    __syncthreads();                                    // every lane has read
    for (int r = 0; r < 4; ++r) d[r] = out[r];          // d may be c
}
