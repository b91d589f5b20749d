// pool_check.cpp -- kernels/pool.cu run by cuda_emu.h on the CPU, against plain loops.
//
// Forward (max and the window offset of the first maximum, NaN winning) and backward (each
// input pixel's sum over the windows whose argmax it is, added in window-offset order i, j
// ascending, as numpy_backend adds them) for float and double, uint8 and int32 indexes, on
// shapes with overlapping and non-overlapping windows, many ties (values from {-1, 0, 1})
// and some NaNs; both widths of the index decomposition (the timed 64-bit kernels and the
// untimed `_div32` ones); compared bit for bit. Outputs start as a sentinel and are followed
// by a guard zone. Prints failures and "<checks> checks, <failures> failures" last.
//
//   g++ -std=c++20 -O2 -I tests/kernel_emu -I kernels -x c++ \
//       tests/kernel_emu/pool_check.cpp -o pool_check && ./pool_check
#include "cuda_emu.h"
#include "pool.cu"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

static int failures = 0, checks = 0;
constexpr int GUARD = 16;

template <typename T>
static bool same_bits(T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; }

struct Case { int N, C, H, W, kH, kW, sH, sW; };

template <typename T, typename I>
static void check_case(const Case& c, unsigned long long seed,
                       void (*fwd)(const T*, T*, I*, int, int, int, int, int, int, int, int, int),
                       void (*bwd)(const T*, const I*, T*, int, int, int, int, int, int, int,
                                   int, int))
{
    const int NC = c.N * c.C, Ho = (c.H - c.kH) / c.sH + 1, Wo = (c.W - c.kW) / c.sW + 1;
    const int nx = NC * c.H * c.W, ny = NC * Ho * Wo;
    std::vector<T> x(nx), gy(ny), y(ny + GUARD, T(777)), gx(nx + GUARD, T(777));
    std::vector<I> idx(ny + GUARD, I(99));
    for (int e = 0; e < nx; ++e) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        const int r = (int)(seed >> 59);                                 // 0..31
        x[e] = r == 0 ? T(NAN) : T(r % 3 - 1);                          // ties, some NaN
    }
    for (int e = 0; e < ny; ++e) gy[e] = T(0.1) * T(e % 13) - T(0.55);
    emu_launch(dim3(3), dim3(8), fwd, (const T*)x.data(), y.data(), idx.data(), NC, c.H, c.W,
               Ho, Wo, c.kH, c.kW, c.sH, c.sW);
    emu_launch(dim3(5), dim3(8), bwd, (const T*)gy.data(), (const I*)idx.data(), gx.data(), NC,
               c.H, c.W, Ho, Wo, c.kH, c.kW, c.sH, c.sW);
    // reference forward
    std::vector<T> ry(ny);
    std::vector<int> ri(ny);
    for (int nc = 0; nc < NC; ++nc)
        for (int p = 0; p < Ho; ++p)
            for (int q = 0; q < Wo; ++q) {
                int arg = -1;
                T best = T(0);
                for (int i = 0; i < c.kH && !(arg >= 0 && std::isnan(best)); ++i)
                    for (int j = 0; j < c.kW; ++j) {
                        const T v = x[(nc * c.H + p * c.sH + i) * c.W + q * c.sW + j];
                        if (arg < 0 || std::isnan(v) || v > best) {
                            best = v; arg = i * c.kW + j;
                            if (std::isnan(v)) break;
                        }
                    }
                ry[(nc * Ho + p) * Wo + q] = best;
                ri[(nc * Ho + p) * Wo + q] = arg;
            }
    // reference backward: contributions in window-offset order (i, j ascending)
    std::vector<T> rgx(nx, T(0));
    for (int nc = 0; nc < NC; ++nc)
        for (int h = 0; h < c.H; ++h)
            for (int v = 0; v < c.W; ++v) {
                T acc = T(0);
                for (int i = 0; i < c.kH; ++i)
                    for (int j = 0; j < c.kW; ++j) {
                        const int ph = h - i, qv = v - j;
                        if (ph < 0 || qv < 0 || ph % c.sH || qv % c.sW) continue;
                        const int p = ph / c.sH, q = qv / c.sW;
                        if (p >= Ho || q >= Wo) continue;
                        const int o = (nc * Ho + p) * Wo + q;
                        if (ri[o] == i * c.kW + j) acc += gy[o];
                    }
                rgx[(nc * c.H + h) * c.W + v] = acc;
            }
    bool ok = true;
    for (int e = 0; e < ny + GUARD; ++e) {
        ok &= same_bits(y[e], e < ny ? ry[e] : T(777));
        ok &= e < ny ? (int)idx[e] == ri[e] : idx[e] == I(99);
    }
    ++checks;
    if (!ok) { ++failures; std::printf("FAIL forward N%d C%d %dx%d k%dx%d s%dx%d\n", c.N, c.C,
                                       c.H, c.W, c.kH, c.kW, c.sH, c.sW); }
    ok = true;
    for (int e = 0; e < nx + GUARD; ++e) ok &= same_bits(gx[e], e < nx ? rgx[e] : T(777));
    ++checks;
    if (!ok) { ++failures; std::printf("FAIL backward N%d C%d %dx%d k%dx%d s%dx%d\n", c.N, c.C,
                                       c.H, c.W, c.kH, c.kW, c.sH, c.sW); }
}

int main()
{
    const Case cases[] = {{2, 3, 8, 8, 2, 2, 2, 2},     // the U-Net's pool
                          {1, 2, 13, 11, 3, 3, 2, 2},   // overlapping windows, ragged edge
                          {2, 1, 9, 12, 4, 3, 1, 2},    // stride 1 rows: heavy overlap
                          {1, 3, 6, 10, 2, 5, 3, 1}};   // gaps between windows
    unsigned long long seed = 1;
    for (const Case& c : cases) {
        // the kernels the H200 timed (64-bit index arithmetic) and the untimed _div32 ones
        check_case<float, unsigned char>(c, ++seed, maxpool2d_forward_u8_f32,
                                         maxpool2d_backward_u8_f32);
        check_case<double, unsigned char>(c, ++seed, maxpool2d_forward_u8_f64,
                                          maxpool2d_backward_u8_f64);
        check_case<float, int>(c, ++seed, maxpool2d_forward_i32_f32, maxpool2d_backward_i32_f32);
        check_case<double, int>(c, ++seed, maxpool2d_forward_i32_f64,
                                maxpool2d_backward_i32_f64);
        check_case<float, unsigned char>(c, ++seed, maxpool2d_forward_u8_f32_div32,
                                         maxpool2d_backward_u8_f32_div32);
        check_case<double, unsigned char>(c, ++seed, maxpool2d_forward_u8_f64_div32,
                                          maxpool2d_backward_u8_f64_div32);
        check_case<float, int>(c, ++seed, maxpool2d_forward_i32_f32_div32,
                               maxpool2d_backward_i32_f32_div32);
        check_case<double, int>(c, ++seed, maxpool2d_forward_i32_f64_div32,
                                maxpool2d_backward_i32_f64_div32);
    }
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
