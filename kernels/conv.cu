// conv.cu -- 2-D convolution (cross-correlation, NCHW) as three implicit GEMMs on the FMA units.
//
// conv_problems.cuh says what the matrices A, B and Out of each pass are (read it first); this
// file multiplies them, in float32 and float64. (conv_tf32.cu multiplies the same problems on
// the tensor cores, in TF32.)
//
// Tiling (all three problems, one engine): a thread block computes a BM x BN tile of Out.
// It walks K in steps of BK: the block copies the BM x BK slice of A and the BK x BN slice of
// B into shared memory (each element read from global memory once per block), synchronises,
// and then every thread multiplies out its TM x TN register block from shared memory
// (TM + TN shared loads feed TM*TN fused multiply-adds per k). Tile configurations
// (threads = (BM/TM) * (BN/TN)):
//
//   name      BM   BN   BK  TM  TN  threads  used for
//   m32n128   32  128   16   4   4   256     M <= 32 (the first U-Net layers have 16..32 channels)
//   m64n64    64   64   16   4   4   256     the general case (always for float64)
//   m128n128 128  128    8   8   8   256     float32 with M >= 128 when the grid is still large
//   m128n64  128   64    8   8   8   128     float32 (MINICNN_CONV_TILES; the launcher's
//   m64n128   64  128    8   8   8   128       planner models which tile is fastest)
//
// Thread -> output mapping inside the tile: thread t has tx = t % (BN/TN), ty = t / (BN/TN)
// and owns rows  ty + i*(BM/TM)  (i < TM)  and columns  tx + j*(BN/TN)  (j < TN), i.e. its
// TM x TN block is *strided* over the tile. Neighbouring threads thus own neighbouring
// columns: their shared-memory reads of B are conflict-free and their global stores of Out
// are coalesced (columns are the contiguous (p, q) / (h, v) axis of y / gx).
// Build variant MINICNN_CONV_VEC4: the rows are groups of 4,  (i/4)*4*(BM/TM) + 4*ty + i%4,
// and so are the columns; a thread then reads 4 values of a shared row in one 16-byte load
// (the 16-byte reads of a warp's threads are consecutive, so they stay conflict-free).
#include "conv_problems.cuh"

// Build features. Each is a compile-time switch, on unless the NVRTC options set it to 0,
// and each is in the shipped build because a GPU run measured it faster (benchmarks/NOTES.md:
// entry 11 timed prefetch, vec4 and fastdiv, alone and together, against the build without
// any, 93.5 -> 53.9 ms per U-Net training step on an H200; entry 15 timed tiles, 54.3 ->
// 50.4 ms). The switches stay so that the benchmarks can time the build without a feature
// (minicnn.backend.cuda.CudaConfig(features=...); "plain" turns all four off). Every feature
// computes the same sums in the same order, except that `tiles` may cut a weight gradient's
// K into other split-K slices. Features that no GPU run measured faster are not here: the
// `ktable` and `kmajor` lessons are in NOTES (entries 12-15), Winograd's kernels are rung 5
// of the ladder (dev/cuda/conv_5_winograd.cu).
//
// MINICNN_CONV_PREFETCH: the GEMM engine's software-pipelined K loop instead of the plain one.
#ifndef MINICNN_CONV_PREFETCH
#define MINICNN_CONV_PREFETCH 1
#endif
// MINICNN_CONV_VEC4: each thread owns *contiguous* groups of 4 rows and 4 columns of the tile
// (instead of rows/columns strided by RS/CS), so that the inner loop reads its TM + TN
// shared-memory values as TM/4 + TN/4 16-byte loads instead of TM + TN 4-byte loads.
#ifndef MINICNN_CONV_VEC4
#define MINICNN_CONV_VEC4 1
#endif
// MINICNN_CONV_FASTDIV: the integer divisions of the index arithmetic become a multiply-high
// and a shift; its switch is in conv_problems.cuh, beside `Div`.
// MINICNN_CONV_TILES: two more float32 tile configurations, m128n64 and m64n128 (below); the
// launcher's planner (minicnn/backend/cuda/planner.py) may then use them.
#ifndef MINICNN_CONV_TILES
#define MINICNN_CONV_TILES 1
#endif

// ================================================================== the GEMM engine
// out[0..3] = p[0..3] as 16-byte shared-memory loads (p 16-byte aligned).
__device__ __forceinline__ void load4(const float* p, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, double* out) {
    const double2 u = reinterpret_cast<const double2*>(p)[0];
    const double2 v = reinterpret_cast<const double2*>(p)[1];
    out[0] = u.x; out[1] = u.y; out[2] = v.x; out[3] = v.y;
}

// Out[m, col] = sum_{k in this block's K slice} A[m, k] * B[k, col]
//   grid  = (ceil(Ncols / BN), ceil(M / BM), splits),  block = THREADS threads (1-D)
//   block (bx, by, bz) computes rows [by*BM, by*BM + BM), columns [bx*BN, bx*BN + BN),
//   over k in [bz*k_chunk, min(K, bz*k_chunk + k_chunk)).
template <typename T, int BM, int BN, int BK, int TM, int TN, class Problem>
__device__ __forceinline__ void implicit_gemm(const Problem& prob, int M, int Ncols, int K,
                                              int k_chunk, int split = -1)
{
    constexpr int RS = BM / TM;            // row stride of a thread's rows (= threads per column)
    constexpr int CS = BN / TN;            // column stride of a thread's columns
    constexpr int THREADS = RS * CS;
    constexpr int A_LOADS = BM * BK / THREADS;   // A-tile elements each thread copies
    constexpr int B_LOADS = BK * BN / THREADS;   // B-tile elements each thread copies
    constexpr int A_ROW_STEP = THREADS / BK;     // A rows covered by one pass of all threads
    constexpr int B_K_STEP = THREADS / BN;       // B rows (k) covered by one pass
    // Pad the transposed A tile so that the stores As[a_k][m] of one warp (a_k = 0..BK-1
    // for 32/BK consecutive m) fall in 32 different banks: row length == 32/BK (mod 32).
    // (With MINICNN_CONV_VEC4 the rows must also start on 16 bytes: the pad is rounded up to
    // a multiple of 16 bytes, which costs a 2-way bank conflict on the stores where BK = 16.)
    constexpr int VEC = 16 / int(sizeof(T));     // elements per 16-byte load
    constexpr int A_PAD = MINICNN_CONV_VEC4 ? (32 / BK + VEC - 1) / VEC * VEC : 32 / BK;
    static_assert(BM % TM == 0 && BN % TN == 0, "tile must split into register blocks");
    static_assert((BM * BK) % THREADS == 0 && (BK * BN) % THREADS == 0, "loads must divide");
    static_assert(THREADS % BK == 0 && THREADS % BN == 0, "each thread keeps one k / one column");
    static_assert(32 % BK == 0, "A_PAD assumes BK divides 32");
    static_assert(!MINICNN_CONV_VEC4 || (TM % 4 == 0 && TN % 4 == 0 &&
                  (BM + A_PAD) % VEC == 0 && BN % VEC == 0),
                  "16-byte reads: whole groups of 4, shared-memory rows on 16 bytes");

    // A is stored transposed (As[k][m]) so that the inner loop reads a thread's TM values of
    // A for one k from one shared-memory row, like its TN values of B.
#if !MINICNN_CONV_PREFETCH
    __shared__ __align__(16) T As[BK][BM + A_PAD];
    __shared__ __align__(16) T Bs[BK][BN];
#else
    __shared__ __align__(16) T As[2][BK][BM + A_PAD];  // two buffers: fill one, read the other
    __shared__ __align__(16) T Bs[2][BK][BN];
#endif

    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

    const int tid = threadIdx.x;
    const int tx = tid % CS, ty = tid / CS;
    // The tile rows / columns of the thread's register block: acc[i][j] is Out[m0 + row(i),
    // n0 + column(j)].
#if !MINICNN_CONV_VEC4
    auto row = [&](int i) { return ty + i * RS; };      // strided over the tile
    auto column = [&](int j) { return tx + j * CS; };
#else
    auto row = [&](int i) { return (i / 4) * (4 * RS) + 4 * ty + i % 4; };  // groups of 4
    auto column = [&](int j) { return (j / 4) * (4 * CS) + 4 * tx + j % 4; };
#endif
    // The products of one K tile held in shared memory (as, bs: its A and B buffers).
    auto multiply = [&](const T (*as)[BM + A_PAD], const T (*bs)[BN]) {
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T av[TM], bv[TN];
#if !MINICNN_CONV_VEC4
#pragma unroll
            for (int i = 0; i < TM; ++i) av[i] = as[kk][row(i)];
#pragma unroll
            for (int j = 0; j < TN; ++j) bv[j] = bs[kk][column(j)];
#else
#pragma unroll
            for (int i = 0; i < TM; i += 4) load4(&as[kk][row(i)], av + i);
#pragma unroll
            for (int j = 0; j < TN; j += 4) load4(&bs[kk][column(j)], bv + j);
#endif
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
        }
    };
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    // This block's K slice (k_chunk = K and gridDim.z = 1 when K is not split; `split`, when
    // given, replaces blockIdx.z: the Winograd GEMMs of dev/cuda/conv_5_winograd.cu spend z
    // on their 16 or 36 problems too). The
    // launcher guarantees gridDim.z * k_chunk < 2^31. An empty slice just stores zeros.
    const int k_begin = (split < 0 ? (int)blockIdx.z : split) * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);

    // Load assignment. A tile (BM x BK): element e = tid + r*THREADS has m = e / BK and
    // k = e % BK, so consecutive threads read consecutive k of one A row (A is contiguous
    // along k in all three problems -> coalesced) and each thread keeps one k: a_k.
    const int a_k = tid % BK, a_m = tid / BK;
    // B tile (BK x BN): element e has k = e / BN and column e % BN: each thread keeps one
    // column b_n for the whole K loop, so the column's decomposition is done once, here.
    const int b_n = tid % BN, b_k = tid / BN;
    const int col = n0 + b_n;
    const bool col_ok = col < Ncols;
    const typename Problem::Column cl = prob.column(col_ok ? col : 0);
    // this thread's B loads of the tile that starts at k0, put(r, value) for r < B_LOADS, the
    // value of Bs[b_k + r*B_K_STEP][b_n]: zeros past the K slice and past Ncols
    auto load_b = [&](int k0, auto&& put) {
#pragma unroll
        for (int r = 0; r < B_LOADS; ++r) {
            const int gk = k0 + b_k + r * B_K_STEP;
            put(r, (col_ok && gk < k_end) ? prob.b(gk, cl) : T(0));
        }
    };

#if !MINICNN_CONV_PREFETCH
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        // ---- global -> shared. Out-of-range entries (past M, Ncols or the K slice) are 0,
        // so they add nothing and never touch memory.
#pragma unroll
        for (int r = 0; r < A_LOADS; ++r) {
            const int m = a_m + r * A_ROW_STEP;
            const int gm = m0 + m, gk = k0 + a_k;
            As[a_k][m] = (gm < M && gk < k_end) ? prob.a(gm, gk) : T(0);
        }
        load_b(k0, [&](int r, T v) { Bs[b_k + r * B_K_STEP][b_n] = v; });
        __syncthreads();   // the tile is complete
        multiply(As, Bs);  // the register-block product over this K tile
        __syncthreads();   // everyone is done reading before the next tile overwrites it
    }

#else
    // The same products, software-pipelined: the global loads of the *next* K tile are issued
    // into registers before the products of this tile, so their latency overlaps the FMAs
    // instead of stalling at the barrier. One barrier per tile is enough with two buffers:
    // buffer b is refilled two tiles later, and every thread has passed the barrier between
    // (so has finished reading b) before any thread gets there.
    T a_next[A_LOADS], b_next[B_LOADS];
    auto fetch = [&](int k1) {              // tile k1 into registers (zeros past the slice)
#pragma unroll
        for (int r = 0; r < A_LOADS; ++r) {
            const int gm = m0 + a_m + r * A_ROW_STEP, gk = k1 + a_k;
            a_next[r] = (gm < M && gk < k_end) ? prob.a(gm, gk) : T(0);
        }
        load_b(k1, [&](int r, T v) { b_next[r] = v; });
    };
    fetch(k_begin);
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
        for (int r = 0; r < A_LOADS; ++r) As[buf][a_k][a_m + r * A_ROW_STEP] = a_next[r];
#pragma unroll
        for (int r = 0; r < B_LOADS; ++r) Bs[buf][b_k + r * B_K_STEP][b_n] = b_next[r];
        __syncthreads();   // tile k0 is complete in buffer buf
        fetch(k0 + BK);    // in flight while this tile's products run
        multiply(As[buf], Bs[buf]);
        buf ^= 1;
    }
#endif

    // ---- epilogue: write the register block (problem-specific layout, bias, split slab)
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int gm = m0 + row(i);
        if (gm >= M) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int gc = n0 + column(j);
            if (gc < Ncols) prob.store(gm, gc, acc[i][j]);
        }
    }
}



// conv2d_forward_<cfg>_<dt>(x, w, bias, y, has_bias, relu, shape...)
//   grid (ceil(N*Ho*Wo / BN), ceil(O / BM), 1)
// conv2d_backward_input_<cfg>_<dt>(gy, w, gx, bias, has_bias, shape...)
//   grid (ceil(N*H*W / BN), ceil(C / BM), 1)
// conv2d_backward_input_partition_<cfg>_<dt>(gy, w, gx, bias, has_bias, shape...)
//   (stride = kernel, no padding, H = Ho*kH, W = Wo*kW only)
//   grid (ceil(N*Ho*Wo / BN), ceil(C*kH*kW / BM), 1)
// (bias, has_bias: + bias[c] in the store, for the transposed convolution's forward)
// conv2d_backward_weight_<cfg>_<dt>(gy, x, ws, k_chunk, shape...)
//   grid (ceil(C*kH*kW / BN), ceil(O / BM), splits); ws holds `splits` slabs of O*C*kH*kW
#define CONV_KERNELS(CFG, BM, BN, BK, TM, TN, MINB, T, DT)                                    \
extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN), MINB)                \
conv2d_forward_##CFG##_##DT(const T* __restrict__ x, const T* __restrict__ w,              \
                            const T* __restrict__ bias, T* __restrict__ y, int has_bias,   \
                            int relu, CONV_SHAPE_PARAMS)                                   \
{                                                                                          \
    ConvForward<T> prob{x, w, bias, y, has_bias, relu, CONV_SHAPE_INIT, C * kH * kW,       \
                        kH * kW, kW, Ho * Wo, Wo, H * W};                                  \
    const int K = C * kH * kW;                                                             \
    implicit_gemm<T, BM, BN, BK, TM, TN>(prob, O, N * Ho * Wo, K, K);                     \
}                                                                                          \
extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN), MINB)                \
conv2d_backward_input_##CFG##_##DT(const T* __restrict__ gy, const T* __restrict__ w,      \
                                   T* __restrict__ gx, const T* __restrict__ bias,         \
                                   int has_bias, CONV_SHAPE_PARAMS)                        \
{                                                                                          \
    ConvBackwardInput<T> prob{gy, w, gx, bias, has_bias, CONV_SHAPE_INIT, kH * kW, kW, sH, \
                              sW, H * W, W, Ho * Wo};                                      \
    const int K = O * kH * kW;                                                             \
    implicit_gemm<T, BM, BN, BK, TM, TN>(prob, C, N * H * W, K, K);                       \
}                                                                                          \
extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN), MINB)                \
conv2d_backward_input_partition_##CFG##_##DT(const T* __restrict__ gy, const T* __restrict__ w, \
                                         T* __restrict__ gx, const T* __restrict__ bias,   \
                                         int has_bias, CONV_SHAPE_PARAMS)                  \
{                                                                                          \
    ConvBackwardInputPartition<T> prob{gy, w, gx, bias, has_bias, CONV_SHAPE_INIT, kH * kW, \
                                       kW, Ho * Wo, Wo, H * W, C * kH * kW};               \
    implicit_gemm<T, BM, BN, BK, TM, TN>(prob, C * kH * kW, N * Ho * Wo, O, O);           \
}                                                                                          \
extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN), MINB)                \
conv2d_backward_weight_##CFG##_##DT(const T* __restrict__ gy, const T* __restrict__ x,     \
                                    T* __restrict__ ws, int k_chunk, CONV_SHAPE_PARAMS)    \
{                                                                                          \
    ConvBackwardWeight<T> prob{gy, x, ws, CONV_SHAPE_INIT, Ho * Wo, Wo, kH * kW, kW, H * W, \
                               C * kH * kW, O * C * kH * kW};                              \
    implicit_gemm<T, BM, BN, BK, TM, TN>(prob, O, C * kH * kW, N * Ho * Wo, k_chunk);     \
}

// MINB: blocks per SM that ptxas must leave room for (the second __launch_bounds__ value; 0:
// no constraint). Two blocks of the 128x128 tile need at most 128 registers per thread, which
// the prefetch+vec4 build would pass otherwise. (A 1 for the small tiles is not "no
// constraint": ptxas then allocates 72 registers instead of 40-48, 3 blocks per SM instead of 5.)
// CONV_TILE_CONFIGS(M) applies M to every tile configuration (cfg, BM, BN, BK, TM, TN, MINB,
// type, dtype suffix) of this build: the conv kernels below (and rung 5's Winograd GEMMs).
// (No m128n128 for double: 64 double accumulators per thread would spill registers.)
#if MINICNN_CONV_TILES
// Half of the 128x128 tile, either way, with the same 8x8 register blocks: 128 threads, at
// most 128 registers each for four blocks per SM.
#define CONV_EXTRA_TILE_CONFIGS(M)                                                          \
    M(m128n64, 128, 64, 8, 8, 8, 4, float, f32)                                            \
    M(m64n128, 64, 128, 8, 8, 8, 4, float, f32)
#else
#define CONV_EXTRA_TILE_CONFIGS(M)
#endif
#define CONV_TILE_CONFIGS(M)                                                                \
    M(m32n128, 32, 128, 16, 4, 4, 0, float, f32)                                           \
    M(m32n128, 32, 128, 16, 4, 4, 0, double, f64)                                          \
    M(m64n64, 64, 64, 16, 4, 4, 0, float, f32)                                             \
    M(m64n64, 64, 64, 16, 4, 4, 0, double, f64)                                            \
    M(m128n128, 128, 128, 8, 8, 8, 2, float, f32)                                          \
    CONV_EXTRA_TILE_CONFIGS(M)
CONV_TILE_CONFIGS(CONV_KERNELS)

// ================================================================== split-K reduction
// out[e] = ws[0*size + e] + ws[1*size + e] + ... (slabs in order: deterministic)
template <typename T>
__device__ __forceinline__ void splitk_reduce(const T* __restrict__ ws, T* __restrict__ out,
                                              int splits, long long size)
{
    GRID_STRIDE_LOOP(e, size) {
        T s = ws[e];
        for (int z = 1; z < splits; ++z) s += ws[z * size + e];
        out[e] = s;
    }
}
#define SPLITK_REDUCE(T, DT)                                                               \
extern "C" __global__ void splitk_reduce_##DT(const T* __restrict__ ws, T* __restrict__ out, \
                                              int splits, long long size)                  \
{ splitk_reduce<T>(ws, out, splits, size); }
INSTANTIATE_F32_F64(SPLITK_REDUCE)

// ================================================================== narrow 1x1 convolutions
// A 1x1, stride 1, unpadded convolution with few output channels (the U-Net's head: 64 -> 4)
// is a matrix-vector product per pixel, too thin for the GEMM tiles (M = 4 fills 4 of the 32
// rows of the smallest); each thread takes one pixel s of one image n, S = H*W:
//   conv1x1_forward:        y[n, o, s] = b[o] + sum_c w[o, c] x[n, c, s]    (then ReLU if asked)
//   conv1x1_backward_input: gx[n, c, s] = (b[c] +) sum_o w[o, c] gy[n, o, s]
// for O <= NARROW_MAX outputs (forward) or summed channels (input gradient), kept in
// registers. Neighbouring threads read and write neighbouring s: both memory-bound and
// coalesced. The sums run over c (or o) in order.
constexpr int NARROW_MAX = 8;

template <typename T>
__device__ __forceinline__ void conv1x1_forward(const T* __restrict__ x, const T* __restrict__ w,
                                                const T* __restrict__ bias, int has_bias,
                                                int relu, T* __restrict__ y, int N, int C,
                                                int O, int S)
{
    GRID_STRIDE_LOOP(e, (long long)N * S) {
        const int ei = (int)e, n = ei / S, s = ei - n * S;
        T acc[NARROW_MAX];
#pragma unroll
        for (int o = 0; o < NARROW_MAX; ++o) acc[o] = T(0);
        const T* xp = x + n * C * S + s;
        for (int c = 0; c < C; ++c) {
            const T v = ldg(xp + c * S);
#pragma unroll
            for (int o = 0; o < NARROW_MAX; ++o)
                if (o < O) acc[o] += ldg(w + o * C + c) * v;
        }
#pragma unroll
        for (int o = 0; o < NARROW_MAX; ++o)
            if (o < O) {
                T v = acc[o];
                if (has_bias) v += ldg(bias + o);
                y[(n * O + o) * S + s] = relu ? relu1(v) : v;
            }
    }
}

template <typename T>
__device__ __forceinline__ void conv1x1_backward_input(const T* __restrict__ gy,
                                                       const T* __restrict__ w,
                                                       const T* __restrict__ bias, int has_bias,
                                                       T* __restrict__ gx, int N, int C, int O,
                                                       int S)
{
    GRID_STRIDE_LOOP(e, (long long)N * S) {
        const int ei = (int)e, n = ei / S, s = ei - n * S;
        T g[NARROW_MAX];
#pragma unroll
        for (int o = 0; o < NARROW_MAX; ++o) g[o] = o < O ? ldg(gy + (n * O + o) * S + s) : T(0);
        for (int c = 0; c < C; ++c) {
            T v = T(0);
#pragma unroll
            for (int o = 0; o < NARROW_MAX; ++o)
                if (o < O) v += ldg(w + o * C + c) * g[o];
            if (has_bias) v += ldg(bias + c);
            gx[(n * C + c) * S + s] = v;
        }
    }
}

// The weight gradient, dW[o, c] = sum_{n, s} gy[n, o, s] x[n, c, s], is a reduction over
// the pixels: block (chunk, g) sums the pixels [chunk * len, chunk * len + len) of the batch
// (flattened as (n, s)) for the channels c of group g (NARROW_MAX of them), its
// NARROW_THREADS threads taking every NARROW_THREADS-th pixel and keeping the O x NARROW_MAX
// sums in registers; the block then adds its threads' sums by a fixed tree in shared memory
// and stores ws[chunk, o, c]; splitk_reduce adds the chunks in order (deterministic).
constexpr int NARROW_THREADS = 256;

template <typename T>
__device__ __forceinline__ void conv1x1_backward_weight(const T* __restrict__ gy,
                                                        const T* __restrict__ x,
                                                        T* __restrict__ ws, int N, int C, int O,
                                                        int S, int len)
{
    const int c0 = blockIdx.y * NARROW_MAX, tid = threadIdx.x;
    const int P = N * S, p_begin = blockIdx.x * len, p_end = min(P, p_begin + len);
    T acc[NARROW_MAX][NARROW_MAX];                   // [o][c - c0]
#pragma unroll
    for (int o = 0; o < NARROW_MAX; ++o)
#pragma unroll
        for (int j = 0; j < NARROW_MAX; ++j) acc[o][j] = T(0);
    for (int p = p_begin + tid; p < p_end; p += NARROW_THREADS) {
        const int n = p / S, s = p - n * S;
        T g[NARROW_MAX], v[NARROW_MAX];
#pragma unroll
        for (int o = 0; o < NARROW_MAX; ++o) g[o] = o < O ? ldg(gy + (n * O + o) * S + s) : T(0);
#pragma unroll
        for (int j = 0; j < NARROW_MAX; ++j)
            v[j] = c0 + j < C ? ldg(x + (n * C + c0 + j) * S + s) : T(0);
#pragma unroll
        for (int o = 0; o < NARROW_MAX; ++o)
#pragma unroll
            for (int j = 0; j < NARROW_MAX; ++j) acc[o][j] += g[o] * v[j];
    }
    __shared__ T sh[NARROW_MAX][NARROW_THREADS];
#pragma unroll
    for (int o = 0; o < NARROW_MAX; ++o) {           // unrolled: acc stays in registers
        if (o >= O) break;                           // the same for the whole block
#pragma unroll
        for (int j = 0; j < NARROW_MAX; ++j) sh[j][tid] = acc[o][j];
        for (int half = NARROW_THREADS / 2; half > 0; half /= 2) {
            __syncthreads();
            if (tid < half)
                for (int j = 0; j < NARROW_MAX; ++j) sh[j][tid] += sh[j][tid + half];
        }
        __syncthreads();
        if (tid < NARROW_MAX && c0 + tid < C) ws[(blockIdx.x * O + o) * C + c0 + tid] = sh[tid][0];
        __syncthreads();                             // before the next o overwrites sh
    }
}

// conv1x1_forward_<dt>(x, w, bias, has_bias, relu, y, N, C, O, S)           (O <= NARROW_MAX)
// conv1x1_backward_input_<dt>(gy, w, bias, has_bias, gx, N, C, O, S)        (O <= NARROW_MAX)
// conv1x1_backward_weight_<dt>(gy, x, ws, N, C, O, S, len)                  (O <= NARROW_MAX)
//   grid (ceil(N*S / len), ceil(C / NARROW_MAX)), NARROW_THREADS threads; ws (chunks, O, C)
#define NARROW_KERNELS(T, DT)                                                               \
extern "C" __global__ void conv1x1_forward_##DT(const T* x, const T* w, const T* bias,      \
                                                int has_bias, int relu, T* y, int N, int C, \
                                                int O, int S)                               \
{ conv1x1_forward<T>(x, w, bias, has_bias, relu, y, N, C, O, S); }                          \
extern "C" __global__ void conv1x1_backward_input_##DT(const T* gy, const T* w,             \
                                                       const T* bias, int has_bias, T* gx,  \
                                                       int N, int C, int O, int S)          \
{ conv1x1_backward_input<T>(gy, w, bias, has_bias, gx, N, C, O, S); }                      \
extern "C" __global__ void __launch_bounds__(NARROW_THREADS)                               \
conv1x1_backward_weight_##DT(const T* gy, const T* x, T* ws, int N, int C, int O, int S,    \
                             int len)                                                       \
{ conv1x1_backward_weight<T>(gy, x, ws, N, C, O, S, len); }
INSTANTIATE_F32_F64(NARROW_KERNELS)
