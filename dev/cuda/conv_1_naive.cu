// conv_1_naive.cu -- rung 1 of the ladder: one thread per output element.
//
// A 3x3 convolution (cross-correlation), stride 1, padding 1, NCHW, float32:
//   x (N, C, H, W) input    w (O, C, 3, 3) weight    b (O) bias
//   y (N, O, H, W) output: the size of x (padding 1 keeps it)
//
//   y[n, o, p, q] = b[o] + sum_{c,i,j} w[o, c, i, j] * x[n, c, p+i-1, q+j-1]
//
// with x = 0 outside the image. The three kernels are the three sums of a
// training step written as directly as CUDA allows: each thread computes one
// element of the result, reading everything from global memory, sharing
// nothing with its neighbours. dev/cuda/launch.py has their grids.
//
// Each multiply-add reads its two operands from global memory: 8 bytes for
// 2 FLOPs, 1/4 FLOP per byte. The caches catch much of that (neighbouring
// threads read neighbouring pixels), but nothing is reused on purpose.

// Offset of element (a, b, c, d) of a C-order array of shape (., B, C, D).
__device__ __forceinline__ int at(int a, int b, int c, int d,
                                  int B, int C, int D)
{
    return ((a * B + b) * C + c) * D + d;
}

// y = conv(x, w) + b: one thread per output element (n, o, p, q).
// --8<-- [start:forward]
extern "C" __global__ void conv1_forward(
    const float* __restrict__ x, const float* __restrict__ w,
    const float* __restrict__ b, float* __restrict__ y,
    int N, int C, int H, int W, int O)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;   // flat index into y
    if (t >= N * O * H * W) return;
    int q = t % W, p = t / W % H, o = t / (W * H) % O, n = t / (W * H * O);
    float acc = b[o];
    for (int c = 0; c < C; ++c)
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                int h = p + i - 1, v = q + j - 1;   // input pixel of tap (i,j)
                if (h < 0 || h >= H || v < 0 || v >= W) continue;
                acc += w[at(o, c, i, j, C, 3, 3)] * x[at(n, c, h, v, C, H, W)];
            }
    y[t] = acc;
}
// --8<-- [end:forward]

// gx = dL/dx: one thread per *input* pixel (n, c, h, v), which gathers the
// gradients of every output whose window covered it:
//   gx[n, c, h, v] = sum_{o,i,j} w[o, c, i, j] * gy[n, o, h-i+1, v-j+1].
// No two threads write the same element, so no atomics are needed.
extern "C" __global__ void conv1_input_grad(
    const float* __restrict__ gy, const float* __restrict__ w,
    float* __restrict__ gx, int N, int C, int H, int W, int O)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;   // flat index into gx
    if (t >= N * C * H * W) return;
    int v = t % W, h = t / W % H, c = t / (W * H) % C, n = t / (W * H * C);
    float acc = 0.0f;
    for (int o = 0; o < O; ++o)
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                int p = h - i + 1, q = v - j + 1;   // its tap (i,j) is (h,v)
                if (p < 0 || p >= H || q < 0 || q >= W) continue;
                acc += w[at(o, c, i, j, C, 3, 3)] * gy[at(n, o, p, q, O, H, W)];
            }
    gx[t] = acc;
}

// gw = dL/dw: one thread per weight (o, c, i, j), summing over the batch:
//   gw[o, c, i, j] = sum_{n,p,q} gy[n, o, p, q] * x[n, c, p+i-1, q+j-1].
// Only O*C*9 threads, each a loop of N*H*W terms: few threads, long loops.
// --8<-- [start:weight_grad]
extern "C" __global__ void conv1_weight_grad(
    const float* __restrict__ x, const float* __restrict__ gy,
    float* __restrict__ gw, int N, int C, int H, int W, int O)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;   // flat index into gw
    if (t >= O * C * 9) return;
    int j = t % 3, i = t / 3 % 3, c = t / 9 % C, o = t / (9 * C);
    float acc = 0.0f;
    for (int n = 0; n < N; ++n)
        for (int p = 0; p < H; ++p)
            for (int q = 0; q < W; ++q) {
                int h = p + i - 1, v = q + j - 1;
                if (h < 0 || h >= H || v < 0 || v >= W) continue;
                acc += gy[at(n, o, p, q, O, H, W)] * x[at(n, c, h, v, C, H, W)];
            }
    gw[t] = acc;
}
// --8<-- [end:weight_grad]
