// winograd_check.cpp -- rung 5 of the ladder (dev/cuda/conv_5_winograd.cu) run by cuda_emu.h
// on the CPU, against the direct double-precision sums of conv_ref.h.
//
// For each tile configuration of the GEMM, dtype and shape of conv_ref.h that Winograd's
// kernels take (3x3, stride 1, padding 1, even H and W): the weight gradient by F(3x3, 2x2)
// and, where 4 divides H and W, F(3x3, 4x4) (the two transforms, the 16 or 36 GEMMs with 1
// and 3 K slices, the output transform with the slices' sum); the forward (with the bias, and
// with the ReLU) and the input gradient (the filters turned, flip = 1) by F(2x2, 3x3) and
// F(4x4, 3x3), with 1 and 2-3 K slices. Outputs start as NaN, guard zones as in conv_check.
//
// Build and run (tests/test_cuda_without_gpu.py does this):
//   g++ -std=c++20 -O2 -fno-strict-aliasing -I tests/kernel_emu -I kernels -I dev/cuda \
//       -x c++ tests/kernel_emu/winograd_check.cpp -o winograd_check && ./winograd_check
#include "cuda_emu.h"
#include "conv_5_winograd.cu"
#include "conv_ref.h"

template <typename T>
using WgFn = void (*)(const T*, const T*, T*, int, int, int, int, int, int);   // winograd_gemm
template <typename T>
using WtFn = void (*)(const T*, T*, int, int, int, int);   // winograd_x, _dy, _in
template <typename T>
using WoutFn = void (*)(const T*, T*, int, int, int);      // winograd_out
template <typename T>
using WfFn = void (*)(const T*, T*, int, int, int);        // winograd_filter
template <typename T>
using WcoFn = void (*)(const T*, const T*, int, int, T*, int, int, int, int, int);   // _conv_out

template <typename T>
struct Transforms {                        // the entry points of one tile size m
    WtFn<T> x, dy; WoutFn<T> out;          // the weight gradient, F(3x3, m x m)
    WtFn<T> in; WfFn<T> filter; WcoFn<T> conv_out;   // forward, input gradient, F(m x m, 3x3)
};

template <typename T>
struct Tile { const char* name; int BM, BN, BK, threads; WgFn<T> gemm; };

template <typename T>
void check_shape(const Tile<T>& tile, const Transforms<T>& f2, const Transforms<T>& f4,
                 const Shape& s, const char* dt)
{
    if (!(s.kH == 3 && s.kW == 3 && s.sH == 1 && s.sW == 1 && s.pH == 1 && s.pW == 1 &&
          s.H % 2 == 0 && s.W % 2 == 0)) return;
    Problem3<T> pr(s);
    const std::string t = pr.tag(tile.name, dt);
    const dim3 block(tile.threads);
    for (int m : {2, 4}) {
        if (s.H % m != 0 || s.W % m != 0) continue;
        const Transforms<T>& f = m == 2 ? f2 : f4;
        const int P = s.N * (s.H / m) * (s.W / m), pts = (m + 2) * (m + 2);
        const std::string how = m == 2 ? ", Winograd, " : ", Winograd 4x4, ";
        // the weight gradient: U (dy tiles, O x P per point) times V (x patches, P x C)
        Buffer<T> V((size_t)pts * P * s.C, true), U((size_t)pts * s.O * P, true);
        emu_launch(dim3(2), dim3(32), f.x, (const T*)pr.x.data(), V.data(), s.N, s.C, s.H, s.W);
        emu_launch(dim3(2), dim3(32), f.dy, (const T*)pr.gy.data(), U.data(), s.N, s.O, s.H,
                   s.W);
        for (int want : {1, 3}) {
            const int k_chunk = cdiv(cdiv(P, want), tile.BK) * tile.BK;
            const int splits = cdiv(P, k_chunk);
            Buffer<T> ws((size_t)splits * pts * s.O * s.C, true), gw(pr.nw, true);
            emu_launch(dim3(cdiv(s.C, tile.BN), cdiv(s.O, tile.BM), pts * splits), block,
                       tile.gemm, (const T*)U.data(), (const T*)V.data(), ws.data(), s.O, s.C, P,
                       k_chunk, splits, pts);
            emu_launch(dim3(2), dim3(32), f.out, (const T*)ws.data(), gw.data(), splits, s.O,
                       s.C);
            compare(t + " backward weight" + how + std::to_string(splits) + " split(s)", gw,
                    pr.gw_ref);
        }
        // the forward (flip = 0: R = O outputs from K = C channels) and the input gradient
        // (flip = 1: R = C from K = O, the filters transposed and turned by 180 degrees)
        for (int flip : {0, 1}) {
            const int R = flip ? s.C : s.O, K = flip ? s.O : s.C;
            Buffer<T> Vc((size_t)pts * K * P, true), Uc((size_t)pts * R * K, true);
            emu_launch(dim3(2), dim3(32), f.in, (const T*)(flip ? pr.gy : pr.x).data(), Vc.data(),
                       s.N, K, s.H, s.W);
            emu_launch(dim3(2), dim3(32), f.filter, (const T*)pr.w.data(), Uc.data(), s.O, s.C,
                       flip);
            for (int want : {1, 3}) {
                const int k_chunk = cdiv(cdiv(K, want), tile.BK) * tile.BK;
                const int splits = cdiv(K, k_chunk);
                Buffer<T> ws((size_t)splits * pts * R * P, true);
                emu_launch(dim3(cdiv(P, tile.BN), cdiv(R, tile.BM), pts * splits), block,
                           tile.gemm, (const T*)Uc.data(), (const T*)Vc.data(), ws.data(), R, P,
                           K, k_chunk, splits, pts);
                for (int relu : {0, 1}) {                 // the forward with the ReLU fused
                    if (flip && relu) continue;
                    Buffer<T> out(flip ? pr.nx : pr.ny, true);
                    emu_launch(dim3(2), dim3(32), f.conv_out, (const T*)ws.data(),
                               (const T*)pr.b.data(), 1 - flip, relu, out.data(), splits, s.N, R,
                               s.H, s.W);
                    compare(t + (flip ? " backward input" : relu ? " forward + ReLU" : " forward")
                            + how + std::to_string(splits) + " split(s)",
                            out, flip ? pr.gx_ref : relu ? pr.yr_ref : pr.y_ref);
                }
            }
        }
    }
}

int main()
{
#define TRANSFORMS(NAME, DT) {NAME##_x_##DT, NAME##_dy_##DT, NAME##_out_##DT, NAME##_in_##DT, \
                              NAME##_filter_##DT, NAME##_conv_out_##DT}
    const Transforms<float> f2_f32 = TRANSFORMS(winograd, f32), f4_f32 = TRANSFORMS(winograd4, f32);
    const Transforms<double> f2_f64 = TRANSFORMS(winograd, f64),
                             f4_f64 = TRANSFORMS(winograd4, f64);
#undef TRANSFORMS
#define TILE(NAME, BM, BN, BK, THREADS, DT) {#NAME, BM, BN, BK, THREADS, winograd_gemm_##NAME##_##DT}
    const Tile<float> f32_tiles[] = {TILES_F32(TILE)};
    const Tile<double> f64_tiles[] = {TILES_F64(TILE)};
#undef TILE
    for (const Shape& s : SHAPES) {
        for (const auto& tile : f32_tiles) check_shape<float>(tile, f2_f32, f4_f32, s, "f32");
        for (const auto& tile : f64_tiles) check_shape<double>(tile, f2_f64, f4_f64, s, "f64");
    }
    return report();
}
