// activation_check.cpp -- kernels/activation.cu run by cuda_emu.h on the CPU: the 16-byte
// (`_vec`) ReLU kernels against the element-wise ones and against a reference written
// separately, for every length from 0 to 40 and a long one (the tail after the last whole
// vector included), floats and doubles, with NaN, +-inf, -0.0 and values in between. Outputs
// start as a sentinel and are followed by a guard zone that must stay untouched. Prints one
// line per failure and "<checks> checks, <failures> failures" last; exits 1 on a failure.
//
//   g++ -std=c++20 -O2 -I tests/kernel_emu -I kernels -x c++ \
//       tests/kernel_emu/activation_check.cpp -o activation_check && ./activation_check
#include "cuda_emu.h"
#include "activation.cu"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

static int failures = 0, checks = 0;
constexpr int GUARD = 40;

template <typename T>
static bool same_bits(T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; }

template <typename T>
static T ref_relu(T v) { return std::isnan(v) ? v : (v > 0 ? v : T(0)); }   // +0.0 for -0.0

template <typename T>
static T ref_grad(T g, T y) { return y > 0 ? g * T(1) : g * T(0); }

// run `kernel` over n elements with `threads` threads in `blocks` blocks; out[n + GUARD]
template <typename T, typename K, typename... A>
static void run(K kernel, unsigned blocks, unsigned threads, T* out, long long n, A... in)
{
    for (long long i = 0; i < n + GUARD; ++i) out[i] = T(777);
    emu_launch(dim3(blocks), dim3(threads), kernel, in..., out, n);
}

template <typename T>
static void check(const char* what, const T* got, const T* want, long long n)
{
    ++checks;
    for (long long i = 0; i < n + GUARD; ++i) {
        const T w = i < n ? want[i] : T(777);
        if (!same_bits(got[i], w)) {
            ++failures;
            std::printf("FAIL %s n=%lld at %lld: got %g want %g\n", what, n, i,
                        (double)got[i], (double)w);
            return;
        }
    }
}

template <typename T>
static void check_type(void (*fwd)(const T*, T*, long long),
                       void (*fwd_vec)(const T*, T*, long long),
                       void (*bwd)(const T*, const T*, T*, long long),
                       void (*bwd_vec)(const T*, const T*, T*, long long))
{
    const T special[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                         -std::numeric_limits<T>::infinity(), T(-0.0), T(0.0), T(1.5), T(-2.25),
                         std::numeric_limits<T>::denorm_min(), -std::numeric_limits<T>::min()};
    constexpr int NS = sizeof(special) / sizeof(special[0]);
    const int W = 16 / sizeof(T);
    for (long long n : {0LL, 1LL, 2LL, 3LL, 4LL, 5LL, 7LL, 8LL, 9LL, 13LL, 16LL, 17LL, 31LL, 40LL,
                        1003LL}) {
        alignas(16) static T x[2048], gy[2048], y[2048 + GUARD], want[2048], got[2048 + GUARD];
        for (long long i = 0; i < n; ++i) {
            x[i] = special[(i * 7) % NS];
            gy[i] = i % 5 == 0 ? special[(i * 3) % NS] : T(0.5) * T(i % 11) - T(2);
        }
        for (long long i = 0; i < n; ++i) want[i] = ref_relu(x[i]);
        // the launcher's grids: the plain kernel one thread per element, the vector kernel one
        // per whole vector (at least as many as the tail), here in blocks of 4 threads so that
        // the grid-stride loops take several laps
        const long long items = std::max(n / W, n % W);
        const unsigned vb = (unsigned)std::min(std::max(1LL, (items + 3) / 4), 3LL);
        run<T>(fwd, 2, 4, got, n, (const T*)x);
        check("relu_forward", got, want, n);
        run<T>(fwd_vec, vb, 4, got, n, (const T*)x);
        check("relu_forward_vec", got, want, n);
        for (long long i = 0; i < n; ++i) y[i] = want[i];
        for (long long i = 0; i < n; ++i) want[i] = ref_grad(gy[i], y[i]);
        run<T>(bwd, 2, 4, got, n, (const T*)gy, (const T*)y);
        check("relu_backward", got, want, n);
        run<T>(bwd_vec, vb, 4, got, n, (const T*)gy, (const T*)y);
        check("relu_backward_vec", got, want, n);
    }
}

int main()
{
    check_type<float>(relu_forward_f32, relu_forward_vec_f32, relu_backward_f32,
                      relu_backward_vec_f32);
    check_type<double>(relu_forward_f64, relu_forward_vec_f64, relu_backward_f64,
                       relu_backward_vec_f64);
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
