"""Which kernel and which launch each convolution gets: the GEMM planner and the shape rules.
Pure Python (tested without a GPU): sizes in, a tile name, a grid and a K slice out.

Tile configurations of kernels/conv.cu: name -> (BM, BN, BK, TM, TN); a block has
(BM/TM) * (BN/TN) threads (``tile_threads``). The last two exist only in builds with the
"tiles" feature (``CudaConfig``), whose planner estimates each tile's time with a small model
(``tile_cost``): TILE_OVERHEAD is the number of other instructions per FMA in the tile's K
loop, the mean of the forward and both gradients' kernels in the SASS of the default build
for sm_90 (``python benchmarks/sass_census.py``, benchmarks/NOTES.md entry 13: the B-tile
loads' index arithmetic is most of it, and a tile with BM rows does one B load per BM FMAs);
TILE_BLOCKS_PER_SM is how many blocks of the tile fit on an SM at once (registers).
"""
import functools

TILES = {
    "m32n128": (32, 128, 16, 4, 4),
    "m64n64": (64, 64, 16, 4, 4),
    "m128n128": (128, 128, 8, 8, 8),   # float32 only
    "m128n64": (128, 64, 8, 8, 8),     # float32, "tiles" builds
    "m64n128": (64, 128, 8, 8, 8),     # float32, "tiles" builds
}
MAX_SPLITS = 256          # split-K slabs of the weight gradient at most
MIN_K_PER_SPLIT = 512     # do not split K finer than this

TILE_OVERHEAD = {"m128n128": 0.58, "m128n64": 0.73, "m64n128": 0.92, "m64n64": 1.15,
                 "m32n128": 1.70}   # (1.72 until the ktable pointer left the kernels' arguments,
#                                     2026-12-02; plan_gemm never weighs m32n128: no plan moved)
TILE_BLOCKS_PER_SM = {"m128n128": 2, "m128n64": 4, "m64n128": 4, "m64n64": 3, "m32n128": 3}
MIN_WARPS_PER_SM = 8      # below this many resident warps an SM is assumed latency-bound

NARROW_MAX = 8            # kernels/conv.cu's NARROW_MAX: the most channels a narrow 1x1 keeps
NARROW_THREADS = 256      # kernels/conv.cu's NARROW_THREADS: conv1x1_backward_weight's block
NARROW_MIN_CHUNK = 2048   # pixels per block of conv1x1_backward_weight at least


def tile_threads(tile):
    """Threads per block of a tile configuration."""
    BM, BN, _, TM, TN = TILES[tile]
    return (BM // TM) * (BN // TN)


def cdiv(a, b):
    """``ceil(a / b)`` for non-negative ints."""
    return -(-a // b)


def _split(tile, M, Ncols, K, sm_count, split_k):
    """Grid and k_chunk of one tile (a name of TILES, or the dims ``(BM, BN, BK)``): with
    ``split_k``, K is cut into about enough slices for four waves of blocks (whole K tiles
    each, no empty slice, MIN_K_PER_SPLIT at least)."""
    BM, BN, BK = TILES[tile][:3] if isinstance(tile, str) else tile
    gx, gy = cdiv(Ncols, BN), cdiv(M, BM)
    k_chunk, splits = K, 1
    if split_k and K > 0:
        want = cdiv(4 * sm_count, gx * gy)            # about four waves of blocks
        splits = max(1, min(want, cdiv(K, MIN_K_PER_SPLIT), MAX_SPLITS))
        k_chunk = cdiv(cdiv(K, splits), BK) * BK      # whole K tiles per slice
        splits = cdiv(K, k_chunk)                     # no empty slices
    return (gx, gy, splits), k_chunk


def tile_cost(tile, M, Ncols, K, sm_count, split_k=False):
    """The planner's model of a tile's time (arbitrary units): the busiest SM runs
    ceil(blocks / SMs) blocks, each BM x BN x k_chunk FMAs plus TILE_OVERHEAD other
    instructions per FMA, issued at full rate if it holds MIN_WARPS_PER_SM warps at once and
    proportionally slower with fewer."""
    BM, BN = TILES[tile][:2]
    grid, k_chunk = _split(tile, M, Ncols, K, sm_count, split_k)
    per_sm = cdiv(grid[0] * grid[1] * grid[2], sm_count)
    warps = min(per_sm, TILE_BLOCKS_PER_SM[tile]) * tile_threads(tile) // 32
    rate = min(1.0, warps / MIN_WARPS_PER_SM)
    return per_sm * BM * BN * max(k_chunk, 1) * (1 + TILE_OVERHEAD[tile]) / rate


@functools.lru_cache(maxsize=1024)
def plan_gemm(M, Ncols, K, suffix, sm_count, split_k=False, tiles=False):
    """Launch plan of an implicit GEMM ``(M x K) * (K x Ncols)``: returns
    ``(tile, grid, k_chunk)``; ``grid[2]`` is the number of split-K slices (1 unless
    ``split_k``), each ``k_chunk`` long (a multiple of BK). ``tiles``: the build has the
    "tiles" feature; float32 problems with M > 32 then take the tile of least ``tile_cost``
    among m128n128, m128n64, m64n128 and m64n64. Without it: m32n128 for M <= 32, m128n128
    for float32 when its grid fills two blocks per SM, else m64n64. Cached, since every conv
    launch asks."""
    if M <= 32:
        tile = "m32n128"
    elif tiles and suffix == "f32":
        costs = {t: tile_cost(t, M, Ncols, K, sm_count, split_k)
                 for t in ("m128n128", "m128n64", "m64n128", "m64n64")}
        tile = min(costs, key=costs.get)              # the first of equal costs
    elif (suffix == "f32" and M >= 128
          and cdiv(M, 128) * cdiv(Ncols, 128) >= 2 * sm_count):
        tile = "m128n128"
    else:
        tile = "m64n64"
    grid, k_chunk = _split(tile, M, Ncols, K, sm_count, split_k)
    return tile, grid, k_chunk


# kernels/conv_tf32.cu's one tile (BM, BN, BK) and its block: 4 warps of tensor-core mma
TF32_TILE = (64, 64, 8)
TF32_THREADS = 128


@functools.lru_cache(maxsize=1024)
def plan_tf32(M, Ncols, K, sm_count, split_k=False):
    """Launch plan of an implicit GEMM on the tensor cores (kernels/conv_tf32.cu): ``(grid,
    k_chunk)``, its one tile, K split as plan_gemm splits it."""
    return _split(TF32_TILE, M, Ncols, K, sm_count, split_k)


def window_partition(kH, kW, sH, sW, pH, pW, H, W, Ho, Wo):
    """True when the convolution's windows partition the input: stride = kernel, no padding,
    and the windows reach the last row and column (the input gradient is then a dense GEMM
    whose epilogue does a pixel shuffle: the U-Net's up-convolution)."""
    return (sH, sW) == (kH, kW) and (pH, pW) == (0, 0) and (H, W) == (Ho * kH, Wo * kW)


def narrow_1x1(kH, kW, sH, sW, pH, pW, channels):
    """True when a 1x1, stride 1, unpadded convolution with ``channels`` (the forward's
    outputs, the input gradient's summed channels) at most NARROW_MAX runs on the per-pixel
    kernels ``conv1x1_*`` instead of a GEMM (the U-Net's head, 64 -> 4)."""
    return (kH, kW, sH, sW, pH, pW) == (1, 1, 1, 1, 0, 0) and channels <= NARROW_MAX


def narrow_weight_chunks(pixels, channel_groups, sm_count):
    """How conv1x1_backward_weight cuts the batch's pixels: ``(chunks, len)``, about four waves
    of blocks with the channel groups, NARROW_MIN_CHUNK pixels per chunk at least."""
    chunks = max(1, min(pixels // NARROW_MIN_CHUNK, cdiv(4 * sm_count, channel_groups)))
    length = cdiv(pixels, chunks)
    return cdiv(pixels, length), length
