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
#include "conv_ref.h"

template <typename T>
using FwdFn = void (*)(const T*, const T*, const T*, T*, int, int, int, int, int, int, int, int,
                       int, int, int, int, int, int, int);
template <typename T>
using BinFn = void (*)(const T*, const T*, T*, const T*, int, int, int, int, int, int, int, int,
                       int, int, int, int, int, int);
template <typename T>
using BinPartFn = void (*)(const T*, const T*, T*, const T*, int, int, int, int, int, int, int, int,
                           int, int, int, int, int, int);
template <typename T>
using BwFn = void (*)(const T*, const T*, T*, int, int, int, int, int, int, int, int, int, int,
                      int, int, int, int);
template <typename T>
using ReduceFn = void (*)(const T*, T*, int, long long);
template <typename T>
struct Tile {
    const char* name; int BM, BN, BK, threads; FwdFn<T> fwd; BinFn<T> bin; BwFn<T> bw;
    BinPartFn<T> bin_part;
};

template <typename T>
void check_shape(const Tile<T>& tile, const Shape& s, ReduceFn<T> reduce, const char* dt)
{
    Problem3<T> pr(s);                           // the operands and the direct sums
    const int Ho = pr.Ho, Wo = pr.Wo;
    const size_t nx = pr.nx, nw = pr.nw, ny = pr.ny;
    Buffer<T>& x = pr.x; Buffer<T>& w = pr.w; Buffer<T>& b = pr.b;
    Buffer<T>& gy = pr.gy; Buffer<T>& bc = pr.bc;
    const std::vector<double>& y_ref = pr.y_ref; const std::vector<double>& yr_ref = pr.yr_ref;
    const std::vector<double>& gx_ref = pr.gx_ref;
    const std::vector<double>& gxb_ref = pr.gxb_ref;
    const std::vector<double>& gw_ref = pr.gw_ref;
    const std::string t = pr.tag(tile.name, dt);
    const dim3 block(tile.threads);

    // the forward, without and with the ReLU fused into the epilogue
    for (int relu : {0, 1}) {
        Buffer<T> y(ny, true);
        emu_launch(dim3(cdiv((long long)s.N * Ho * Wo, tile.BN), cdiv(s.O, tile.BM)), block,
                   tile.fwd, (const T*)x.data(), (const T*)w.data(), (const T*)b.data(), y.data(),
                   1, relu, s.N, s.C, s.H, s.W, s.O, s.kH, s.kW, s.sH, s.sW, s.pH, s.pW,
                   Ho, Wo);
        compare(t + (relu ? " forward + ReLU" : " forward"), y, relu ? yr_ref : y_ref);
    }

    // the input gradient, without and with a bias per input channel (the transposed
    // convolution's forward, which these kernels compute too)
    for (int hb : {0, 1}) {
        const std::string bt = hb ? " + bias" : "";
        const std::vector<double>& ref = hb ? gxb_ref : gx_ref;
        Buffer<T> gx(nx, true);
        emu_launch(dim3(cdiv((long long)s.N * s.H * s.W, tile.BN), cdiv(s.C, tile.BM)), block,
                   tile.bin, (const T*)gy.data(), (const T*)w.data(), gx.data(),
                   (const T*)bc.data(), hb,
                   s.N, s.C, s.H, s.W, s.O, s.kH, s.kW, s.sH, s.sW, s.pH, s.pW, Ho, Wo);
        compare(t + " backward input" + bt, gx, ref);
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
#define TILE(NAME, BM, BN, BK, THREADS, DT)                                                 \
    {#NAME, BM, BN, BK, THREADS, conv2d_forward_##NAME##_##DT,                              \
     conv2d_backward_input_##NAME##_##DT, conv2d_backward_weight_##NAME##_##DT,             \
     conv2d_backward_input_partition_##NAME##_##DT}
    const Tile<float> f32_tiles[] = {TILES_F32(TILE)};
    const Tile<double> f64_tiles[] = {TILES_F64(TILE)};
#undef TILE
    for (const Shape& s : SHAPES) {
        for (const auto& tile : f32_tiles) check_shape<float>(tile, s, splitk_reduce_f32, "f32");
        for (const auto& tile : f64_tiles) check_shape<double>(tile, s, splitk_reduce_f64, "f64");
    }
    check_div();
    return report();
}
