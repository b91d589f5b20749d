// conv_2_smem.cu -- rung 2 of the ladder: tiles in shared memory.
//
// The same 3x3, stride-1, padding-1 convolution as rung 1 (NCHW, float32; see
// conv_1_naive.cu for the sums). Rung 1 reads every input pixel from global
// memory 9 times per output channel, once for each tap of each window over it,
// and every weight once per output pixel. Here a block of 16x16 threads
// computes a 16x16 tile of one output channel of one image. It copies the
// 18x18 input patch under its windows (the tile plus a halo of 1) and the
// patch's 3x3 weights into shared memory, for CB channels at a time; then
// each thread sums its pixel's taps from there. Each input value is read from
// global memory once per block and used up to 9 times; each weight once per
// block and used 256 times.
//
// The input gradient is a convolution too: of gy, with the weights' in and
// out channels swapped and turned by 180 degrees,
//   gx[n, c, h, v] = sum_{o,i,j} w[o, c, 2-i, 2-j] * gy[n, o, h+i-1, v+j-1],
// so it is the same kernel with the weights read "flipped" (FLIP below).
//
// The weight gradient is a long sum (N*H*W terms) for few outputs. Rung 1
// gave each sum to one thread; here a block of 256 threads shares each sum
// and adds up the threads' parts in shared memory (a tree reduction).

constexpr int TILE = 16;          // a block computes TILE x TILE output pixels
constexpr int HALO = TILE + 2;    // the input rows / columns under its windows
constexpr int CB = 8;             // input channels staged in shared memory
constexpr int RED = 256;          // threads of a weight-gradient block

// Offset of element (a, b, c, d) of a C-order array of shape (., B, C, D).
__device__ __forceinline__ int at(int a, int b, int c, int d,
                                  int B, int C, int D)
{
    return ((a * B + b) * C + c) * D + d;
}

// y = conv(x, w) + b for x (N, Cin, H, W), y (N, Cout, H, W). FLIP: w is
// (Cin, Cout, 3, 3) and is used swapped and turned (the input gradient).
template <bool FLIP>
__device__ void conv2_tiles(const float* __restrict__ x,
                            const float* __restrict__ w,
                            const float* __restrict__ b, float* __restrict__ y,
                            int Cin, int H, int W, int Cout)
{
    __shared__ float xs[CB][HALO][HALO];   // CB channels of the input patch
    __shared__ float ws[CB][9];            // their 3x3 weights for channel co
    const int tiles_w = (W + TILE - 1) / TILE;
    const int p0 = blockIdx.x / tiles_w * TILE;    // the tile's first row
    const int q0 = blockIdx.x % tiles_w * TILE;    // and column
    const int co = blockIdx.y, n = blockIdx.z;
    const int ty = threadIdx.y, tx = threadIdx.x, tid = ty * TILE + tx;
    float acc = b ? b[co] : 0.0f;
    // --8<-- [start:tiles]
    for (int c0 = 0; c0 < Cin; c0 += CB) {
        // 1. all 256 threads copy the patch (zeros outside the image) ...
        for (int e = tid; e < CB * HALO * HALO; e += TILE * TILE) {
            int c = e / (HALO * HALO), r = e / HALO % HALO, s = e % HALO;
            int h = p0 + r - 1, v = q0 + s - 1;
            bool in = c0 + c < Cin && h >= 0 && h < H && v >= 0 && v < W;
            xs[c][r][s] = in ? x[at(n, c0 + c, h, v, Cin, H, W)] : 0.0f;
        }
        // ... and the weights
        for (int e = tid; e < CB * 9; e += TILE * TILE) {
            int c = c0 + e / 9, k = e % 9;
            float wv = 0.0f;
            if (c < Cin && FLIP) wv = w[(c * Cout + co) * 9 + 8 - k];
            if (c < Cin && !FLIP) wv = w[(co * Cin + c) * 9 + k];
            ws[e / 9][k] = wv;
        }
        __syncthreads();                   // 2. the tiles are complete
        // 3. each thread: its pixel's 9 taps of CB channels, from shared memory
        for (int c = 0; c < CB; ++c)
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j)
                    acc += ws[c][i * 3 + j] * xs[c][ty + i][tx + j];
        __syncthreads();                   // 4. before the next copy overwrites
    }
    // --8<-- [end:tiles]
    const int p = p0 + ty, q = q0 + tx;
    if (p < H && q < W) y[at(n, co, p, q, Cout, H, W)] = acc;
}

// grid (tiles of 16x16 pixels, O, N), block (16, 16)
extern "C" __global__ void conv2_forward(
    const float* __restrict__ x, const float* __restrict__ w,
    const float* __restrict__ b, float* __restrict__ y,
    int N, int C, int H, int W, int O)
{
    conv2_tiles<false>(x, w, b, y, C, H, W, O);   // n = blockIdx.z
}

// grid (tiles of 16x16 pixels, C, N), block (16, 16)
extern "C" __global__ void conv2_input_grad(
    const float* __restrict__ gy, const float* __restrict__ w,
    float* __restrict__ gx, int N, int C, int H, int W, int O)
{
    conv2_tiles<true>(gy, w, nullptr, gx, O, H, W, C);
}

// gw[o, c, :, :]: one block of RED threads per (c, o); grid (C, O). Each
// thread sums the 9 taps over every RED-th pixel of the batch (consecutive
// threads, consecutive pixels: coalesced loads), then the block adds the
// threads' partial sums pairwise in shared memory, in a fixed order.
extern "C" __global__ void conv2_weight_grad(
    const float* __restrict__ x, const float* __restrict__ gy,
    float* __restrict__ gw, int N, int C, int H, int W, int O)
{
    __shared__ float part[9][RED];
    const int c = blockIdx.x, o = blockIdx.y, t = threadIdx.x;
    float acc[9] = {};
    for (int e = t; e < N * H * W; e += RED) {     // pixel e = (n, p, q)
        int q = e % W, p = e / W % H, n = e / (W * H);
        float g = gy[at(n, o, p, q, O, H, W)];
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                int h = p + i - 1, v = q + j - 1;
                if (h < 0 || h >= H || v < 0 || v >= W) continue;
                acc[i * 3 + j] += g * x[at(n, c, h, v, C, H, W)];
            }
    }
    // --8<-- [start:reduce]
    for (int k = 0; k < 9; ++k) part[k][t] = acc[k];
    __syncthreads();
    for (int s = RED / 2; s > 0; s /= 2) {         // 256 -> 128 -> ... -> 1
        if (t < s)
            for (int k = 0; k < 9; ++k) part[k][t] += part[k][t + s];
        __syncthreads();
    }
    if (t < 9) gw[(o * C + c) * 9 + t] = part[t][0];
    // --8<-- [end:reduce]
}
