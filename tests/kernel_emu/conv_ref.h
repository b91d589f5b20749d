// conv_ref.h -- what the convolution checks of tests/kernel_emu share: the shapes, random
// operands with guard zones, the direct double-precision sums, and the comparison that prints
// one line per check. Included after cuda_emu.h and the kernel file by conv_check.cpp (the
// shipped kernels/conv.cu) and winograd_check.cpp (rung 5, dev/cuda/conv_5_winograd.cu).
#pragma once
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
    {3, 5, 8, 6, 9, 3, 3, 1, 1, 1, 1},       // even sizes, 3x3, stride 1, padding 1 (Winograd)
    {2, 40, 8, 12, 20, 3, 3, 1, 1, 1, 1},    // sizes 4 divides (Winograd's 4x4 tiles too)
    {4, 6, 16, 12, 5, 3, 3, 1, 1, 1, 1},     // 48 tiles of 4x4 (the weight gradient's K slices)
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


// The operands of one shape (inputs drawn in a fixed order) and the direct double-precision
// sums of its forward (+ bias, and with the ReLU), input gradient (+ a bias per input channel:
// the transposed convolution's forward) and weight gradient.
template <typename T>
struct Problem3 {
    const Shape s;
    const int Ho, Wo;
    const size_t nx, nw, ny;
    Buffer<T> x, w, b, gy, bc;
    std::vector<double> y_ref, yr_ref, gx_ref, gxb_ref, gw_ref;
    explicit Problem3(const Shape& s_)
        : s(s_), Ho((s.H + 2 * s.pH - s.kH) / s.sH + 1), Wo((s.W + 2 * s.pW - s.kW) / s.sW + 1),
          nx((size_t)s.N * s.C * s.H * s.W), nw((size_t)s.O * s.C * s.kH * s.kW),
          ny((size_t)s.N * s.O * Ho * Wo), x(nx, false), w(nw, false), b(s.O, false),
          gy(ny, false), bc(s.C, false), y_ref(ny), gx_ref(nx, 0.0), gw_ref(nw, 0.0)
    {
        auto X = [&](int n, int c, int h, int v) -> double {      // x_pad
            h -= s.pH; v -= s.pW;
            if (h < 0 || h >= s.H || v < 0 || v >= s.W) return 0.0;
            return x.v[((size_t)(n * s.C + c) * s.H + h) * s.W + v];
        };
        for (int n = 0; n < s.N; ++n) for (int o = 0; o < s.O; ++o)
        for (int p = 0; p < Ho; ++p) for (int q = 0; q < Wo; ++q) {
            const size_t yi = ((size_t)(n * s.O + o) * Ho + p) * Wo + q;
            double acc = b.v[o];
            for (int c = 0; c < s.C; ++c) for (int i = 0; i < s.kH; ++i)
            for (int j = 0; j < s.kW; ++j) {
                const size_t wi = ((size_t)(o * s.C + c) * s.kH + i) * s.kW + j;
                const int h = p * s.sH + i, v = q * s.sW + j;
                acc += (double)w.v[wi] * X(n, c, h, v);
                gw_ref[wi] += (double)gy.v[yi] * X(n, c, h, v);
                const int hu = h - s.pH, vu = v - s.pW;                 // unpadded position
                if (hu >= 0 && hu < s.H && vu >= 0 && vu < s.W)
                    gx_ref[((size_t)(n * s.C + c) * s.H + hu) * s.W + vu] +=
                        (double)w.v[wi] * gy.v[yi];
            }
            y_ref[yi] = acc;
        }
        yr_ref = y_ref;
        for (double& v : yr_ref) v = std::max(v, 0.0);
        gxb_ref = gx_ref;
        for (size_t e = 0; e < nx; ++e) gxb_ref[e] += bc.v[e / ((size_t)s.H * s.W) % s.C];
    }
    std::string tag(const char* tile, const char* dt) const {
        char t[160];
        std::snprintf(t, sizeof t, "%s %s N%d C%d %dx%d O%d k%dx%d s%dx%d p%dx%d", tile, dt,
                      s.N, s.C, s.H, s.W, s.O, s.kH, s.kW, s.sH, s.sW, s.pH, s.pW);
        return t;
    }
};

// The tile configurations of kernels/conv.cu (name, BM, BN, BK, threads), for the checks'
// tables: TILES_F32(TILE) and TILES_F64(TILE) expand TILE(...) once per tile, each followed by
// a comma (the 8x8 tiles m128n64 and m64n128 only in MINICNN_CONV_TILES builds).
#if MINICNN_CONV_TILES
#define TILES_F32_EXTRA(TILE) TILE(m128n64, 128, 64, 8, 128, f32), TILE(m64n128, 64, 128, 8, 128, f32),
#else
#define TILES_F32_EXTRA(TILE)
#endif
#define TILES_F32(TILE) TILE(m32n128, 32, 128, 16, 256, f32), TILE(m64n64, 64, 64, 16, 256, f32), \
                        TILE(m128n128, 128, 128, 8, 256, f32), TILES_F32_EXTRA(TILE)
#define TILES_F64(TILE) TILE(m32n128, 32, 128, 16, 256, f64), TILE(m64n64, 64, 64, 16, 256, f64),

inline int cdiv(long long a, long long c) { return (int)((a + c - 1) / c); }

inline int report()
{
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
