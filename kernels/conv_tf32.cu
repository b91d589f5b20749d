// conv_tf32.cu -- the convolution's three implicit GEMMs on the tensor cores, in TF32.
//
// The problems are conv.cu's (conv_problems.cuh: what A, B and Out are for the forward, the
// input gradient, the partitioned input gradient of the up-convolution and the split-K weight
// gradient); only the engine differs. conv.cu's engine gives each thread a register block of
// fused multiply-adds; here one instruction, executed by a whole warp together,
//   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32  d, a, b, c
// computes D = A B + C for a 16x8 A, an 8x8 B and a 16x8 C/D: 16 x 8 x 8 = 1024
// multiply-adds, 32 per thread, where an FMA instruction does 1 per thread. The operands are
// TF32 (1 sign, 8 exponent, 10 mantissa bits: fp32's range, fp16's precision), converted from
// fp32 by cvt.rna (round to nearest, ties away from zero); products and sums are fp32. This is
// what PyTorch runs by default (torch.backends.cudnn.allow_tf32), and what
// numpy_backend.set_precision("tf32") emulates on the CPU. float32 only: float64 stays on
// conv.cu. The launcher (minicnn/backend/cuda/conv.py) takes this file for every float32
// convolution when CudaConfig(precision="tf32") is in force; the default is fp32, conv.cu.
//
// Tiling: a block computes a BM x BN = 64 x 64 tile of Out with 4 warps. Each warp owns a
// WM x WN = 32 x 32 warp tile: 2 x 4 fragments of 16 x 8, i.e. 8 mma per K step of 8, and
// 2 x 4 x 4 = 32 fp32 accumulators per thread. The block walks its K range in steps of BK = 8
// through shared memory, loading as conv.cu's engine does (consecutive threads read
// consecutive k of A, each thread keeps one column of B, so the problem's per-column
// arithmetic is done once); each value is rounded to TF32 once, when it is staged.
//
// The fragment layout (which lane holds which element), from the PTX ISA, "Matrix Fragments
// for mma.m16n8k8" with .tf32 operands (docs.nvidia.com/cuda/parallel-thread-execution,
// section warp-level-matrix-fragment-mma-1688). With g = lane / 4 ("groupID") and
// t = lane % 4 ("threadID_in_group"):
//   A (16 x 8, row):  a0 = A[g][t]    a1 = A[g+8][t]
//                     a2 = A[g][t+4]  a3 = A[g+8][t+4]
//   B (8 x 8, col):   b0 = B[t][g]    b1 = B[t+4][g]
//   C, D (16 x 8):    c0 = C[g][2t]   c1 = C[g][2t+1]
//                     c2 = C[g+8][2t] c3 = C[g+8][2t+1]
// tests/test_ladder.py pins this layout: the emulator's mma (which follows the table) must
// reproduce a plain 16x8x8 matrix product.
//
// Shared memory is padded by PAD columns: lanes g, t read As[t][g] (and Bs[t][g]), and
// without the padding the 4 values of t, 64 floats apart, fall in the same bank (a 4-way
// conflict); with rows of 72 floats they do not. (The stores of A's slice then have a 2-way
// conflict: 8 shared reads per thread and K step are stored, 16 are read.)
//
// Rung 6 of the convolution ladder (dev/cuda/README.md, docs/cuda.md). Untimed: no GPU has
// run it yet (benchmarks/NOTES.md entries 29 and 31).
#include "conv_problems.cuh"

constexpr int BM = 64, BN = 64, BK = 8;   // block tile and K step
constexpr int WM = 32, WN = 32;           // a warp's tile
constexpr int MI = WM / 16, NJ = WN / 8;  // its m16n8 fragments: 2 x 4
constexpr int WARPS = (BM / WM) * (BN / WN);   // 4
constexpr int THREADS = WARPS * 32;       // 128
constexpr int PAD = 8;                    // shared rows of 72: no bank conflicts on reads
constexpr int A_LOADS = BM * BK / THREADS, B_LOADS = BK * BN / THREADS;   // 4 and 4
// Blocks per SM that __launch_bounds__ asks ptxas to allow for: 2 x 128 threads leave up to
// 255 registers a thread. With the thread count alone, ptxas (CUDA 13.0) held rung 6's input
// gradient to 64 registers and spilled.
constexpr int MIN_BLOCKS = 2;

// --8<-- [start:mma]
#ifndef MINICNN_EMU
// fp32 -> TF32, rounded to nearest (ties away from zero): an fp32 bit pattern
// whose low 13 mantissa bits are 0.
__device__ __forceinline__ unsigned to_tf32(float f)
{
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
    return r;
}

// d = a b + c for one warp's 16x8x8 tile; every lane of the warp must call it
// together (".sync.aligned"), each with its fragments (the table above).
__device__ __forceinline__ void
mma_tf32_m16n8k8(float d[4], const unsigned a[4], const unsigned b[2],
                 const float c[4])
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%10, %11, %12, %13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]),
                   "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
#endif   // else the CPU emulator's (tests/kernel_emu/mma_emu.h)
// --8<-- [end:mma]

// Out[m, col] = sum over this block's K slice of A[m, k] B[k, col], as conv.cu's
// implicit_gemm: grid (ceil(Ncols / BN), ceil(M / BM), splits), THREADS threads; block z sums
// k in [z k_chunk, min(K, (z + 1) k_chunk)) (k_chunk a multiple of BK, or K).
template <class Problem>
__device__ __forceinline__ void tf32_gemm(const Problem& prob, int M, int Ncols, int K,
                                          int k_chunk)
{
    __shared__ unsigned As[BK][BM + PAD];   // A's slice, transposed, in TF32
    __shared__ unsigned Bs[BK][BN + PAD];   // B's slice, in TF32
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, tg = lane % 4;                 // groupID, threadID_in_group
    const int wm = warp / (BN / WN) * WM, wn = warp % (BN / WN) * WN;
    const int k_begin = blockIdx.z * k_chunk, k_end = min(K, k_begin + k_chunk);
    const int a_k = tid % BK, a_m = tid / BK;              // A: this thread's k, first row
    const int b_n = tid % BN, b_k = tid / BN;              // B: this thread's column, first k
    const int col = n0 + b_n;
    const bool col_ok = col < Ncols;
    const typename Problem::Column cl = prob.column(col_ok ? col : 0);
    float acc[MI][NJ][4] = {};
    // --8<-- [start:loop]
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        // 1. stage the slices in TF32 (zeros past M, Ncols and the K slice)
#pragma unroll
        for (int r = 0; r < A_LOADS; ++r) {
            const int m = a_m + r * (THREADS / BK), gm = m0 + m, gk = k0 + a_k;
            As[a_k][m] = to_tf32(gm < M && gk < k_end ? prob.a(gm, gk) : 0.0f);
        }
#pragma unroll
        for (int r = 0; r < B_LOADS; ++r) {
            const int k = b_k + r * (THREADS / BN), gk = k0 + k;
            Bs[k][b_n] = to_tf32(col_ok && gk < k_end ? prob.b(gk, cl) : 0.0f);
        }
        __syncthreads();
        // 2. the warp tile: load each fragment (the layout table above),
        //    then MI x NJ tensor-core instructions
        unsigned a[MI][4], b[NJ][2];
#pragma unroll
        for (int i = 0; i < MI; ++i) {
            const int r = wm + i * 16 + g;
            a[i][0] = As[tg][r];
            a[i][1] = As[tg][r + 8];
            a[i][2] = As[tg + 4][r];
            a[i][3] = As[tg + 4][r + 8];
        }
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            b[j][0] = Bs[tg][wn + j * 8 + g];
            b[j][1] = Bs[tg + 4][wn + j * 8 + g];
        }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j)
                mma_tf32_m16n8k8(acc[i][j], a[i], b[j], acc[i][j]);
        __syncthreads();
    }
    // --8<-- [end:loop]
    // 3. the epilogue: accumulator r of fragment (i, j) is C[g + 8 (r / 2)][2 tg + r % 2] of
    //    that fragment (unrolled: acc stays in registers only if every index is a constant)
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int m = m0 + wm + i * 16 + g + 8 * (r / 2);
                const int c = n0 + wn + j * 8 + 2 * tg + r % 2;
                if (m < M && c < Ncols) prob.store(m, c, acc[i][j][r]);
            }
}

// The entry points: conv.cu's, with the same parameters and grids, named _tf32 instead of
// _<tile>_f32, THREADS threads a block.
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
conv2d_forward_tf32(const float* __restrict__ x, const float* __restrict__ w,
                    const float* __restrict__ bias, float* __restrict__ y, int has_bias,
                    int relu, CONV_SHAPE_PARAMS)
{
    const ConvForward<float> prob{x, w, bias, y, has_bias, relu, CONV_SHAPE_INIT, C * kH * kW,
                                  kH * kW, kW, Ho * Wo, Wo, H * W};
    const int K = C * kH * kW;
    tf32_gemm(prob, O, N * Ho * Wo, K, K);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
conv2d_backward_input_tf32(const float* __restrict__ gy, const float* __restrict__ w,
                           float* __restrict__ gx, const float* __restrict__ bias,
                           int has_bias, CONV_SHAPE_PARAMS)
{
    const ConvBackwardInput<float> prob{gy, w, gx, bias, has_bias, CONV_SHAPE_INIT, kH * kW,
                                        kW, sH, sW, H * W, W, Ho * Wo};
    const int K = O * kH * kW;
    tf32_gemm(prob, C, N * H * W, K, K);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
conv2d_backward_input_partition_tf32(const float* __restrict__ gy,
                                     const float* __restrict__ w, float* __restrict__ gx,
                                     const float* __restrict__ bias, int has_bias,
                                     CONV_SHAPE_PARAMS)
{
    const ConvBackwardInputPartition<float> prob{gy, w, gx, bias, has_bias, CONV_SHAPE_INIT,
                                                 kH * kW, kW, Ho * Wo, Wo, H * W,
                                                 C * kH * kW};
    tf32_gemm(prob, C * kH * kW, N * Ho * Wo, O, O);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
conv2d_backward_weight_tf32(const float* __restrict__ gy, const float* __restrict__ x,
                            float* __restrict__ ws, int k_chunk, CONV_SHAPE_PARAMS)
{
    const ConvBackwardWeight<float> prob{gy, x, ws, CONV_SHAPE_INIT, Ho * Wo, Wo, kH * kW, kW,
                                         H * W, C * kH * kW, O * C * kH * kW};
    tf32_gemm(prob, O, C * kH * kW, N * Ho * Wo, k_chunk);
}
