// conv_5_winograd.cu -- rung 5 of the ladder: 3x3 convolutions by Winograd's algorithms.
//
// Rung 4 (the shipped kernels/conv.cu) computes every convolution as an implicit GEMM: 9
// multiply-adds per output pixel, input channel and tap row. Winograd's minimal filtering
// algorithms F(m x m, 3x3) compute an m x m output tile from an (m + 2) x (m + 2) input patch
// with (m + 2)^2 multiplications instead of 9 m^2: transform the patch (B^T d B) and the
// filter (G g G^T), multiply point by point, transform back (A^T M A). Summed over the input
// channels, the pointwise products become (m + 2)^2 independent GEMMs, which this rung runs on
// rung 4's engine (`implicit_gemm`, included below). m = 2: 16 products per 4 outputs (2.25x
// fewer than direct); m = 4: 36 per 16 (4x fewer), at the price of larger transformed
// operands and a little more rounding (float32: about 4e-6 of max |y| against 3e-7).
//
// Status: NOT in the shipped path. Correct (tests/kernel_emu/winograd_check.cpp against the
// direct double sums; tests/test_cuda_without_gpu.py runs dev/cuda/winograd.py's launchers in
// the emulator against numpy_backend) and compiled by NVRTC, but no GPU run has timed it
// (benchmarks/NOTES.md entries 18, 19 and 24 hold the predictions; gpu_check.sh times it
// against the shipped kernel). It joins the library only when a GPU run measures it faster.
//
// Only 3x3 / stride 1 / padding 1 convolutions on even H, W (every 3x3 layer of the U-Net);
// the maths and an executed NumPy check are in docs/cuda.md. Launcher: dev/cuda/winograd.py.
// Built with the shipped build's options and -I kernels (for conv.cu and common.cuh).
#include "conv.cu"

// ================================================================== Winograd weight gradient
// dW[o, c] (3x3) = G^T [ sum over images n and 2x2 tiles of dy:  (A dy_tile A^T) (.)
//                        (B^T x_patch B) ] G,
// x_patch the 4x4 patch of the zero-padded x under the tile, with the matrices of F(2x2, 3x3)
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// P = N * (H/2) * (W/2) tiles, p = (n, a, b); xy = 4x + y indexes the 4x4 transformed domain.
//   winograd_x:    V[xy, p, c] = (B^T x_patch B)[x, y]      one thread per (p, c), c fastest
//   winograd_dy:   U[xy, o, p] = (A dy_tile A^T)[x, y]      one thread per (o, p), p fastest
//   winograd_gemm: ws[split, xy, o, c] = sum_{p in slice} U[xy, o, p] V[xy, p, c]
//                  (conv.cu's engine; grid z = 16 * splits, z = xy * splits + split)
//   winograd_out:  dW[o, c, i, j] = sum_xy G[x, i] (sum_split ws[split, xy, o, c]) G[y, j]
// (the layouts make the GEMM's A loads run along k = p and its B loads along the columns c).
// With 4x4 tiles of dy where 4 divides H and W (winograd4_x, winograd4_dy, winograd4_out):
// F(3x3, 4x4), the 6x6 patches of x and the matrices of F(4x4, 3x3) below, 36 points, P =
// N * (H/4) * (W/4): 2.25 multiplications per dy pixel and tap pair instead of 4 (direct: 9).

// tile p of the grid of m x m tiles over (N, H, W), Wt tiles a row and HWt a plane: image n,
// tile row a, tile column b
struct WinogradTile { int n, a, b; };
__device__ __forceinline__ WinogradTile tile_of(int p, int HWt, int Wt) {
    const int n = p / HWt, ab = p - n * HWt, a = ab / Wt;
    return {n, a, ab - a * Wt};
}

// The transforms of F(m x m, 3x3), m = 2 or 4 output pixels a side from alpha = m + 2
// input pixels (Lavin and Gray 2016): bt (B^T v of an alpha-vector), g (G v of a 3-vector,
// alpha values) and at (A^T v of an alpha-vector, m values), and for the weight gradient's
// F(3x3, m x m), the same matrices transposed: a (A g of an m-vector, alpha values) and gt
// (G^T v of an alpha-vector, 3 values). F(2x2, 3x3) has the matrices above; F(4x4, 3x3)
// interpolates at 0, 1, -1, 2, -2 and infinity:
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
//          0 4 0 -5 0 1],
//   G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1],
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
template <int m> struct WinogradF;
template <> struct WinogradF<2> {
    static constexpr int ALPHA = 4;
    template <typename T> static __device__ __forceinline__ void bt(const T* v, T* out) {
        out[0] = v[0] - v[2]; out[1] = v[1] + v[2]; out[2] = v[2] - v[1]; out[3] = v[1] - v[3];
    }
    template <typename T> static __device__ __forceinline__ void g(T v0, T v1, T v2, T* out) {
        out[0] = v0; out[1] = T(0.5) * (v0 + v1 + v2); out[2] = T(0.5) * (v0 - v1 + v2);
        out[3] = v2;
    }
    template <typename T> static __device__ __forceinline__ void at(const T* v, T* out) {
        out[0] = v[0] + v[1] + v[2]; out[1] = v[1] - v[2] - v[3];
    }
    template <typename T> static __device__ __forceinline__ void a(const T* g, T* out) {
        out[0] = g[0]; out[1] = g[0] + g[1]; out[2] = g[0] - g[1]; out[3] = -g[1];
    }
    template <typename T> static __device__ __forceinline__ void gt(const T* v, T* out) {
        out[0] = v[0] + T(0.5) * v[1] + T(0.5) * v[2];
        out[1] = T(0.5) * v[1] - T(0.5) * v[2];
        out[2] = T(0.5) * v[1] + T(0.5) * v[2] + v[3];
    }
};
template <> struct WinogradF<4> {
    static constexpr int ALPHA = 6;
    template <typename T> static __device__ __forceinline__ void bt(const T* v, T* out) {
        out[0] = T(4) * v[0] - T(5) * v[2] + v[4];
        out[1] = (v[3] + v[4]) - T(4) * (v[1] + v[2]);
        out[2] = T(4) * (v[1] - v[2]) + (v[4] - v[3]);
        out[3] = T(2) * (v[3] - v[1]) + (v[4] - v[2]);
        out[4] = T(2) * (v[1] - v[3]) + (v[4] - v[2]);
        out[5] = T(4) * v[1] - T(5) * v[3] + v[5];
    }
    template <typename T> static __device__ __forceinline__ void g(T v0, T v1, T v2, T* out) {
        const T s = v0 + v2, s4 = T(0.25) * v0 + v2;   // s4: the even part at +-2, over 4
        out[0] = T(0.25) * v0;
        out[1] = T(-1.0 / 6) * (s + v1); out[2] = T(-1.0 / 6) * (s - v1);
        out[3] = T(1.0 / 6) * (s4 + T(0.5) * v1); out[4] = T(1.0 / 6) * (s4 - T(0.5) * v1);
        out[5] = v2;
    }
    template <typename T> static __device__ __forceinline__ void at(const T* v, T* out) {
        const T p1 = v[1] + v[2], m1 = v[1] - v[2], p2 = v[3] + v[4], m2 = v[3] - v[4];
        out[0] = v[0] + p1 + p2;
        out[1] = m1 + T(2) * m2;
        out[2] = p1 + T(4) * p2;
        out[3] = m1 + T(8) * m2 + v[5];
    }
    template <typename T> static __device__ __forceinline__ void a(const T* g, T* out) {
        const T e = g[0] + g[2], o = g[1] + g[3];           // even and odd parts at +-1
        const T e2 = g[0] + T(4) * g[2], o2 = T(2) * g[1] + T(8) * g[3];   // at +-2
        out[0] = g[0]; out[1] = e + o; out[2] = e - o; out[3] = e2 + o2; out[4] = e2 - o2;
        out[5] = g[3];
    }
    template <typename T> static __device__ __forceinline__ void gt(const T* v, T* out) {
        const T p1 = v[1] + v[2], m1 = v[1] - v[2], p2 = v[3] + v[4], m2 = v[3] - v[4];
        out[0] = T(0.25) * v[0] - T(1.0 / 6) * p1 + T(1.0 / 24) * p2;
        out[1] = T(1.0 / 12) * m2 - T(1.0 / 6) * m1;
        out[2] = T(1.0 / 6) * (p2 - p1) + v[5];
    }
};

// B^T d B of the alpha x alpha patch d of the zero-padded plane xc (H x W) under the m x m
// output tile (a, b): rows m*a-1 .. m*a+m, columns m*b-1 .. m*b+m of xc (for m = 2 the same
// patch for the weight gradient's x and for the input of the forward / input gradient)
template <typename T, int m = 2>
__device__ __forceinline__ void patch_transform(const T* __restrict__ xc, int H, int W, int a,
                                                int b,
                                                T (&v)[WinogradF<m>::ALPHA][WinogradF<m>::ALPHA])
{
    constexpr int AL = WinogradF<m>::ALPHA;
    T d[AL][AL], t[AL][AL];                          // t = B^T d, column by column of d
#pragma unroll
    for (int i = 0; i < AL; ++i)
#pragma unroll
        for (int j = 0; j < AL; ++j) {
            const int h = m * a - 1 + i, u = m * b - 1 + j;
            d[i][j] = (h >= 0 && h < H && u >= 0 && u < W) ? ldg(xc + h * W + u) : T(0);
        }
#pragma unroll
    for (int j = 0; j < AL; ++j) {
        T col[AL], out[AL];
#pragma unroll
        for (int i = 0; i < AL; ++i) col[i] = d[i][j];
        WinogradF<m>::bt(col, out);
#pragma unroll
        for (int i = 0; i < AL; ++i) t[i][j] = out[i];
    }
#pragma unroll
    for (int i = 0; i < AL; ++i) WinogradF<m>::bt(t[i], v[i]);   // (B^T d) B
}

// V[xy] = B^T patch B for every patch p = (n, a, b) of the m x m tiles and channel c of x
// (N, C, H, W), one thread per (p, c): stored (alpha^2, P, C) with c fastest (TILE_FASTEST =
// false: winograd_x, the weight gradient's B operand, m = 2) or (alpha^2, C, P) with p
// fastest (true: winograd_in / winograd4_in, the forward's and input gradient's). Either way
// the thread's e is its offset within one xy plane.
template <typename T, bool TILE_FASTEST, int m = 2>
__device__ __forceinline__ void patches_transform(const T* __restrict__ x, T* __restrict__ V,
                                                  int N, int C, int H, int W)
{
    constexpr int AL = WinogradF<m>::ALPHA;
    const int Wt = W / m, HWt = (H / m) * Wt, P = N * HWt;
    GRID_STRIDE_LOOP(e, (long long)P * C) {
        const int ei = (int)e;
        const int p = TILE_FASTEST ? ei % P : ei / C, c = TILE_FASTEST ? ei / P : ei % C;
        const WinogradTile tl = tile_of(p, HWt, Wt);
        T v[AL][AL];
        patch_transform<T, m>(x + (tl.n * C + c) * H * W, H, W, tl.a, tl.b, v);
#pragma unroll
        for (int xy = 0; xy < AL * AL; ++xy) V[xy * P * C + ei] = v[xy / AL][xy % AL];
    }
}

// U[xy] = A g A^T of every m x m tile g of dy (N, O, H, W): stored (alpha^2, O, P), p fastest
template <typename T, int m = 2>
__device__ __forceinline__ void winograd_dy(const T* __restrict__ gy, T* __restrict__ U, int N,
                                            int O, int H, int W)
{
    constexpr int AL = WinogradF<m>::ALPHA;
    const int Wt = W / m, HWt = (H / m) * Wt, P = N * HWt;
    GRID_STRIDE_LOOP(e, (long long)O * P) {
        const int ei = (int)e, o = ei / P, p = ei - o * P;
        const WinogradTile tl = tile_of(p, HWt, Wt);
        const T* g = gy + (tl.n * O + o) * H * W + m * tl.a * W + m * tl.b;
        T c[m][AL];                                  // A g, column by column of g
#pragma unroll
        for (int j = 0; j < m; ++j) {
            T col[m];
#pragma unroll
            for (int i = 0; i < m; ++i) col[i] = ldg(g + i * W + j);
            WinogradF<m>::a(col, c[j]);
        }
#pragma unroll
        for (int i = 0; i < AL; ++i) {
            T row[m], out[AL];
#pragma unroll
            for (int j = 0; j < m; ++j) row[j] = c[j][i];
            WinogradF<m>::a(row, out);               // (A g) A^T
#pragma unroll
            for (int j = 0; j < AL; ++j) U[((i * AL + j) * O + o) * P + p] = out[j];
        }
    }
}

// The GEMMs of every Winograd pass, one per point xy of the transformed domain (16 for the
// 4x4 domain of the 2x2 tiles, F(2x2, 3x3) and F(3x3, 2x2); 36 for the 6x6 one of the 4x4
// tiles, F(4x4, 3x3) and F(3x3, 4x4)), dense and row-major: ws[split, xy] (M x Ncols) =
// U[xy] (M x K) V[xy] (K x Ncols) over the split's K slice. The weight gradient: M = O,
// Ncols = C, K = P; the forward and the input gradient: M = R, Ncols = P, K = K (below). A
// loads run along k, B loads along the columns.
template <typename T>
struct WinogradGemm {
    const T* U; const T* V; T* ws;
    int M, Ncols, K, xy, split, points;
    struct Column { int c; };
    __device__ Column column(int col) const { return {col}; }
    __device__ T a(int m, int k) const { return ldg(U + (xy * M + m) * K + k); }
    __device__ T b(int k, const Column& cl) const { return ldg(V + (xy * K + k) * Ncols + cl.c); }
    __device__ void store(int m, int col, T v) const {
        ws[((split * points + xy) * M + m) * Ncols + col] = v;
    }
};

// sum_split ws[split, xy, e] over the slices of a split Winograd GEMM, in order (pts points
// per slice, plane elements per point)
template <typename T>
__device__ __forceinline__ T slices_sum(const T* __restrict__ ws, int splits, int pts, int xy,
                                        int plane, int e)
{
    T s = ws[xy * plane + e];
    for (int z = 1; z < splits; ++z) s += ws[(z * pts + xy) * plane + e];
    return s;
}

// dW[o, c] = G^T M G, M[xy] = sum_split ws[split, xy, o, c] (in order)
template <typename T, int m = 2>
__device__ __forceinline__ void winograd_out(const T* __restrict__ ws, T* __restrict__ gw,
                                             int splits, int O, int C)
{
    constexpr int AL = WinogradF<m>::ALPHA, PTS = AL * AL;
    const int OC = O * C;
    GRID_STRIDE_LOOP(e, (long long)OC) {
        const int oc = (int)e;
        T t[3][AL];                                  // G^T M, column by column of M
#pragma unroll
        for (int y = 0; y < AL; ++y) {
            T col[AL], out[3];
#pragma unroll
            for (int x = 0; x < AL; ++x) col[x] = slices_sum(ws, splits, PTS, AL * x + y, OC, oc);
            WinogradF<m>::gt(col, out);
#pragma unroll
            for (int i = 0; i < 3; ++i) t[i][y] = out[i];
        }
#pragma unroll
        for (int i = 0; i < 3; ++i) WinogradF<m>::gt(t[i], gw + oc * 9 + i * 3);   // (G^T M) G
    }
}

// winograd_x_<dt>(x, V, N, C, H, W)          winograd_dy_<dt>(gy, U, N, O, H, W)
// winograd_out_<dt>(ws, gw, splits, O, C)
// (and winograd4_x_<dt>, winograd4_dy_<dt>, winograd4_out_<dt>: F(3x3, 4x4), 36 points)
// winograd_gemm_<cfg>_<dt>(U, V, ws, M, Ncols, K, k_chunk, splits, points)   (WinogradGemm;
//   weight gradient: M = O, Ncols = C, K = P, points = 16)
//   grid (ceil(Ncols / BN), ceil(M / BM), points * splits)
#define WINOGRAD_KERNELS_M(T, DT, NAME, M)                                                  \
extern "C" __global__ void NAME##_x_##DT(const T* x, T* V, int N, int C, int H, int W)     \
{ patches_transform<T, false, M>(x, V, N, C, H, W); }                                       \
extern "C" __global__ void NAME##_dy_##DT(const T* gy, T* U, int N, int O, int H, int W)   \
{ winograd_dy<T, M>(gy, U, N, O, H, W); }                                                   \
extern "C" __global__ void NAME##_out_##DT(const T* ws, T* gw, int splits, int O, int C)   \
{ winograd_out<T, M>(ws, gw, splits, O, C); }
#define WINOGRAD_KERNELS(T, DT)                                                             \
    WINOGRAD_KERNELS_M(T, DT, winograd, 2)                                                  \
    WINOGRAD_KERNELS_M(T, DT, winograd4, 4)
INSTANTIATE_F32_F64(WINOGRAD_KERNELS)

#define WINOGRAD_GEMM(CFG, BM, BN, BK, TM, TN, MINB, T, DT)                                 \
extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN), MINB)                \
winograd_gemm_##CFG##_##DT(const T* __restrict__ U, const T* __restrict__ V,               \
                           T* __restrict__ ws, int M, int Ncols, int K, int k_chunk,       \
                           int splits, int points)                                         \
{                                                                                          \
    const int xy = blockIdx.z / splits, split = blockIdx.z - xy * splits;                 \
    WinogradGemm<T> prob{U, V, ws, M, Ncols, K, xy, split, points};                        \
    implicit_gemm<T, BM, BN, BK, TM, TN>(prob, M, Ncols, K, k_chunk, split);               \
}
CONV_TILE_CONFIGS(WINOGRAD_GEMM)

// ================================================================== Winograd convolution
// The forward of a 3x3, stride 1, padding 1 convolution by F(m x m, 3x3) (m = 2 on even H, W;
// m = 4 where 4 divides H and W), with the matrices of WinogradF<m>: each m x m output tile
// of y[n, o] is
//   y_tile = A^T [ sum_c (G w[o, c] G^T) (.) (B^T x_patch[n, c] B) ] A  (+ b[o]),
// x_patch the alpha x alpha patch of the zero-padded x under the tile (alpha = m + 2; for
// m = 2 the patch of the weight gradient). The input gradient is the same computation on dy:
// dx = conv3x3(dy, w') with padding 1 and the filters w'[c, o, i, j] = w[o, c, 2-i, 2-j]
// (transposed and turned by 180 degrees).
// R output channels (O, or C for the input gradient) from K channels summed (C, or O), P
// tiles p = (n, a, b), alpha^2 points xy = alpha x + y:
//   winograd_in:       V[xy, k, p] = (B^T patch B)[x, y]   one thread per (k, p), p fastest
//   winograd_filter:   U[xy, r, k] = (G g G^T)[x, y]       one thread per (r, k), k fastest;
//                      g = w[r, k] (flip = 0) or w[k, r] turned by 180 degrees (flip = 1)
//   winograd_gemm:     ws[split, xy, r, p] = sum_{k in slice} U[xy, r, k] V[xy, k, p]
//                      (WinogradGemm with M = R, Ncols = P, K = K, points = alpha^2)
//   winograd_conv_out: y[n, r, m*a+i, m*b+j] = (A^T M A)[i, j] (+ b[r]),
//                      M[xy] = sum_split ws[split, xy, r, p] (in order), p = (n, a, b)
// (the GEMM's A loads run along k, its B loads along p, both contiguous). The kernels of
// m = 4 are named winograd4_in, winograd4_filter and winograd4_conv_out.
// (winograd_in: patches_transform with TILE_FASTEST, above)

template <typename T, int m>
__device__ __forceinline__ void winograd_filter(const T* __restrict__ w, T* __restrict__ U,
                                                int O, int C, int flip)
{
    constexpr int AL = WinogradF<m>::ALPHA;
    const int OC = O * C;
    GRID_STRIDE_LOOP(e, (long long)OC) {
        const int ei = (int)e;                       // = r * K + k in both layouts
        int o, c;
        if (flip) { c = ei / O; o = ei - c * O; }    // r = c, k = o
        else      { o = ei / C; c = ei - o * C; }    // r = o, k = c
        const T* g = w + (o * C + c) * 9;
        T t[AL][3];                                  // G g, column by column of g
#pragma unroll
        for (int j = 0; j < 3; ++j) {
            T col[AL];
            if (flip) WinogradF<m>::g(ldg(g + 8 - j), ldg(g + 5 - j), ldg(g + 2 - j), col);
            else      WinogradF<m>::g(ldg(g + j), ldg(g + 3 + j), ldg(g + 6 + j), col);
#pragma unroll
            for (int i = 0; i < AL; ++i) t[i][j] = col[i];
        }
#pragma unroll
        for (int i = 0; i < AL; ++i) {
            T row[AL];
            WinogradF<m>::g(t[i][0], t[i][1], t[i][2], row);      // (G g) G^T
#pragma unroll
            for (int j = 0; j < AL; ++j) U[(i * AL + j) * OC + ei] = row[j];
        }
    }
}

template <typename T, int m>
__device__ __forceinline__ void winograd_conv_out(const T* __restrict__ ws,
                                                  const T* __restrict__ bias, int has_bias,
                                                  int relu, T* __restrict__ y, int splits,
                                                  int N, int R, int H, int W)
{
    constexpr int AL = WinogradF<m>::ALPHA, PTS = AL * AL;
    const int Wt = W / m, HWt = (H / m) * Wt, P = N * HWt, RP = R * P;
    GRID_STRIDE_LOOP(e, (long long)RP) {
        const int ei = (int)e, r = ei / P, p = ei - r * P;
        T t[m][AL];                                  // A^T M, column by column of M
#pragma unroll
        for (int yy = 0; yy < AL; ++yy) {
            T col[AL], out[m];
#pragma unroll
            for (int x = 0; x < AL; ++x) col[x] = slices_sum(ws, splits, PTS, AL * x + yy, RP, ei);
            WinogradF<m>::at(col, out);
#pragma unroll
            for (int i = 0; i < m; ++i) t[i][yy] = out[i];
        }
        const T b = has_bias ? ldg(bias + r) : T(0);
        const WinogradTile tl = tile_of(p, HWt, Wt);
        T* dst = y + ((tl.n * R + r) * H + m * tl.a) * W + m * tl.b;
#pragma unroll
        for (int i = 0; i < m; ++i) {                // (A^T M) A, + b, then the fused ReLU
            T row[m];
            WinogradF<m>::at(t[i], row);
#pragma unroll
            for (int j = 0; j < m; ++j) {
                const T v = row[j] + b;
                dst[i * W + j] = relu ? relu1(v) : v;
            }
        }
    }
}

// winograd_in_<dt>(x, V, N, K, H, W)       winograd_filter_<dt>(w, U, O, C, flip)
// winograd_conv_out_<dt>(ws, bias, has_bias, relu, y, splits, N, R, H, W)
// (and winograd4_in_<dt>, winograd4_filter_<dt>, winograd4_conv_out_<dt>: the same for m = 4)
// and the GEMMs: winograd_gemm_<cfg>_<dt>(U, V, ws, R, P, K, k_chunk, splits, points)
//   grid (ceil(P / BN), ceil(R / BM), points * splits)
#define WINOGRAD_CONV_KERNELS_M(T, DT, NAME, M)                                             \
extern "C" __global__ void NAME##_in_##DT(const T* x, T* V, int N, int K, int H, int W)    \
{ patches_transform<T, true, M>(x, V, N, K, H, W); }                                        \
extern "C" __global__ void NAME##_filter_##DT(const T* w, T* U, int O, int C, int flip)    \
{ winograd_filter<T, M>(w, U, O, C, flip); }                                               \
extern "C" __global__ void NAME##_conv_out_##DT(const T* ws, const T* bias, int has_bias,  \
                                                int relu, T* y, int splits, int N, int R,   \
                                                int H, int W)                              \
{ winograd_conv_out<T, M>(ws, bias, has_bias, relu, y, splits, N, R, H, W); }
#define WINOGRAD_CONV_KERNELS(T, DT)                                                        \
    WINOGRAD_CONV_KERNELS_M(T, DT, winograd, 2)                                             \
    WINOGRAD_CONV_KERNELS_M(T, DT, winograd4, 4)
INSTANTIATE_F32_F64(WINOGRAD_CONV_KERNELS)

