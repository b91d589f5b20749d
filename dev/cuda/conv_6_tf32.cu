// conv_6_tf32.cu -- rung 6 of the ladder: tensor cores, in TF32.
//
// Rung 3's implicit GEMM (read it first: the same A, B, im2col and FLIP),
// with the multiply-adds done by the tensor cores instead of the FMA units.
// One instruction, executed by a whole warp together,
//   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32  d, a, b, c
// computes D = A B + C for a 16x8 A, an 8x8 B and a 16x8 C/D: 16 x 8 x 8 =
// 1024 multiply-adds, 32 per thread, where an FMA instruction does 1 per
// thread. The operands are TF32 (1 sign, 8 exponent, 10 mantissa bits: fp32's
// range, fp16's precision), converted from fp32 by cvt.rna (round to nearest,
// ties away from zero); the products and the sums are in fp32.
//
// Tiling: a block computes a BM x BN = 64 x 64 tile of the GEMM's output (in
// the forward, 64 output channels x 64 pixels, as rung 3) with 4 warps. Each
// warp owns a WM x WN = 32 x 32 warp tile: 2 x 4 fragments of 16 x 8, i.e. 8
// mma per K step of 8, and 2 x 4 x 4 = 32 fp32 accumulators per thread. The
// block walks K (C*9 in the forward) in steps of BK = 8 through shared
// memory, as rung 3; each value is rounded to TF32 once, when it is staged.
//
// The fragment layout (which lane holds which element), from the PTX ISA,
// "Matrix Fragments for mma.m16n8k8" with .tf32 operands
// (docs.nvidia.com/cuda/parallel-thread-execution, section
// warp-level-matrix-fragment-mma-1688). With g = lane / 4 ("groupID") and
// t = lane % 4 ("threadID_in_group"):
//   A (16 x 8, row):  a0 = A[g][t]    a1 = A[g+8][t]
//                     a2 = A[g][t+4]  a3 = A[g+8][t+4]
//   B (8 x 8, col):   b0 = B[t][g]    b1 = B[t+4][g]
//   C, D (16 x 8):    c0 = C[g][2t]   c1 = C[g][2t+1]
//                     c2 = C[g+8][2t] c3 = C[g+8][2t+1]
// tests/test_ladder.py pins this layout: the emulator's mma (which follows
// the table) must reproduce a plain 16x8x8 matrix product.
//
// Shared memory is padded by PAD columns: lanes g, t read As[t][g] (and
// Bs[t][g]), and without the padding the 4 values of t, 64 floats apart, fall
// in the same bank (a 4-way conflict); with rows of 72 floats they do not.
//
// Passes: all three, as one GEMM engine over three problem structs: the
// forward, the input gradient (rung 3's FLIP) and the weight gradient (K =
// N*H*W, split over blocks; the launcher adds their partial sums).

constexpr int BM = 64, BN = 64, BK = 8;   // block tile and K step
constexpr int WM = 32, WN = 32;           // a warp's tile
constexpr int MI = WM / 16, NJ = WN / 8;  // its m16n8 fragments: 2 x 4
constexpr int WARPS = (BM / WM) * (BN / WN);   // 4
constexpr int THREADS = WARPS * 32;       // 128
constexpr int PAD = 8;                    // shared rows of 72: no bank conflicts
// Blocks per SM that __launch_bounds__ asks ptxas to allow for: 2 x 128
// threads leave up to 255 registers a thread. With the thread count alone,
// ptxas (CUDA 13.0) held the input gradient to 64 registers and spilled.
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

// at, im2col and weight are rung 3's, repeated: each rung is one complete
// file, compiled alone (NVRTC, without include paths).

// Offset of element (a, b, c, d) of a C-order array of shape (., B, C, D).
__device__ __forceinline__ int at(int a, int b, int c, int d,
                                  int B, int C, int D)
{
    return ((a * B + b) * C + c) * D + d;
}

// B[k, col] of the GEMM (rung 3): k = (c, i, j), col = (n, p, q).
__device__ __forceinline__ float im2col(const float* __restrict__ x, int k,
                                        int col, int N, int Cin, int H, int W)
{
    if (k >= Cin * 9 || col >= N * H * W) return 0.0f;   // the tile's overhang
    int c = k / 9, i = k / 3 % 3, j = k % 3;
    int n = col / (H * W), p = col / W % H, q = col % W;
    int h = p + i - 1, v = q + j - 1;
    if (h < 0 || h >= H || v < 0 || v >= W) return 0.0f;  // the padding
    return x[at(n, c, h, v, Cin, H, W)];
}

// A[m, k] of the GEMM (rung 3): w[m, c, i, j]; FLIP: w[c, m, 2-i, 2-j].
template <bool FLIP>
__device__ __forceinline__ float weight(const float* __restrict__ w, int m,
                                        int k, int Cin, int Cout)
{
    if (m >= Cout || k >= Cin * 9) return 0.0f;
    return FLIP ? w[(k / 9 * Cout + m) * 9 + 8 - k % 9] : w[m * Cin * 9 + k];
}

// The passes as one GEMM, Out (M x Ncols) = A (M x K) B (K x Ncols): each a
// struct that says where A[m][k] and B[k][col] come from (0 outside) and
// where Out[m][col] goes. The forward and the input gradient are rung 3's.
template <bool FLIP>
struct ConvGemm {            // M = Cout, K = Cin*9, Ncols = N*H*W
    const float *x, *w, *b;
    float* y;
    int N, Cin, H, W, Cout;
    __device__ int M() const { return Cout; }
    __device__ int K() const { return Cin * 9; }
    __device__ int cols() const { return N * H * W; }
    __device__ float a(int m, int k) const { return weight<FLIP>(w, m, k, Cin, Cout); }
    __device__ float bk(int k, int col) const { return im2col(x, k, col, N, Cin, H, W); }
    __device__ void store(int m, int col, float v) const   // y[n, m, p, q] + bias
    {
        int n = col / (H * W), pq = col % (H * W);
        y[(n * Cout + m) * H * W + pq] = v + (b ? b[m] : 0.0f);
    }
};

// The weight gradient, gw[o, (c, i, j)] = sum over (n, p, q) of gy[n, o, p, q]
// x[n, c, p+i-1, q+j-1]: M = O, K = N*H*W (huge), Ncols = C*9 (small). B is
// the forward's im2col with the roles of k and col swapped. K is split over
// gridDim.z blocks (split-K): block z sums its own range of K into its own
// slice of `parts` (splits, O, C*9); the launcher adds the slices.
struct WeightGradGemm {
    const float *x, *gy;
    float* parts;
    int N, C, H, W, O;
    __device__ int M() const { return O; }
    __device__ int K() const { return N * H * W; }
    __device__ int cols() const { return C * 9; }
    __device__ float a(int m, int k) const
    {
        if (m >= O || k >= N * H * W) return 0.0f;
        return gy[(k / (H * W) * O + m) * H * W + k % (H * W)];
    }
    __device__ float bk(int k, int col) const { return im2col(x, col, k, N, C, H, W); }
    __device__ void store(int m, int col, float v) const
    {
        parts[(blockIdx.z * O + m) * C * 9 + col] = v;
    }
};

// The block's BM x BN tile of Out, summed over k in [k_begin, k_end), in
// steps of BK: k_begin must be a multiple of BK, and k_end either one too or
// K (past K, a() and bk() give 0), so that no step reaches into another
// block's range.
template <class Gemm>
__device__ void tf32_gemm(const Gemm& G, int k_begin, int k_end)
{
    __shared__ unsigned As[BK][BM + PAD];   // A's slice, transposed, in TF32
    __shared__ unsigned Bs[BK][BN + PAD];
    const int m0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    const int t = threadIdx.x, lane = t % 32, warp = t / 32;
    const int g = lane / 4, tg = lane % 4;            // groupID, threadID_in_group
    const int wm = warp / (BN / WN) * WM, wn = warp % (BN / WN) * WN;
    float acc[MI][NJ][4] = {};
    // --8<-- [start:loop]
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        // 1. copy the slices, rounded to TF32 (4 + 4 elements per thread)
        for (int e = t; e < BM * BK; e += THREADS)
            As[e / BM][e % BM] = to_tf32(G.a(m0 + e % BM, k0 + e / BM));
        for (int e = t; e < BK * BN; e += THREADS)
            Bs[e / BN][e % BN] = to_tf32(G.bk(k0 + e / BN, col0 + e % BN));
        __syncthreads();
        // 2. the warp tile: load each fragment (the layout table above),
        //    then MI x NJ tensor-core instructions
        unsigned a[MI][4], bf[NJ][2];
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
            bf[j][0] = Bs[tg][wn + j * 8 + g];
            bf[j][1] = Bs[tg + 4][wn + j * 8 + g];
        }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j)
                mma_tf32_m16n8k8(acc[i][j], a[i], bf[j], acc[i][j]);
        __syncthreads();
    }
    // --8<-- [end:loop]
    // 3. the epilogue: accumulator r of fragment (i, j) is C[g + 8 (r / 2)]
    //    [2 tg + r % 2] of that fragment
    //    (unrolled: acc stays in registers only if every index is a constant)
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                int m = m0 + wm + i * 16 + g + 8 * (r / 2);
                int col = col0 + wn + j * 8 + 2 * tg + r % 2;
                if (m < G.M() && col < G.cols()) G.store(m, col, acc[i][j][r]);
            }
}

// grid (ceil(N*H*W / 64), ceil(O / 64)), block 128
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) conv6_forward(
    const float* __restrict__ x, const float* __restrict__ w,
    const float* __restrict__ b, float* __restrict__ y,
    int N, int C, int H, int W, int O)
{
    const ConvGemm<false> G{x, w, b, y, N, C, H, W, O};
    tf32_gemm(G, 0, G.K());
}

// grid (ceil(N*H*W / 64), ceil(C / 64)), block 128
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) conv6_input_grad(
    const float* __restrict__ gy, const float* __restrict__ w,
    float* __restrict__ gx, int N, int C, int H, int W, int O)
{
    const ConvGemm<true> G{gy, w, nullptr, gx, N, O, H, W, C};
    tf32_gemm(G, 0, G.K());
}

// grid (ceil(C*9 / 64), ceil(O / 64), splits), block 128; block z sums
// k in [z * chunk, (z + 1) * chunk) (chunk a multiple of BK) into parts[z]
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) conv6_weight_grad(
    const float* __restrict__ x, const float* __restrict__ gy,
    float* __restrict__ parts, int N, int C, int H, int W, int O, int chunk)
{
    const WeightGradGemm G{x, gy, parts, N, C, H, W, O};
    const int k_begin = blockIdx.z * chunk;
    tf32_gemm(G, k_begin, min(G.K(), k_begin + chunk));
}
