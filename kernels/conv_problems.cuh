// conv_problems.cuh -- the convolution's three passes as implicit-GEMM "problems", shared by
// the GEMM engines of conv.cu (fp32/fp64 FMAs) and conv_tf32.cu (TF32 tensor cores).
//
// Notation (as in minicnn/backend/numpy_backend.py):
//   x  (N, C, H, W)        input            w  (O, C, kH, kW)   weight
//   y  (N, O, Ho, Wo)      output           stride (sH, sW), padding (pH, pW)
//   x_pad[n, c, h, v] = x[n, c, h - pH, v - pW], or 0 outside x
//
//   y[n, o, p, q] = b[o] + sum_{c, i, j} w[o, c, i, j] * x_pad[n, c, p*sH + i, q*sW + j]
//
// "Implicit GEMM": each of the three computations below is a matrix product
// Out (M x Ncols) = A (M x K) * B (K x Ncols), but the matrices A and B are never built in
// memory. A small "problem" struct says, for a row/column/k index, which tensor element that
// matrix entry is (and that it is 0 where the window hangs over the padding); one GEMM engine
// (`implicit_gemm` below) does the tiling. The three problems are:
//
//   forward          M = O,  Ncols = N*Ho*Wo,  K = C*kH*kW
//                    A[o, (c,i,j)]        = w[o, c, i, j]          (w viewed as O x K: free)
//                    B[(c,i,j), (n,p,q)]  = x_pad[n, c, p*sH + i, q*sW + j]   (im2col, gathered)
//                    Out[o, (n,p,q)]      -> y[n, o, p, q] (+ b[o], and the ReLU if asked,
//                                            fused in the epilogue)
//
//   backward input   M = C,  Ncols = N*H*W,    K = O*kH*kW
//                    A[c, (o,i,j)]        = w[o, c, i, j]
//                    B[(o,i,j), (n,h,v)]  = gy[n, o, p, q]  if  h + pH = p*sH + i  and
//                                           v + pW = q*sW + j  for integers 0 <= p < Ho,
//                                           0 <= q < Wo;  else 0
//                    Out[c, (n,h,v)]      -> gx[n, c, h, v]
//                    (a *gather*: each input pixel sums the outputs whose window covered it,
//                    so no two threads write the same gx element and no atomics are needed.
//                    With stride > 1 only the taps with (h + pH - i) divisible by sH hit an
//                    output; the others are zeros of B.)
//
//   backward input when the windows partition the input (stride = kernel, no padding, H = Ho*kH,
//   W = Wo*kW; the U-Net's up-convolution is this case): every gx pixel is covered by
//   exactly one window, at tap (i, j) = (h % kH, v % kW) of output (p, q) = (h / kH, v / kW),
//   so instead of gathering over mostly-zero taps it is a dense GEMM over the *output*
//   pixels followed by a "pixel shuffle" that the epilogue does while storing:
//                    M = C*kH*kW,  Ncols = N*Ho*Wo,  K = O
//                    A[(c,i,j), o]        = w[o, c, i, j]
//                    B[o, (n,p,q)]        = gy[n, o, p, q]         (dense: no zeros)
//                    Out[(c,i,j), (n,p,q)] -> gx[n, c, p*kH + i, q*kW + j]
//                    (the general gather does kH*kW times the work here: 3 of every 4 taps
//                    of a 2x2/2 window are zeros of B.)
//
//   backward weight  M = O,  Ncols = C*kH*kW,  K = N*Ho*Wo
//                    A[o, (n,p,q)]        = gy[n, o, p, q]
//                    B[(n,p,q), (c,i,j)]  = x_pad[n, c, p*sH + i, q*sW + j]
//                    Out[o, (c,i,j)]      -> gw[o, c, i, j]
//                    K is huge (every output pixel of the batch) while M x Ncols is small, so
//                    the K range is split over gridDim.z ("split-K"): block z sums its own
//                    slice of K into its own slab ws[z] of a workspace, and `splitk_reduce`
//                    adds the slabs in a fixed order (deterministic, no atomics). With one
//                    split, the slab *is* gw.
//
// Index arithmetic is 32-bit `int` (the launcher checks that every tensor, and every GEMM
// dimension plus one tile of overhang, fits).
#pragma once
#include "common.cuh"

// MINICNN_CONV_FASTDIV: the integer divisions of the index arithmetic (by kH*kW, kW, Ho*Wo,
// ...: divisors fixed for the whole launch) become a multiply-high and a shift; see `Div`.
#ifndef MINICNN_CONV_FASTDIV
#define MINICNN_CONV_FASTDIV 1
#endif

// ================================================================== shapes
struct ConvShape {
    int N, C, H, W;        // x
    int O, kH, kW;         // w is (O, C, kH, kW)
    int sH, sW, pH, pW;    // stride, padding
    int Ho, Wo;            // y is (N, O, Ho, Wo)
};

// ================================================================== division by a launch constant
// A divisor d (1 <= d < 2^31) that is the same for every thread. It reads as the int d, and
// quot(n, d) = n / d for 0 <= n < 2^31. A 32-bit integer division is a ~20-instruction
// subroutine on the GPU, and the B-tile loads do two to four of them per element. With
// MINICNN_CONV_FASTDIV the quotient is instead
//     n / d = umulhi(n, mul) >> shift,   l = ceil(log2 d),  mul = ceil(2^(31+l) / d),
//     shift = l - 1                       (d > 1; d = 1 is n itself)
// (Granlund & Montgomery 1994, the round-up method; the same as CUTLASS's FastDivmod). mul
// fits in 32 bits because 2^(31+l) / d < 2^32 when d > 2^(l-1). The constructor's one 64-bit
// division per divisor runs once per thread, at the start of the kernel, and mul and shift
// take two registers per divisor, so only the divisors of the K loop's loads are Divs; the
// others (once per block, in the epilogue) stay ints and quot(n, int) divides.
__device__ __forceinline__ int quot(int n, int d) { return n / d; }   // an ordinary divisor
#if MINICNN_CONV_FASTDIV
struct Div {
    int d;
    unsigned mul;
    int shift;
    __device__ Div(int d_) : d(d_), mul(0), shift(0) {
        int l = 0;
        while ((1LL << l) < d) ++l;
        if (d > 1) {
            mul = (unsigned)(((1ULL << (31 + l)) + (unsigned long long)d - 1) / d);
            shift = l - 1;
        }
    }
    __device__ operator int() const { return d; }
};
__device__ __forceinline__ int quot(int n, const Div& d) {
    return d.d == 1 ? n : (int)(__umulhi((unsigned)n, d.mul) >> d.shift);
}
#else
typedef int Div;        // without the feature a Div is the divisor itself
#endif

// ================================================================== the three problems
// Each problem provides
//   Column column(int col)          per-column values a thread computes once per block
//                                   (the thread loads the same B column for the whole K loop)
//   T a(int m, int k)               A[m, k]          (0 <= m < M, 0 <= k < K guaranteed)
//   T b(int k, const Column& cl)    B[k, col]        (0 <= k < K, 0 <= col < Ncols)
//   void store(int m, int col, T v) write Out[m, col] = v (+ epilogue)
// Every quotient in them is quot(n, d) of a non-negative n by a constant of the launch (a Div
// where it is in the K loop); the remainder is then n - q*d.

// ---------------------------------------------------------------- forward
template <typename T>
struct ConvForward {
    const T* x; const T* w; const T* bias; T* y;
    int has_bias, relu;     // epilogue: + bias[o], then max(., 0) (relu1, as relu_forward)
    ConvShape s;
    int K;                  // C*kH*kW
    Div kHW, kW;            // kH*kW, kW: the divisors of every B load
    int HoWo, Wo, HW;       // Ho*Wo, Wo, H*W: once per block and in the epilogue

    struct Column { int xbase, h0, w0; };   // x offset of image n; top-left of the window
    __device__ Column column(int col) const {
        const int n = quot(col, HoWo), pq = col - n * HoWo;     // col = (n, p, q)
        const int p = quot(pq, Wo), q = pq - p * Wo;
        return {n * s.C * HW, p * s.sH - s.pH, q * s.sW - s.pW};  // window origin in x coords
    }
    __device__ T a(int m, int k) const { return ldg(w + m * K + k); }  // w as (O, K) row-major
    // Worked example: 3x3 kernel (kHW = 9), k = 14 -> c = 1, r = 5 -> i = 1, j = 2; for the
    // column of output (p, q) = (0, 4) with stride 2, padding 1: h0 = -1, w0 = 7, so the
    // entry is x[n, 1, 0, 9] (or 0 if W <= 9).
    __device__ T b(int k, const Column& cl) const {
        const int c = quot(k, kHW), r = k - c * kHW;            // k = (c, i, j)
        const int i = quot(r, kW), j = r - i * kW;
        const int h = cl.h0 + i, v = cl.w0 + j;                 // x row/col (unpadded)
        if (h < 0 || h >= s.H || v < 0 || v >= s.W) return T(0);  // in the zero padding
        return ldg(x + cl.xbase + (c * s.H + h) * s.W + v);
    }
    __device__ void store(int m, int col, T v) const {
        const int n = quot(col, HoWo), pq = col - n * HoWo;
        if (has_bias) v += ldg(bias + m);                       // fused bias: y = W*x + b
        if (relu) v = relu1(v);                                 // fused ReLU
        y[(n * s.O + m) * HoWo + pq] = v;
    }
};

// ---------------------------------------------------------------- backward input
template <typename T>
struct ConvBackwardInput {
    const T* gy; const T* w; T* gx;
    const T* bias; int has_bias;   // + bias[c] (the transposed convolution's forward)
    ConvShape s;
    Div kHW, kW, sH, sW;    // the divisors of every B load
    int HW, W, HoWo;

    struct Column { int gybase, hp, wp; };  // gy offset of image n; (h + pH, v + pW)
    __device__ Column column(int col) const {
        const int n = quot(col, HW), hv = col - n * HW;         // col = (n, h, v)
        const int h = quot(hv, W), v = hv - h * W;
        return {n * s.O * HoWo, h + s.pH, v + s.pW};            // position in x_pad
    }
    __device__ T a(int m, int k) const {                        // m = c, k = (o, i, j)
        const int o = quot(k, kHW), r = k - o * kHW;
        return ldg(w + (o * s.C + m) * kHW + r);                // w[o, m, i, j]
    }
    __device__ T b(int k, const Column& cl) const {
        const int o = quot(k, kHW), r = k - o * kHW;            // k = (o, i, j)
        const int i = quot(r, kW), j = r - i * kW;
        // x_pad row hp is tap i of output row p iff hp = p*sH + i. Example: stride 2, hp = 5:
        // tap i = 1 gives ph = 4 -> p = 2 (hit); tap i = 0 gives ph = 5, odd -> no output.
        const int ph = cl.hp - i, pw = cl.wp - j;
        if (ph < 0 || pw < 0) return T(0);                      // window would start above/left
        const int p = quot(ph, sH), q = quot(pw, sW);
        if (p * sH != ph || q * sW != pw) return T(0);          // not on the stride grid
        if (p >= s.Ho || q >= s.Wo) return T(0);                // past the last output
        return ldg(gy + cl.gybase + (o * s.Ho + p) * s.Wo + q);
    }
    __device__ void store(int m, int col, T v) const {
        const int n = quot(col, HW), hv = col - n * HW;
        if (has_bias) v += ldg(bias + m);
        gx[(n * s.C + m) * HW + hv] = v;
    }
};

// ---------------------------------------------------------------- backward input, partition
template <typename T>
struct ConvBackwardInputPartition {
    const T* gy; const T* w; T* gx;
    const T* bias; int has_bias;   // + bias[c] (the up-convolution's forward)
    ConvShape s;
    int kHW, kW, HoWo, Wo, HW;  // (no division in its K loop)
    int CkHW;           // C*kH*kW: the length of one w[o] (the row stride of A's k index)

    struct Column { int gyoff; };           // gy offset of (n, 0, p, q)
    __device__ Column column(int col) const {
        const int n = quot(col, HoWo), pq = col - n * HoWo;     // col = (n, p, q)
        return {n * s.O * HoWo + pq};
    }
    __device__ T a(int m, int k) const { return ldg(w + k * CkHW + m); }   // w[k, (c,i,j)=m]
    __device__ T b(int k, const Column& cl) const { return ldg(gy + cl.gyoff + k * HoWo); }
    __device__ void store(int m, int col, T v) const {
        const int c = quot(m, kHW), r = m - c * kHW;            // m = (c, i, j)
        const int i = quot(r, kW), j = r - i * kW;
        const int n = quot(col, HoWo), pq = col - n * HoWo;     // col = (n, p, q)
        const int p = quot(pq, Wo), q = pq - p * Wo;
        if (has_bias) v += ldg(bias + c);
        gx[(n * s.C + c) * HW + (p * s.kH + i) * s.W + q * s.kW + j] = v;
    }
};

// ---------------------------------------------------------------- backward weight
template <typename T>
struct ConvBackwardWeight {
    const T* gy; const T* x; T* ws;
    ConvShape s;
    Div HoWo, Wo;       // the divisors of every A and B load
    int kHW, kW, HW;
    int Ncols;          // C*kH*kW
    int slab;           // O*C*kH*kW: elements per split-K slab of ws

    struct Column { int cbase, i0, j0; };   // x offset of channel c; (i - pH, j - pW)
    __device__ Column column(int col) const {
        const int c = quot(col, kHW), r = col - c * kHW;        // col = (c, i, j)
        const int i = quot(r, kW), j = r - i * kW;
        return {c * HW, i - s.pH, j - s.pW};
    }
    __device__ T a(int m, int k) const {                        // m = o, k = (n, p, q)
        const int n = quot(k, HoWo), pq = k - n * HoWo;
        return ldg(gy + (n * s.O + m) * HoWo + pq);
    }
    __device__ T b(int k, const Column& cl) const {
        const int n = quot(k, HoWo), pq = k - n * HoWo;         // k = (n, p, q)
        const int p = quot(pq, Wo), q = pq - p * Wo;
        const int h = p * s.sH + cl.i0, v = q * s.sW + cl.j0;   // x row/col (unpadded)
        if (h < 0 || h >= s.H || v < 0 || v >= s.W) return T(0);
        return ldg(x + n * s.C * HW + cl.cbase + h * s.W + v);
    }
    __device__ void store(int m, int col, T v) const {
        ws[blockIdx.z * slab + m * Ncols + col] = v;            // this split's slab
    }
};

// The shape parameters of every entry point, and a ConvShape made of them.
#define CONV_SHAPE_PARAMS                                                              \
    int N, int C, int H, int W, int O, int kH, int kW, int sH, int sW, int pH, int pW,     \
    int Ho, int Wo
#define CONV_SHAPE_INIT {N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo}
