// conv_3_regblock.cu -- rung 3 of the ladder: register blocking, the
// implicit-GEMM view.
//
// The same 3x3, stride-1, padding-1 convolution (NCHW, float32). Written as a
// matrix product, the forward pass is Out = A B with
//   A (M x K) = w viewed as (O, C*9)                    M = O
//   B (K x Ncols) = im2col(x): B[(c,i,j), (n,p,q)]      K = C*9
//                 = x[n, c, p+i-1, q+j-1] (0 outside)   Ncols = N*H*W
//   Out[o, (n,p,q)] = y[n, o, p, q] - b[o]
// B is never built in memory ("implicit" GEMM): `im2col` below computes the
// element that a (k, col) entry stands for when the tile is loaded.
//
// A block computes a BM x BN tile of Out: 64 output channels x 64 pixels. It
// walks K in steps of BK, copying a BM x BK slice of A and a BK x BN slice of
// B into shared memory. Then each of its 256 threads multiplies out its own
// TM x TN = 4x4 block of outputs, kept in registers: for each k it loads 4
// values of A and 4 of B from shared memory and does 16 multiply-adds.
// Rung 2 did 1 multiply-add per 2 shared loads. And a loaded input value now
// serves 64 output channels, where rung 2 re-read the input for each.
//
// The input gradient is the same product with rung 2's flip (FLIP): of gy,
// with w's channels swapped and turned. The weight gradient's K is N*H*W,
// huge, for a small Out: it needs K split over blocks (split-K), which the
// shipped kernel does (rung 4, kernels/conv.cu).

constexpr int BM = 64, BN = 64, BK = 8;   // block tile and K step
constexpr int TM = 4, TN = 4;             // each thread's register block
constexpr int THREADS = (BM / TM) * (BN / TN);   // 256

// Offset of element (a, b, c, d) of a C-order array of shape (., B, C, D).
__device__ __forceinline__ int at(int a, int b, int c, int d,
                                  int B, int C, int D)
{
    return ((a * B + b) * C + c) * D + d;
}

// --8<-- [start:im2col]
// B[k, col] of the GEMM: k = (c, i, j) over Cin*9, col = (n, p, q) over N*H*W.
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
// --8<-- [end:im2col]

// A[m, k] of the GEMM: w[m, c, i, j] for k = (c, i, j); FLIP: w is
// (Cin, Cout, 3, 3) and A[m, (c, i, j)] = w[c, m, 2-i, 2-j].
template <bool FLIP>
__device__ __forceinline__ float weight(const float* __restrict__ w, int m,
                                        int k, int Cin, int Cout)
{
    if (m >= Cout || k >= Cin * 9) return 0.0f;
    return FLIP ? w[(k / 9 * Cout + m) * 9 + 8 - k % 9] : w[m * Cin * 9 + k];
}

template <bool FLIP>
__device__ void conv3_gemm(const float* __restrict__ x,
                           const float* __restrict__ w,
                           const float* __restrict__ b, float* __restrict__ y,
                           int N, int Cin, int H, int W, int Cout)
{
    __shared__ float As[BK][BM];   // A's slice, transposed: As[k][m]
    __shared__ float Bs[BK][BN];
    const int K = Cin * 9;
    const int m0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    const int t = threadIdx.x, tx = t % (BN / TN), ty = t / (BN / TN);
    float acc[TM][TN] = {};
    // --8<-- [start:loop]
    for (int k0 = 0; k0 < K; k0 += BK) {
        // 1. copy the slices (2 + 2 elements per thread); consecutive threads
        //    take consecutive m / columns: conflict-free stores, and
        //    coalesced loads of x (consecutive columns are consecutive q)
        for (int e = t; e < BM * BK; e += THREADS)
            As[e / BM][e % BM] = weight<FLIP>(w, m0 + e % BM, k0 + e / BM,
                                              Cin, Cout);
        for (int e = t; e < BK * BN; e += THREADS)
            Bs[e / BN][e % BN] = im2col(x, k0 + e / BN, col0 + e % BN,
                                        N, Cin, H, W);
        __syncthreads();
        // 2. the register block: rows ty + i*16, columns tx + j*16 of the
        //    tile (strided, so that a warp reads 16 consecutive Bs values)
        for (int k = 0; k < BK; ++k) {
            float a[TM], bv[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = As[k][ty + i * (BM / TM)];
#pragma unroll
            for (int j = 0; j < TN; ++j) bv[j] = Bs[k][tx + j * (BN / TN)];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * bv[j];
        }
        __syncthreads();
    }
    // --8<-- [end:loop]
    // 3. the epilogue: Out[m, (n, p, q)] + bias -> y[n, m, p, q]
    for (int i = 0; i < TM; ++i)
        for (int j = 0; j < TN; ++j) {
            int m = m0 + ty + i * (BM / TM), col = col0 + tx + j * (BN / TN);
            if (m >= Cout || col >= N * H * W) continue;
            int n = col / (H * W), pq = col % (H * W);
            y[(n * Cout + m) * H * W + pq] = acc[i][j] + (b ? b[m] : 0.0f);
        }
}

// grid (ceil(N*H*W / 64), ceil(O / 64)), block 256
extern "C" __global__ void __launch_bounds__(THREADS) conv3_forward(
    const float* __restrict__ x, const float* __restrict__ w,
    const float* __restrict__ b, float* __restrict__ y,
    int N, int C, int H, int W, int O)
{
    conv3_gemm<false>(x, w, b, y, N, C, H, W, O);
}

// grid (ceil(N*H*W / 64), ceil(C / 64)), block 256
extern "C" __global__ void __launch_bounds__(THREADS) conv3_input_grad(
    const float* __restrict__ gy, const float* __restrict__ w,
    float* __restrict__ gx, int N, int C, int H, int W, int O)
{
    conv3_gemm<true>(gy, w, nullptr, gx, N, O, H, W, C);
}
