"""Rung 5's launcher: 3x3 / stride 1 / padding 1 convolutions by Winograd's algorithms, with
the kernels of ``dev/cuda/conv_5_winograd.cu``, on CuPy arrays. Not part of the library: no
GPU run has timed it yet (benchmarks/NOTES.md entries 18, 19, 24); ``benchmarks/gpu_check.sh``
times it against the shipped kernels, and it joins ``minicnn`` only if it is faster.

    import winograd                       # with dev/cuda on sys.path; imports no CuPy
    y = winograd.forward(x, w, b)         # = minicnn's conv2d_forward(x, w, b, 1, 1)
    gx = winograd.input_grad(gy, w)       # = conv2d_backward_input(gy, w, x.shape, 1, 1)
    gw = winograd.weight_grad(x, gy)      # = conv2d_backward_weight(gy, x, w.shape, 1, 1)

``tile=4`` (the default) takes F(4x4, 3x3) / F(3x3, 4x4) where 4 divides H and W, F(2x2,
3x3) / F(3x3, 2x2) elsewhere; ``tile=2`` the 2x2 tiles everywhere. H and W must be even. The
inputs are checked, the GEMMs planned and the grids launched with minicnn's CUDA backend
(``minicnn.backend.cuda``: its checks, planner and build configuration); the .cu file is
compiled by CuPy's RawModule, as ``minicnn.kernels.module`` compiles the shipped ones.
"""
import functools
import hashlib
import os

from minicnn.backend.cuda import checks, config, planner, runtime
from minicnn.backend.cuda.checks import i32

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "kernels")
SOURCE = os.path.join(HERE, "conv_5_winograd.cu")
TILES = (2, 4)


def applies(H, W):
    """Whether the Winograd kernels take a 3x3 / stride 1 / padding 1 convolution on H x W."""
    return H % 2 == 0 and W % 2 == 0


def tile_of(H, W, tile=4):
    """The tile m of F(m x m, 3x3) that a convolution on H x W gets (``tile`` at most)."""
    if tile not in TILES:
        raise ValueError(f"winograd: tile must be one of {TILES}, got {tile!r}")
    return 4 if tile == 4 and H % 4 == 0 and W % 4 == 0 else 2


def _code():
    """The source, with a hash of what it includes (kernels/conv.cu and the headers): CuPy's
    on-disk cache is keyed by the source text only."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(KERNEL_DIR)):
        if name == "conv.cu" or name.endswith(".cuh"):
            with open(os.path.join(KERNEL_DIR, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    with open(SOURCE, encoding="utf-8") as f:
        return f.read() + f"\n// includes: {h.hexdigest()[:16]}\n"


@functools.lru_cache(maxsize=None)
def _module(options):
    import cupy
    return cupy.RawModule(code=_code(), options=("--std=c++17", f"-I{KERNEL_DIR}", f"-I{HERE}")
                          + options)


def _kernel(name):
    """The kernel ``name`` of conv_5_winograd.cu, built with the shipped build's options."""
    return _module(config.current().conv_options()).get_function(name)


def _plan(op, desc, M, Ncols, K, sfx, points, **extents):
    """Plan of the ``points`` GEMMs (M x K)(K x Ncols) of a Winograd pass
    (``winograd_gemm_<tile>``, split along K): planned as one GEMM with ``points`` x the
    columns (as many blocks), launched with grid z = points x slices; the sizes checked with
    the transforms' ``extents``. Returns ``(tile, grid, k_chunk, splits)``."""
    tile, grid, k_chunk = planner.plan_gemm(M, points * Ncols, K, sfx, runtime.num_sms(),
                                            split_k=True, tiles=config.current().has("tiles"))
    splits = grid[2]
    BM, BN = planner.TILES[tile][:2]
    grid = (planner.cdiv(Ncols, BN), planner.cdiv(M, BM), points * splits)
    checks.grid(op, desc, grid)
    checks.index_range(op, desc, winograd_workspace=splits * points * M * Ncols,
                       split_k_range=splits * k_chunk + 256, **extents)
    return tile, grid, k_chunk, splits


def _gemm(plan, U, V, M, Ncols, K, sfx):
    """``ws[split, xy] = U[xy] V[xy]`` over each K slice, for each of the points xy (U's first
    axis): the workspace (splits, points, M, Ncols)."""
    tile, grid, k_chunk, splits = plan
    points = U.shape[0]
    ws = runtime.cupy.empty((splits, points, M, Ncols), dtype=U.dtype)
    _kernel(f"winograd_gemm_{tile}_{sfx}")(
        grid, (planner.tile_threads(tile),),
        (U, V, ws, i32(M), i32(Ncols), i32(K), i32(k_chunk), i32(splits), i32(points)))
    return ws


def _tiling(N, H, W, tile):
    """The kernels' name prefix, the points of the transformed domain and the number of tiles P
    of a Winograd pass on N images of H x W."""
    m = tile_of(H, W, tile)
    return "winograd" if m == 2 else f"winograd{m}", (m + 2) ** 2, N * (H // m) * (W // m)


def _operands(op, a, w, a_what, w_shape_ok):
    """``a`` (N, K, H, W) and ``w`` (O, C, 3, 3), both float32 or both float64, even H, W."""
    a = checks.operand(op, a, a_what)
    w = checks.operand(op, w, "weight", a.dtype)
    checks.ndim(op, a, 4, a_what, "(N, C, H, W)")
    checks.ndim(op, w, 4, "weight", "(C_out, C_in, 3, 3)")
    if w.shape[2:] != (3, 3) or not w_shape_ok(a.shape, w.shape):
        raise ValueError(f"{op}: {a_what} {a.shape} and weight {w.shape} do not match a 3x3 "
                         "convolution")
    if not applies(*a.shape[2:]):
        raise ValueError(f"{op}: Winograd's kernels need even H and W, got {a.shape[2:]}")
    return a, w


def _conv(op, src, w, b, out, sfx, flip, relu, tile):
    """``out = conv(src, w) + b`` (flip = 0, the forward) or ``out = conv(src, w')`` with w'
    the filters transposed and turned by 180 degrees (flip = 1, the input gradient), by
    F(m x m, 3x3): the transforms V = B^T patch B and U = G g G^T, the (m + 2)^2 GEMMs
    U[xy] V[xy] (split along the channels summed), then out = A^T (sum of the slices) A
    (+ b, then the ReLU if ``relu``), tile by tile."""
    N, K, H, W = src.shape            # K: the channels summed over
    R = out.shape[1]                  # R: the channels computed
    O, C = w.shape[:2]
    desc = f"{src.shape} with weight {w.shape}"
    checks.conv_sizes(op, desc, N, C, H, W, O, 3, 3, 1, 1, 1, 1, H, W)   # the forward's x, w, y
    name, points, P = _tiling(N, H, W, tile)
    plan = _plan(op, desc, R, P, K, sfx, points, winograd_input=points * K * P,
                 winograd_filters=points * R * K)
    V = runtime.cupy.empty((points, K, P), dtype=src.dtype)
    U = runtime.cupy.empty((points, R, K), dtype=src.dtype)
    runtime.launch_1d(_kernel(f"{name}_in_{sfx}"), K * P,
                      (src, V, i32(N), i32(K), i32(H), i32(W)))
    runtime.launch_1d(_kernel(f"{name}_filter_{sfx}"), O * C, (w, U, i32(O), i32(C), i32(flip)))
    ws = _gemm(plan, U, V, R, P, K, sfx)
    runtime.launch_1d(_kernel(f"{name}_conv_out_{sfx}"), R * P,
                      (ws, ws if b is None else b, i32(b is not None), i32(bool(relu)), out,
                       i32(plan[3]), i32(N), i32(R), i32(H), i32(W)))
    return out


def forward(x, w, b=None, relu=False, tile=4):
    """``y = conv3x3(x, w) + b`` (stride 1, padding 1), then ``max(y, 0)`` with ``relu``."""
    op = "winograd.forward"
    x, w = _operands(op, x, w, "input", lambda a, ws: a[1] == ws[1])
    N, C, H, W = x.shape
    b = checks.bias(op, b, w.shape[0], x.dtype)
    sfx = checks.suffix(op, x.dtype, "input")
    y = runtime.cupy.empty((N, w.shape[0], H, W), dtype=x.dtype)
    return _conv(op, x, w, b, y, sfx, flip=0, relu=relu, tile=tile) if y.size else y


def input_grad(gy, w, tile=4):
    """``dL/dx`` of ``forward`` from ``gy`` (N, O, H, W): conv3x3(gy, w') with padding 1."""
    op = "winograd.input_grad"
    gy, w = _operands(op, gy, w, "output gradient", lambda a, ws: a[1] == ws[0])
    N, O, H, W = gy.shape
    sfx = checks.suffix(op, gy.dtype, "output gradient")
    gx = runtime.cupy.empty((N, w.shape[1], H, W), dtype=gy.dtype)
    return _conv(op, gy, w, None, gx, sfx, flip=1, relu=False, tile=tile) if gx.size else gx


def weight_grad(x, gy, tile=4):
    """``dL/dw`` (O, C, 3, 3) of ``forward`` from its input ``x`` and ``gy``, by F(3x3, m x m):
    V = B^T x B of the input patches, U = A dy A^T of the output-gradient tiles, the (m + 2)^2
    GEMMs U[xy] V[xy] (split along the P tiles), then gw = G^T (sum of the slices) G."""
    op = "winograd.weight_grad"
    x = checks.operand(op, x, "input")
    gy = checks.operand(op, gy, "output gradient", x.dtype)
    checks.ndim(op, x, 4, "input", "(N, C, H, W)")
    checks.ndim(op, gy, 4, "output gradient", "(N, C_out, H, W)")
    N, C, H, W = x.shape
    O = gy.shape[1]
    if gy.shape != (N, O, H, W):
        raise ValueError(f"{op}: output gradient {gy.shape} does not match input {x.shape} "
                         "(a 3x3 convolution with padding 1 keeps H and W)")
    if not applies(H, W):
        raise ValueError(f"{op}: Winograd's kernels need even H and W, got {(H, W)}")
    sfx = checks.suffix(op, x.dtype, "input")
    desc = f"input {x.shape} with output gradient {gy.shape}"
    checks.conv_sizes(op, desc, N, C, H, W, O, 3, 3, 1, 1, 1, 1, H, W)
    gw = runtime.cupy.empty((O, C, 3, 3), dtype=x.dtype)
    if gw.size == 0:
        return gw
    if x.size == 0:                   # no image: nothing summed
        return runtime.cupy.zeros((O, C, 3, 3), dtype=x.dtype)
    name, points, P = _tiling(N, H, W, tile)
    plan = _plan(op, desc, O, C, P, sfx, points, winograd_input=points * P * C,
                 winograd_output_gradient=points * O * P)
    V = runtime.cupy.empty((points, P, C), dtype=x.dtype)
    U = runtime.cupy.empty((points, O, P), dtype=x.dtype)
    runtime.launch_1d(_kernel(f"{name}_x_{sfx}"), P * C, (x, V, i32(N), i32(C), i32(H), i32(W)))
    runtime.launch_1d(_kernel(f"{name}_dy_{sfx}"), O * P, (gy, U, i32(N), i32(O), i32(H), i32(W)))
    ws = _gemm(plan, U, V, O, C, P, sfx)
    runtime.launch_1d(_kernel(f"{name}_out_{sfx}"), O * C, (ws, gw, i32(plan[3]), i32(O), i32(C)))
    return gw
