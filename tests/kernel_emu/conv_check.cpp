// conv_check.cpp -- kernels/conv.cu run by cuda_emu.h on the CPU, against plain loops.
//
// For each tile configuration, dtype and shape below: the forward, the input gradient and
// the weight gradient (with 1 and with 3 split-K slices, reduced by splitk_reduce) are
// compared with a direct double-precision evaluation of their defining sums. Outputs start
// as NaN (so an element the kernel forgets is caught) and are followed by a guard zone that
// must stay untouched (so a write past the end is caught). Prints one line per check and
// exits 1 if any fails. Last, the integer division helper `quot` against plain division.
// Built with AddressSanitizer (-fsanitize=address), the guard zones are poisoned, so that a
// *read* past the end of any buffer (inputs too) or before its start stops the program.
//
// Build and run (tests/test_cuda_without_gpu.py does this):
//   g++ -std=c++20 -O2 -fno-strict-aliasing -I tests/kernel_emu -I kernels -x c++ \
//       tests/kernel_emu/conv_check.cpp -o conv_check && ./conv_check
#include "cuda_emu.h"
#include "conv.cu"

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <type_traits>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#endif

struct Shape { int N, C, H, W, O, kH, kW, sH, sW, pH, pW; };

static const Shape SHAPES[] = {
    {2, 3, 7, 6, 5, 3, 3, 1, 1, 1, 1},       // padded 3x3, K = 27 (not a multiple of BK)
    {1, 4, 9, 9, 33, 3, 3, 2, 2, 1, 1},      // stride 2; O = 33 crosses a 32-row tile
    {2, 5, 4, 6, 7, 2, 2, 2, 2, 0, 0},       // 2x2 stride 2: the U-Net's up-convolution
    {3, 17, 5, 5, 3, 1, 1, 1, 1, 0, 0},      // 1x1 (the head)
    {1, 2, 11, 13, 4, 5, 3, 1, 2, 2, 0},     // non-square kernel, stride and padding
    {2, 40, 10, 10, 70, 3, 3, 1, 1, 1, 1},   // several tiles in both directions, K = 360
    {1, 130, 6, 6, 140, 3, 3, 1, 1, 1, 1},   // M = 140 for the 128x128 tile, K = 1170
    {2, 40, 6, 6, 70, 2, 2, 2, 2, 0, 0},     // up-convolution, several tiles, K = 70
    {1, 3, 6, 9, 5, 3, 3, 3, 3, 0, 0},       // 3x3 windows with stride 3 partition 6x9
    {1, 3, 7, 9, 5, 3, 3, 3, 3, 0, 0},       // stride = kernel, but row 6 is in no window
    {3, 5, 8, 6, 9, 3, 3, 1, 1, 1, 1},       // even sizes, 3x3, stride 1, padding 1: Winograd
    {2, 40, 8, 12, 20, 3, 3, 1, 1, 1, 1},    // sizes 4 divides: Winograd's 4x4 tiles too
    {4, 6, 16, 12, 5, 3, 3, 1, 1, 1, 1},     // 48 tiles of 4x4: the weight gradient's K slices
    {2, 20, 9, 11, 8, 1, 1, 1, 1, 0, 0},     // 1x1 with O = 8: the narrow kernels' widest
};

static unsigned long long lcg_state = 12345;
static double uniform() {                   // in [-1, 1)
    lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(lcg_state >> 11) / (double)(1ULL << 53) * 2.0 - 1.0;
}

static int failures = 0, checks = 0;
constexpr int GUARD = 300;                   // more than one tile of overhang
constexpr float SENTINEL = 12345.0f;

template <typename T>
struct Buffer {                              // n elements + a guard zone
    std::vector<T> v;
    size_t n;
    explicit Buffer(size_t n_, bool fill_nan) : v(n_ + GUARD, T(SENTINEL)), n(n_) {
        for (size_t i = 0; i < n; ++i)
            v[i] = fill_nan ? std::numeric_limits<T>::quiet_NaN() : T(uniform());
        ASAN_POISON_MEMORY_REGION(v.data() + n, GUARD * sizeof(T));
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { ASAN_UNPOISON_MEMORY_REGION(v.data() + n, GUARD * sizeof(T)); }
    T* data() { return v.data(); }
    bool guard_intact() const {
        ASAN_UNPOISON_MEMORY_REGION(v.data() + n, GUARD * sizeof(T));
        bool intact = true;
        for (size_t i = n; i < n + GUARD; ++i) if (v[i] != T(SENTINEL)) intact = false;
        ASAN_POISON_MEMORY_REGION(v.data() + n, GUARD * sizeof(T));
        return intact;
    }
};

template <typename T>
void compare(const std::string& what, const Buffer<T>& out, const std::vector<double>& ref)
{
    double err = 0, scale = 1;
    bool finite = true;
    for (size_t i = 0; i < ref.size(); ++i) {
        if (!std::isfinite((double)out.v[i])) finite = false;
        err = std::max(err, std::fabs((double)out.v[i] - ref[i]));
        scale = std::max(scale, std::fabs(ref[i]));
    }
    const double tol = sizeof(T) == 4 ? 2e-5 : 1e-12;
    const bool ok = finite && out.guard_intact() && err / scale <= tol;
    ++checks;
    if (!ok) ++failures;
    std::printf("%s %-64s rel err %.2e%s%s\n", ok ? "ok  " : "FAIL", what.c_str(), err / scale,
                finite ? "" : "  (NaN: an element was not written)",
                out.guard_intact() ? "" : "  (wrote past the end)");
}

template <typename T>
using FwdFn = void (*)(const T*, const T*, const T*, T*, int, int, const int2*, int, int, int, int,
                       int, int, int, int, int, int, int, int, int);
template <typename T>
using BinFn = void (*)(const T*, const T*, T*, const T*, int, const int2*, int, int, int, int, int,
                       int, int, int, int, int, int, int, int);
template <typename T>
using BinPartFn = void (*)(const T*, const T*, T*, const T*, int, int, int, int, int, int, int, int,
                           int, int, int, int, int, int);
template <typename T>
using BwFn = void (*)(const T*, const T*, T*, int, int, int, int, int, int, int, int, int, int,
                      int, int, int, int);
template <typename T>
using ReduceFn = void (*)(const T*, T*, int, long long);
template <typename T>
using WgFn = void (*)(const T*, const T*, T*, int, int, int, int, int, int);
template <typename T>
using WtFn = void (*)(const T*, T*, int, int, int, int);        // winograd_x, winograd_dy
template <typename T>
using WoutFn = void (*)(const T*, T*, int, int, int);

template <typename T>
using WfFn = void (*)(const T*, T*, int, int, int);              // winograd_filter
template <typename T>
using WcoFn = void (*)(const T*, const T*, int, int, T*, int, int, int, int, int);   // .._conv_out

template <typename T>
struct Winograd {                                  // the entry points
    WgFn<T> gemm; WtFn<T> x, dy; WoutFn<T> out;    // the weight gradient
    WtFn<T> in; WfFn<T> filter; WcoFn<T> conv_out;   // forward, input gradient (same gemm)
    WtFn<T> in4; WfFn<T> filter4; WcoFn<T> conv_out4;   // the same by F(4x4, 3x3)
    WtFn<T> x4, dy4; WoutFn<T> out4;                  // the weight gradient by F(3x3, 4x4)
};

template <typename T>
struct Tile {
    const char* name; int BM, BN, BK, threads; FwdFn<T> fwd; BinFn<T> bin; BwFn<T> bw;
    BinPartFn<T> bin_part; BinFn<T> bin_unit;      // bin_unit: KTABLE builds, else nullptr
    Winograd<T> wg;                                // WINOGRAD builds, else nullptrs
};

template <typename T>
void check_shape(const Tile<T>& tile, const Shape& s, ReduceFn<T> reduce, const char* dt)
{
    const int Ho = (s.H + 2 * s.pH - s.kH) / s.sH + 1, Wo = (s.W + 2 * s.pW - s.kW) / s.sW + 1;
    const size_t nx = (size_t)s.N * s.C * s.H * s.W, nw = (size_t)s.O * s.C * s.kH * s.kW;
    const size_t ny = (size_t)s.N * s.O * Ho * Wo;
    Buffer<T> x(nx, false), w(nw, false), b(s.O, false), gy(ny, false), bc(s.C, false);
    auto X = [&](int n, int c, int h, int v) -> double {      // x_pad
        h -= s.pH; v -= s.pW;
        if (h < 0 || h >= s.H || v < 0 || v >= s.W) return 0.0;
        return x.v[((size_t)(n * s.C + c) * s.H + h) * s.W + v];
    };
    std::vector<double> y_ref(ny), gx_ref(nx, 0.0), gw_ref(nw, 0.0);
    for (int n = 0; n < s.N; ++n) for (int o = 0; o < s.O; ++o)
    for (int p = 0; p < Ho; ++p) for (int q = 0; q < Wo; ++q) {
        const size_t yi = ((size_t)(n * s.O + o) * Ho + p) * Wo + q;
        double acc = b.v[o];
        for (int c = 0; c < s.C; ++c) for (int i = 0; i < s.kH; ++i) for (int j = 0; j < s.kW; ++j) {
            const size_t wi = ((size_t)(o * s.C + c) * s.kH + i) * s.kW + j;
            const int h = p * s.sH + i, v = q * s.sW + j;
            acc += (double)w.v[wi] * X(n, c, h, v);
            gw_ref[wi] += (double)gy.v[yi] * X(n, c, h, v);
            const int hu = h - s.pH, vu = v - s.pW;                 // unpadded position
            if (hu >= 0 && hu < s.H && vu >= 0 && vu < s.W)
                gx_ref[((size_t)(n * s.C + c) * s.H + hu) * s.W + vu] += (double)w.v[wi] * gy.v[yi];
        }
        y_ref[yi] = acc;
    }
    char tag[160];
    std::snprintf(tag, sizeof tag, "%s %s N%d C%d %dx%d O%d k%dx%d s%dx%d p%dx%d", tile.name, dt,
                  s.N, s.C, s.H, s.W, s.O, s.kH, s.kW, s.sH, s.sW, s.pH, s.pW);
    const std::string t(tag);
    const dim3 block(tile.threads);
    auto cdiv = [](long long a, long long c) { return (int)((a + c - 1) / c); };

    // MINICNN_CONV_KTABLE builds read the k tables (built as the launcher builds them)
    const int kHW = s.kH * s.kW;
    std::vector<int2> fwd_tab(s.C * kHW), bin_tab(s.O * kHW);
    for (int k = 0; k < s.C * kHW; ++k) {
        const int c = k / kHW, i = k % kHW / s.kW, j = k % s.kW;
        fwd_tab[k] = {c * s.H * s.W + i * s.W + j, i << 16 | j};
    }
    for (int k = 0; k < s.O * kHW; ++k) {
        const int o = k / kHW, i = k % kHW / s.kW, j = k % s.kW;
        bin_tab[k] = {o * Ho * Wo, i << 16 | j};
    }
    const int2* fwd_ktab = MINICNN_CONV_KTABLE ? fwd_tab.data() : nullptr;
    const int2* bin_ktab = MINICNN_CONV_KTABLE ? bin_tab.data() : nullptr;

    // the forward, without and with the ReLU fused into the epilogue
    std::vector<double> yr_ref(y_ref);
    for (double& v : yr_ref) v = std::max(v, 0.0);
    for (int relu : {0, 1}) {
        Buffer<T> y(ny, true);
        emu_launch(dim3(cdiv((long long)s.N * Ho * Wo, tile.BN), cdiv(s.O, tile.BM)), block,
                   tile.fwd, (const T*)x.data(), (const T*)w.data(), (const T*)b.data(), y.data(),
                   1, relu, fwd_ktab, s.N, s.C, s.H, s.W, s.O, s.kH, s.kW, s.sH, s.sW, s.pH, s.pW,
                   Ho, Wo);
        compare(t + (relu ? " forward + ReLU" : " forward"), y, relu ? yr_ref : y_ref);
    }

    // the input gradient, without and with a bias per input channel (the transposed
    // convolution's forward, which these kernels compute too)
    std::vector<double> gxb_ref(gx_ref);
    for (size_t e = 0; e < nx; ++e) gxb_ref[e] += bc.v[e / ((size_t)s.H * s.W) % s.C];
    for (int hb : {0, 1}) {
        const std::string bt = hb ? " + bias" : "";
        const std::vector<double>& ref = hb ? gxb_ref : gx_ref;
        // the general kernel, and (KTABLE builds, stride 1) the unit-stride one
        const bool unit = tile.bin_unit && s.sH == 1 && s.sW == 1;
        for (BinFn<T> fn : {tile.bin, unit ? tile.bin_unit : nullptr}) {
            if (!fn) continue;
            Buffer<T> gx(nx, true);
            emu_launch(dim3(cdiv((long long)s.N * s.H * s.W, tile.BN), cdiv(s.C, tile.BM)), block,
                       fn, (const T*)gy.data(), (const T*)w.data(), gx.data(),
                       (const T*)bc.data(), hb, bin_ktab,
                       s.N, s.C, s.H, s.W, s.O, s.kH, s.kW, s.sH, s.sW, s.pH, s.pW, Ho, Wo);
            compare(t + " backward input" + (fn == tile.bin ? "" : " (stride 1)") + bt, gx, ref);
        }
        // windows that partition the input: the dense GEMM + pixel-shuffle kernel
        if (s.sH == s.kH && s.sW == s.kW && s.pH == 0 && s.pW == 0 && s.H == Ho * s.kH &&
            s.W == Wo * s.kW) {
            Buffer<T> gxp(nx, true);
            emu_launch(dim3(cdiv((long long)s.N * Ho * Wo, tile.BN),
                            cdiv(s.C * s.kH * s.kW, tile.BM)),
                       block, tile.bin_part, (const T*)gy.data(), (const T*)w.data(), gxp.data(),
                       (const T*)bc.data(), hb,
                       s.N, s.C, s.H, s.W, s.O, s.kH, s.kW, s.sH, s.sW, s.pH, s.pW, Ho, Wo);
            compare(t + " backward input (partition)" + bt, gxp, ref);
        }
    }

    // the narrow 1x1 kernels (not tiled: checked once per shape and dtype, with the m64n64 run)
    if (s.kH == 1 && s.kW == 1 && s.sH == 1 && s.sW == 1 && s.pH == 0 && s.pW == 0 &&
        s.O <= NARROW_MAX && std::string(tile.name) == "m64n64") {
        const int S = s.H * s.W;
        for (int relu : {0, 1}) {
            Buffer<T> yn(ny, true);
            if constexpr (std::is_same_v<T, float>)
                emu_launch(dim3(3), dim3(64), conv1x1_forward_f32, (const T*)x.data(),
                           (const T*)w.data(), (const T*)b.data(), 1, relu, yn.data(), s.N, s.C,
                           s.O, S);
            else
                emu_launch(dim3(3), dim3(64), conv1x1_forward_f64, (const T*)x.data(),
                           (const T*)w.data(), (const T*)b.data(), 1, relu, yn.data(), s.N, s.C,
                           s.O, S);
            compare(t + (relu ? " forward + ReLU, narrow 1x1" : " forward, narrow 1x1"), yn,
                    relu ? yr_ref : y_ref);
        }
        for (int hb : {0, 1}) {
            Buffer<T> gxn(nx, true);
            if constexpr (std::is_same_v<T, float>)
                emu_launch(dim3(3), dim3(64), conv1x1_backward_input_f32, (const T*)gy.data(),
                           (const T*)w.data(), (const T*)bc.data(), hb, gxn.data(), s.N, s.C,
                           s.O, S);
            else
                emu_launch(dim3(3), dim3(64), conv1x1_backward_input_f64, (const T*)gy.data(),
                           (const T*)w.data(), (const T*)bc.data(), hb, gxn.data(), s.N, s.C,
                           s.O, S);
            compare(t + (hb ? " backward input + bias, narrow 1x1" : " backward input, narrow 1x1"),
                    gxn, hb ? gxb_ref : gx_ref);
        }
        // the weight gradient: pixel chunks of `len` (one chunk, then about three), the
        // channel groups of NARROW_MAX, the chunks added by splitk_reduce
        const int P = s.N * S;
        for (int len : {P, (P + 2) / 3}) {
            const int chunks = cdiv(P, len), groups = cdiv(s.C, NARROW_MAX);
            Buffer<T> ws((size_t)chunks * s.O * s.C, true), gwn(nw, true);
            T* dst = chunks == 1 ? gwn.data() : ws.data();
            if constexpr (std::is_same_v<T, float>)
                emu_launch(dim3(chunks, groups), dim3(NARROW_THREADS), conv1x1_backward_weight_f32,
                           (const T*)gy.data(), (const T*)x.data(), dst, s.N, s.C, s.O, S, len);
            else
                emu_launch(dim3(chunks, groups), dim3(NARROW_THREADS), conv1x1_backward_weight_f64,
                           (const T*)gy.data(), (const T*)x.data(), dst, s.N, s.C, s.O, S, len);
            if (chunks > 1)
                emu_launch(dim3(2), dim3(64), reduce, (const T*)ws.data(), gwn.data(), chunks,
                           (long long)nw);
            compare(t + " backward weight, narrow 1x1, " + std::to_string(chunks) + " chunk(s)",
                    gwn, gw_ref);
        }
    }

    const int K = s.N * Ho * Wo;
    for (int want : {1, 3}) {
        const int k_chunk = cdiv(cdiv(K, want), tile.BK) * tile.BK;
        const int splits = cdiv(K, k_chunk);
        Buffer<T> ws(nw * splits, true), gw(nw, true);
        emu_launch(dim3(cdiv((long long)s.C * s.kH * s.kW, tile.BN), cdiv(s.O, tile.BM), splits),
                   block, tile.bw, (const T*)gy.data(), (const T*)x.data(),
                   splits == 1 ? gw.data() : ws.data(), k_chunk,
                   s.N, s.C, s.H, s.W, s.O, s.kH, s.kW, s.sH, s.sW, s.pH, s.pW, Ho, Wo);
        if (splits > 1)
            emu_launch(dim3(3), dim3(64), reduce, (const T*)ws.data(), gw.data(), splits,
                       (long long)nw);
        compare(t + " backward weight, " + std::to_string(splits) + " split(s)", gw, gw_ref);
    }
#if MINICNN_CONV_WINOGRAD
    // the Winograd weight gradient (3x3, stride 1, padding 1, even sizes) by F(3x3, 2x2) and,
    // where 4 divides H and W, F(3x3, 4x4): the two transforms, the GEMMs (16 or 36 points)
    // with 1 and 3 K slices, the output transform with the slices' sum
    if (tile.wg.gemm && s.kH == 3 && s.kW == 3 && s.sH == 1 && s.sW == 1 && s.pH == 1 &&
        s.pW == 1 && s.H % 2 == 0 && s.W % 2 == 0) {
        for (int m : {2, 4}) {
            if (s.H % m != 0 || s.W % m != 0) continue;
            const int P = s.N * (s.H / m) * (s.W / m), pts = (m + 2) * (m + 2);
            Buffer<T> V((size_t)pts * P * s.C, true), U((size_t)pts * s.O * P, true);
            emu_launch(dim3(2), dim3(32), m == 2 ? tile.wg.x : tile.wg.x4, (const T*)x.data(),
                       V.data(), s.N, s.C, s.H, s.W);
            emu_launch(dim3(2), dim3(32), m == 2 ? tile.wg.dy : tile.wg.dy4, (const T*)gy.data(),
                       U.data(), s.N, s.O, s.H, s.W);
            for (int want : {1, 3}) {
                const int k_chunk = cdiv(cdiv(P, want), tile.BK) * tile.BK;
                const int splits = cdiv(P, k_chunk);
                Buffer<T> ws((size_t)splits * pts * s.O * s.C, true), gw(nw, true);
                emu_launch(dim3(cdiv(s.C, tile.BN), cdiv(s.O, tile.BM), pts * splits), block,
                           tile.wg.gemm, (const T*)U.data(), (const T*)V.data(), ws.data(), s.O,
                           s.C, P, k_chunk, splits, pts);
                emu_launch(dim3(2), dim3(32), m == 2 ? tile.wg.out : tile.wg.out4,
                           (const T*)ws.data(), gw.data(), splits, s.O, s.C);
                compare(t + " backward weight, Winograd" + (m == 2 ? ", " : " 4x4, ") +
                        std::to_string(splits) + " split(s)", gw, gw_ref);
            }
        }
        // the forward (with the bias) and the input gradient (the filters turned, flip = 1) by
        // F(2x2, 3x3) and, where 4 divides H and W, F(4x4, 3x3): R channels out of K summed,
        // with 1 and 2-3 K slices
        for (int m : {2, 4}) {
            if (s.H % m != 0 || s.W % m != 0) continue;
            const int Pm = s.N * (s.H / m) * (s.W / m), pts = (m + 2) * (m + 2);
            const std::string how = m == 2 ? ", Winograd, " : ", Winograd 4x4, ";
            for (int flip : {0, 1}) {
                const int R = flip ? s.C : s.O, K = flip ? s.O : s.C;
                Buffer<T> Vc((size_t)pts * K * Pm, true), Uc((size_t)pts * R * K, true);
                emu_launch(dim3(2), dim3(32), m == 2 ? tile.wg.in : tile.wg.in4,
                           (const T*)(flip ? gy : x).data(), Vc.data(), s.N, K, s.H, s.W);
                emu_launch(dim3(2), dim3(32), m == 2 ? tile.wg.filter : tile.wg.filter4,
                           (const T*)w.data(), Uc.data(), s.O, s.C, flip);
                for (int want : {1, 3}) {
                    const int k_chunk = cdiv(cdiv(K, want), tile.BK) * tile.BK;
                    const int splits = cdiv(K, k_chunk);
                    Buffer<T> ws((size_t)splits * pts * R * Pm, true);
                    emu_launch(dim3(cdiv(Pm, tile.BN), cdiv(R, tile.BM), pts * splits), block,
                               tile.wg.gemm, (const T*)Uc.data(), (const T*)Vc.data(),
                               ws.data(), R, Pm, K, k_chunk, splits, pts);
                    for (int relu : {0, 1}) {                 // the forward with the ReLU fused
                        if (flip && relu) continue;
                        Buffer<T> out(flip ? nx : ny, true);
                        emu_launch(dim3(2), dim3(32), m == 2 ? tile.wg.conv_out : tile.wg.conv_out4,
                                   (const T*)ws.data(), (const T*)b.data(), 1 - flip, relu,
                                   out.data(), splits, s.N, R, s.H, s.W);
                        compare(t + (flip ? " backward input" : relu ? " forward + ReLU" :
                                     " forward") + how + std::to_string(splits) + " split(s)",
                                out, flip ? gx_ref : relu ? yr_ref : y_ref);
                    }
                }
            }
        }
    }
#endif
}

// quot(n, Div(d)) == n / d (the division of the kernels' index arithmetic, a multiply-high
// and a shift with MINICNN_CONV_FASTDIV): every d up to 4096 and some large ones, against
// n = 0 .. 3d+2, the last multiples of d below 2^31 and their neighbours, and random n.
static void check_div()
{
    std::vector<int> ds;
    for (int d = 1; d <= 4096; ++d) ds.push_back(d);
    for (int d : {9216, 36864, 57600, 230400, 46341, 65537, (1 << 30) - 1, 1 << 30,
                  (1 << 30) + 1, 2147483646, 2147483647})
        ds.push_back(d);
    long long bad = 0, tried = 0;
    for (int d : ds) {
        const Div div(d);
        auto test = [&](long long n) {
            if (n < 0 || n > 2147483647LL) return;
            ++tried;
            if (quot((int)n, div) != (int)(n / d) && bad++ < 5)
                std::printf("FAIL quot(%lld, %d) = %d, not %lld\n", n, d, quot((int)n, div), n / d);
        };
        for (long long n = 0; n < 3LL * d + 3 && n < 100000; ++n) test(n);
        const long long top = 2147483647LL / d * d;
        for (long long m = top - 3LL * d; m <= top; m += d) { test(m - 1); test(m); test(m + 1); }
        for (int r = 0; r < 200; ++r) test((long long)((uniform() + 1.0) * 0.5 * 2147483647.0));
    }
    ++checks;
    if (bad) ++failures;
    std::printf("%s quot(n, Div(d)) == n / d: %zu divisors, %lld numerators, %lld wrong\n",
                bad ? "FAIL" : "ok  ", ds.size(), tried, bad);
}

int main()
{
#if MINICNN_CONV_KTABLE
#define UNIT(NAME, DT) conv2d_backward_input_unit_##NAME##_##DT
#else
#define UNIT(NAME, DT) nullptr
#endif
#if MINICNN_CONV_WINOGRAD
#define WG(NAME, DT) {winograd_gemm_##NAME##_##DT, winograd_x_##DT, winograd_dy_##DT,        \
                      winograd_out_##DT, winograd_in_##DT, winograd_filter_##DT,             \
                      winograd_conv_out_##DT, winograd4_in_##DT, winograd4_filter_##DT,      \
                      winograd4_conv_out_##DT, winograd4_x_##DT, winograd4_dy_##DT,          \
                      winograd4_out_##DT}
#else
#define WG(NAME, DT) {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, \
                      nullptr, nullptr, nullptr, nullptr, nullptr}
#endif
#define TILE(NAME, BM, BN, BK, THREADS, DT)                                                 \
    {#NAME, BM, BN, BK, THREADS, conv2d_forward_##NAME##_##DT,                              \
     conv2d_backward_input_##NAME##_##DT, conv2d_backward_weight_##NAME##_##DT,             \
     conv2d_backward_input_partition_##NAME##_##DT, UNIT(NAME, DT), WG(NAME, DT)}
    const Tile<float> f32_tiles[] = {TILE(m32n128, 32, 128, 16, 256, f32),
                                     TILE(m64n64, 64, 64, 16, 256, f32),
                                     TILE(m128n128, 128, 128, 8, 256, f32),
#if MINICNN_CONV_TILES
                                     TILE(m128n64, 128, 64, 8, 128, f32),
                                     TILE(m64n128, 64, 128, 8, 128, f32),
#endif
    };
    const Tile<double> f64_tiles[] = {TILE(m32n128, 32, 128, 16, 256, f64),
                                      TILE(m64n64, 64, 64, 16, 256, f64)};
#undef TILE
#undef UNIT
    for (const Shape& s : SHAPES) {
        for (const auto& tile : f32_tiles) check_shape<float>(tile, s, splitk_reduce_f32, "f32");
        for (const auto& tile : f64_tiles) check_shape<double>(tile, s, splitk_reduce_f64, "f64");
    }
    check_div();
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
