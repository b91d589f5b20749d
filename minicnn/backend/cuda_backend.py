"""The CUDA backend: minicnn's own kernels (``kernels/*.cu``), launched through CuPy.

Every primitive of ``minicnn.backend.PRIMITIVES`` is here with the signature, output shapes,
dtypes and argmax encoding of ``numpy_backend`` (its docstrings state the maths). The named
ops run our kernels only -- no cuDNN, no cuBLAS; CuPy provides the arrays, the NVRTC
compiler, plain elementwise glue (``xp``) and the kernel launches.

This module is imported only when something asks for the ``"cuda"`` device (see
``minicnn.backend.get``), so it may import CuPy at the top; a failed import is remembered and
reported by ``check_available()`` as ``BackendUnavailable`` with the reason.

Every launch first validates its inputs and raises ``ValueError`` (never launches) for a
wrong dtype (float32 / float64 only, all operands alike), inconsistent shapes, or sizes whose
32-bit index arithmetic could overflow; inputs that are not C-contiguous are made so (for
the in-place optimizer updates, whose arrays must be updated where they are, a
non-contiguous parameter or state is an error). Empty outputs are returned without a launch.

Kernel map (``kernels/<file>.cu``, entry points ``<name>_f32`` / ``<name>_f64``):

=====================================  ==========================================
primitive                              kernel(s)
=====================================  ==========================================
conv2d_forward                         conv.cu  conv2d_forward_<tile>  (bias, ReLU fused)
conv2d_backward_input                  conv.cu  conv2d_backward_input_<tile>, or
                                       conv2d_backward_input_partition_<tile> when the
                                       windows partition the input (up-convolution)
  all three, 1x1 with at most NARROW_MAX output channels (the head): conv1x1_forward,
  conv1x1_backward_input, conv1x1_backward_weight + splitk_reduce (narrow_1x1)
conv2d_backward_weight                 conv.cu  conv2d_backward_weight_<tile> + splitk_reduce
  "winograd" builds, where winograd_applies (3x3, stride 1, padding 1, even sizes):
  forward, input gradient              winograd_in, _filter, _gemm_<tile>, _conv_out
                                       (winograd4_in, _filter, _conv_out: winograd_tile 4)
  weight gradient                      winograd_x, _dy, _gemm_<tile>, _out
                                       (winograd4_x, _dy, _out: winograd_tile 4)
maxpool2d_forward / _backward          pool.cu  maxpool2d_{forward,backward}_{u8,i32}
relu_forward / relu_backward           activation.cu
softmax_cross_entropy_forward / _bwd   loss.cu  softmax_xent_{forward,backward}
                                       (+ softmax_xent_reduce for the sum and the mean)
adam_update, sgd_update, adagrad_update  optim.cu (compiled with --fmad=false)
=====================================  ==========================================
"""
import functools
import importlib.util
import math
import os
import sys

import numpy as np

from . import BackendUnavailable

try:
    import cupy
except Exception as _err:   # noqa: BLE001  ImportError, or a CuPy that breaks while importing
    cupy = None
    _IMPORT_ERROR = _err
else:
    _IMPORT_ERROR = None

name = "cuda"
device = "cuda"
xp = cupy

INSTALL_HINT = "CuPy is not installed: pip install 'cupy-cuda13x' (or the extra `.[cuda]`)"

_availability = None   # None: not probed yet; True: usable; else the reason (a str)


def _probe():
    if cupy is None:
        err = _IMPORT_ERROR
        if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == "cupy":
            return INSTALL_HINT
        return f"CuPy is installed but could not be imported: {type(err).__name__}: {err}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:   # noqa: BLE001  CUDARuntimeError: no driver, no device, ...
        return f"CuPy found no CUDA GPU: {type(err).__name__}: {err}"
    if count < 1:
        return "CuPy found no CUDA GPU: cudaGetDeviceCount() returned 0"
    return True


def check_available():
    """Raise ``BackendUnavailable`` (with the reason) unless CuPy and a GPU are usable.

    Called by ``minicnn.backend.get("cuda")``, i.e. for every CuPy array's backend lookup, so
    the probe runs once and its answer is kept.
    """
    global _availability
    if _availability is None:
        _availability = _probe()
    if _availability is not True:
        raise BackendUnavailable(_availability)


def asarray(a, dtype=None):
    """``a`` as a CuPy array (copied to the GPU if needed)."""
    return cupy.asarray(a, dtype=dtype)


def to_host(a):
    """A NumPy array holding ``a``'s values."""
    return cupy.asnumpy(a)


# =========================================================================== kernel loading
def _kernels_package():
    """``minicnn.kernels``: installed (setup.py maps the repo's ``kernels/`` there), or, in a
    source checkout, loaded from ``<repo>/kernels`` under that same name (never ``kernels``)."""
    try:
        from .. import kernels
        return kernels
    except ImportError:
        pass
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "kernels")
    spec = importlib.util.spec_from_file_location(
        "minicnn.kernels", os.path.join(folder, "__init__.py"),
        submodule_search_locations=[folder])
    if spec is None:
        raise ImportError(f"minicnn.kernels is not installed and {folder} has no __init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["minicnn.kernels"] = module
    spec.loader.exec_module(module)
    return module


# The optimizer kernels must round like NumPy (no a*b + c fused into one rounding).
_MODULE_OPTIONS = {"optim": ("--fmad=false",)}

# Build variants of kernels/conv.cu, chosen by the environment variable MINICNN_CONV_VARIANT
# (read when the first convolution kernel is loaded): "plain" or a "+"-joined set of features:
# "prefetch" (the GEMM engine's K loop software-pipelined), "vec4" (each thread reads its
# register block's operands from shared memory in 16-byte loads), "fastdiv" (the index
# arithmetic divides by multiply-high and shift), "tiles" (two more tile shapes, 128x64 and
# 64x128, and a planner that picks each GEMM's tile with a cost model, see plan_gemm),
# "kmajor" (the weight gradient's B-tile loads run along k, i.e. along a row of x, instead of
# across taps; not timed alone yet), "ktable" (the B loads of the forward and the input
# gradient read the tap and the k part of the address from a table built once per shape,
# k_table, instead of dividing; measured slower), "winograd" (3x3, stride 1, padding 1
# convolutions on even sizes by Winograd's algorithms, F(4x4, 3x3) or F(2x2, 3x3) for the
# forward and the input gradient, F(3x3, 4x4) or F(3x3, 2x2) for the weight gradient
# (MINICNN_WINOGRAD_TILE): 4x or 2.25x fewer multiplications; which passes, MINICNN_WINOGRAD
# says; not timed yet). Every variant computes the same sums in the
# same order, except that "tiles" may cut a weight gradient's K into other split-K slices and
# "winograd" sums transformed products (sums regrouped: float rounding differs). The default
# (DEFAULT_CONV_VARIANT) is the fastest build measured: on an H200 the U-Net's training step
# took 93.5 ms "plain", 54.3 ms with fastdiv+prefetch+vec4 and 50.4 ms with tiles added
# (benchmarks/NOTES.md, entries 11 and 15). The benchmarks time each variant in its own
# process; the tests build the ones in CONV_VARIANTS.
CONV_FEATURES = {
    "prefetch": "-DMINICNN_CONV_PREFETCH=1",
    "vec4": "-DMINICNN_CONV_VEC4=1",
    "fastdiv": "-DMINICNN_CONV_FASTDIV=1",
    "kmajor": "-DMINICNN_CONV_KMAJOR=1",
    "tiles": "-DMINICNN_CONV_TILES=1",
    "ktable": "-DMINICNN_CONV_KTABLE=1",
    "winograd": "-DMINICNN_CONV_WINOGRAD=1",
}


def conv_variant_options(variant):
    """The NVRTC options (``-D`` macros) of the conv build variant ``variant``."""
    if variant == "plain":
        return ()
    features = variant.split("+")
    if not all(f in CONV_FEATURES for f in features) or len(set(features)) != len(features):
        raise ValueError(f"MINICNN_CONV_VARIANT={variant!r}: expected 'plain' or a '+'-joined "
                         f"set of {sorted(CONV_FEATURES)}")
    return tuple(CONV_FEATURES[f] for f in sorted(features))


DEFAULT_CONV_VARIANT = "fastdiv+prefetch+tiles+vec4"
CONV_VARIANTS = {name: conv_variant_options(name) for name in
                 ("plain", "prefetch", "vec4", "fastdiv", "kmajor", "tiles", "ktable",
                  DEFAULT_CONV_VARIANT, "fastdiv+prefetch+vec4",
                  "fastdiv+kmajor+prefetch+tiles+vec4",
                  "fastdiv+kmajor+ktable+prefetch+tiles+vec4", "winograd",
                  "fastdiv+prefetch+tiles+vec4+winograd")}


def conv_variant():
    """The conv build variant named by ``MINICNN_CONV_VARIANT`` (default
    ``DEFAULT_CONV_VARIANT``), its features in a fixed order (``"vec4+prefetch"`` reads as
    ``"prefetch+vec4"``)."""
    variant = os.environ.get("MINICNN_CONV_VARIANT", DEFAULT_CONV_VARIANT)
    conv_variant_options(variant)                      # refuses an unknown name
    return variant if variant == "plain" else "+".join(sorted(variant.split("+")))


@functools.lru_cache(maxsize=None)
def _variant_features(variant):
    conv_variant_options(variant)                      # refuses an unknown name
    return frozenset(variant.split("+"))


def _conv_feature(name):
    """Whether the conv build has the feature ``name`` (of CONV_FEATURES). Asked at every conv
    launch, so the parsed variant is cached (one environment lookup per call)."""
    return name in _variant_features(os.environ.get("MINICNN_CONV_VARIANT",
                                                    DEFAULT_CONV_VARIANT))


# In "winograd" builds, which passes of a 3x3 / stride 1 / padding 1 convolution on even sizes
# take Winograd's algorithm: the environment variable MINICNN_WINOGRAD, a "+"-joined subset of
# WINOGRAD_PASSES (default: all three; "none" for none), read at each launch like the variant.
# Not timed yet (benchmarks/NOTES.md entries 18 and 19): the benchmarks time the subsets.
WINOGRAD_PASSES = ("forward", "input", "weight")
WINOGRAD_MIN_CHANNELS = 16    # fewer channels on either side: the transforms cost more than
#                               the multiplications they save (the U-Net's 1 -> 64 layer)


@functools.lru_cache(maxsize=None)
def _winograd_pass_set(value):
    passes = () if value == "none" else tuple(value.split("+"))
    if not all(p in WINOGRAD_PASSES for p in passes) or len(set(passes)) != len(passes):
        raise ValueError(f"MINICNN_WINOGRAD={value!r}: expected 'none' or a '+'-joined set of "
                         f"{list(WINOGRAD_PASSES)}")
    return frozenset(passes)


def winograd_passes():
    """The passes that take Winograd's algorithm in "winograd" builds (MINICNN_WINOGRAD)."""
    return _winograd_pass_set(os.environ.get("MINICNN_WINOGRAD", "+".join(WINOGRAD_PASSES)))


def winograd_applies(kH, kW, sH, sW, pH, pW, H, W, C, O):
    """True when Winograd's kernels (with 2x2 or 4x4 tiles, ``winograd_tile``) compute this
    convolution's passes: a 3x3 kernel, stride 1, padding 1, even H and W (whole 2x2 output
    tiles), and at least WINOGRAD_MIN_CHANNELS channels in and out. Pure Python (tested
    without a GPU)."""
    return ((kH, kW, sH, sW, pH, pW) == (3, 3, 1, 1, 1, 1) and H % 2 == 0 and W % 2 == 0
            and min(C, O) >= WINOGRAD_MIN_CHANNELS)


# The tile of the Winograd kernels in "winograd" builds: MINICNN_WINOGRAD_TILE=4 (default)
# takes F(4x4, 3x3) for the forward and the input gradient and F(3x3, 4x4) for the weight
# gradient where 4 divides H and W (36 points per 4x4 tile: 4x fewer multiplications than
# direct, and transformed operands 2.25x the data instead of 4x), and F(2x2, 3x3) /
# F(3x3, 2x2) elsewhere (the U-Net's 6 px layers); 2 takes the 2x2 tiles everywhere. Not
# timed yet (benchmarks/NOTES.md entry 24). The 4x4 tiles round more: about 4e-6 of max |y|
# in float32 against 3e-7 (docs/cuda.md).
WINOGRAD_TILES = (2, 4)


@functools.lru_cache(maxsize=None)
def _winograd_tile_value(value):
    if value not in [str(t) for t in WINOGRAD_TILES]:
        raise ValueError(f"MINICNN_WINOGRAD_TILE={value!r}: expected one of "
                         f"{[str(t) for t in WINOGRAD_TILES]}")
    return int(value)


def winograd_tile_setting():
    """The largest tile the Winograd kernels may take in "winograd" builds:
    MINICNN_WINOGRAD_TILE, 4 (default) or 2 (read at each launch, parsed once per value)."""
    return _winograd_tile_value(os.environ.get("MINICNN_WINOGRAD_TILE",
                                               str(max(WINOGRAD_TILES))))


def winograd_tile(H, W):
    """The tile m of F(m x m, 3x3) (forward, input gradient) and F(3x3, m x m) (weight
    gradient) of a Winograd-eligible convolution on H x W (MINICNN_WINOGRAD_TILE; pure
    Python)."""
    return 4 if winograd_tile_setting() == 4 and H % 4 == 0 and W % 4 == 0 else 2


def _winograd(pass_name, *shape):
    """Whether this build and MINICNN_WINOGRAD send ``pass_name`` of this conv to Winograd."""
    return (_conv_feature("winograd") and pass_name in winograd_passes()
            and winograd_applies(*shape))


def _module_options(module_name):
    if module_name == "conv":
        return conv_variant_options(conv_variant())
    return _MODULE_OPTIONS.get(module_name, ())


@functools.lru_cache(maxsize=None)
def _kernel(module_name, kernel_name):
    mod = _kernels_package().module(module_name, _module_options(module_name))
    return mod.get_function(kernel_name)


@functools.lru_cache(maxsize=None)
def _sm_count(device_id):
    return int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])


def _num_sms():
    return _sm_count(cupy.cuda.Device().id)


# =========================================================================== validation
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_SCALAR = {"f32": np.float32, "f64": np.float64}

# Kernels index with 32-bit ints; leave room for one tile (<= 256) of overhang past the end.
INDEX_LIMIT = 2**31 - 2**16


def _i32(v):
    return np.int32(v)


def _suffix(op, dtype, what):
    try:
        return _SUFFIX[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"{op}: {what} must be float32 or float64, got dtype {dtype}") from None


def _device_array(a):
    """``a`` as a CuPy array (a host array or number is copied to the GPU)."""
    if not isinstance(a, cupy.ndarray):
        a = cupy.asarray(a)
    return a


def _contiguous(a):
    """``a`` C-contiguous (a copy only if needed), keeping its shape (also a 0-d shape, which
    ``ascontiguousarray`` may turn into 1-d)."""
    c = cupy.ascontiguousarray(a)
    return c if c.shape == a.shape else c.reshape(a.shape)


def _input(op, a, what, dtype=None):
    """A read-only float operand: a C-contiguous CuPy array of ``dtype`` (if given)."""
    a = _device_array(a)
    _suffix(op, a.dtype, what)
    if dtype is not None and a.dtype != dtype:
        raise ValueError(f"{op}: {what} has dtype {a.dtype} but the other operands have {dtype}")
    return _contiguous(a)


def _inplace(op, a, what, like=None):
    """An array a kernel updates in place: must already be a contiguous CuPy float array."""
    if not isinstance(a, cupy.ndarray):
        raise ValueError(f"{op}: {what} must be a CuPy array (it is updated in place), "
                         f"got {type(a).__name__}")
    _suffix(op, a.dtype, what)
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: {what} (shape {a.shape}) must be C-contiguous: it is updated "
                         "in place")
    if like is not None and (a.shape != like.shape or a.dtype != like.dtype):
        raise ValueError(f"{op}: {what} has shape {a.shape} and dtype {a.dtype}, expected "
                         f"{like.shape} and {like.dtype} like the parameter")
    return a


def _ndim(op, a, ndim, what, layout):
    if a.ndim != ndim:
        raise ValueError(f"{op}: {what} must be {ndim}-D {layout}, got shape {a.shape}")


def _pair(op, value, what, minimum):
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {what} must be a pair of ints, got {value!r}") from None
    if min(a, b) < minimum:
        raise ValueError(f"{op}: {what} must be >= {minimum}, got {(a, b)}")
    return a, b


def _check_index_range(op, desc, **extents):
    """Refuse a launch whose index arithmetic could overflow a 32-bit int."""
    for what, v in extents.items():
        if v >= INDEX_LIMIT:
            raise ValueError(f"{op}: {desc} is too large for the kernels' 32-bit index "
                             f"arithmetic ({what} = {v} >= {INDEX_LIMIT})")


def _launch_1d(kernel, n, args, threads=256):
    """Launch a grid-stride kernel over ``n`` items (nothing for n == 0)."""
    if n <= 0:
        return
    blocks = min((n + threads - 1) // threads, 65535)
    kernel((blocks,), (threads,), args)


# =========================================================================== convolution
# Tile configurations of kernels/conv.cu: name -> (BM, BN, BK, TM, TN); a block has
# (BM/TM) * (BN/TN) threads (tile_threads). The last two exist only in builds with the
# "tiles" feature.
TILES = {
    "m32n128": (32, 128, 16, 4, 4),
    "m64n64": (64, 64, 16, 4, 4),
    "m128n128": (128, 128, 8, 8, 8),   # float32 only
    "m128n64": (128, 64, 8, 8, 8),     # float32, "tiles" builds
    "m64n128": (64, 128, 8, 8, 8),     # float32, "tiles" builds
}
MAX_SPLITS = 256          # split-K slabs of the weight gradient at most
MIN_K_PER_SPLIT = 512     # do not split K finer than this

# The planner of "tiles" builds estimates each tile's time with a small model (plan_gemm):
# TILE_OVERHEAD is the number of other instructions per FMA in the tile's K loop, the mean of
# the forward and both gradients' kernels in the SASS of fastdiv+prefetch+tiles+vec4 for sm_90
# (`python benchmarks/sass_census.py`, benchmarks/NOTES.md entry 13: the B-tile loads' index
# arithmetic is most of it, and a tile with BM rows does one B load per BM FMAs);
# TILE_BLOCKS_PER_SM is how many blocks of the tile fit on an SM at once (registers).
TILE_OVERHEAD = {"m128n128": 0.58, "m128n64": 0.73, "m64n128": 0.92, "m64n64": 1.15,
                 "m32n128": 1.72}
TILE_BLOCKS_PER_SM = {"m128n128": 2, "m128n64": 4, "m64n128": 4, "m64n64": 3, "m32n128": 3}
MIN_WARPS_PER_SM = 8      # below this many resident warps an SM is assumed latency-bound


def tile_threads(tile):
    """Threads per block of a tile configuration."""
    BM, BN, _, TM, TN = TILES[tile]
    return (BM // TM) * (BN // TN)


def _cdiv(a, b):
    return -(-a // b)


def _split(tile, M, Ncols, K, sm_count, split_k):
    """Grid and k_chunk of one tile: with ``split_k``, K is cut into about enough slices for
    four waves of blocks (whole K tiles each, no empty slice, MIN_K_PER_SPLIT at least)."""
    BM, BN, BK = TILES[tile][:3]
    gx, gy = _cdiv(Ncols, BN), _cdiv(M, BM)
    k_chunk, splits = K, 1
    if split_k and K > 0:
        want = _cdiv(4 * sm_count, gx * gy)           # about four waves of blocks
        splits = max(1, min(want, _cdiv(K, MIN_K_PER_SPLIT), MAX_SPLITS))
        k_chunk = _cdiv(_cdiv(K, splits), BK) * BK    # whole K tiles per slice
        splits = _cdiv(K, k_chunk)                    # no empty slices
    return (gx, gy, splits), k_chunk


def tile_cost(tile, M, Ncols, K, sm_count, split_k=False):
    """The planner's model of a tile's time (arbitrary units): the busiest SM runs
    ceil(blocks / SMs) blocks, each BM x BN x k_chunk FMAs plus TILE_OVERHEAD other
    instructions per FMA, issued at full rate if it holds MIN_WARPS_PER_SM warps at once and
    proportionally slower with fewer."""
    BM, BN = TILES[tile][:2]
    grid, k_chunk = _split(tile, M, Ncols, K, sm_count, split_k)
    per_sm = _cdiv(grid[0] * grid[1] * grid[2], sm_count)
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
    for float32 when its grid fills two blocks per SM, else m64n64. Pure Python (tested
    without a GPU); cached, since every conv launch asks."""
    if M <= 32:
        tile = "m32n128"
    elif tiles and suffix == "f32":
        costs = {t: tile_cost(t, M, Ncols, K, sm_count, split_k)
                 for t in ("m128n128", "m128n64", "m64n128", "m64n64")}
        tile = min(costs, key=costs.get)              # the first of equal costs
    elif (suffix == "f32" and M >= 128
          and _cdiv(M, 128) * _cdiv(Ncols, 128) >= 2 * sm_count):
        tile = "m128n128"
    else:
        tile = "m64n64"
    grid, k_chunk = _split(tile, M, Ncols, K, sm_count, split_k)
    return tile, grid, k_chunk


def _check_grid(op, desc, grid):
    if grid[0] > 2**31 - 1 or grid[1] > 65535 or grid[2] > 65535:
        raise ValueError(f"{op}: {desc} needs a grid {grid} beyond CUDA's limits")


def _conv_params(op, stride, padding):
    return _pair(op, stride, "stride", 1), _pair(op, padding, "padding", 0)


def _conv_shape_args(N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo):
    return tuple(_i32(v) for v in (N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo))


_NULL = np.uint64(0)      # a null pointer argument (the k table of builds without "ktable")


def k_table(kind, n, kH, kW, a, b):
    """The k table of the "ktable" conv builds (kernels/conv.cu, ``tap_i``): one (int32,
    int32) pair per k = (outer, i, j) of the forward (``kind="forward"``, outer = input
    channel c, (a, b) = (H, W): ``(c*H*W + i*W + j, i << 16 | j)``) or of the input gradient
    (``"input"``, outer = output channel o, (a, b) = (Ho, Wo): ``(o*Ho*Wo, i << 16 | j)``);
    ``n`` outer values. A host array; pure NumPy."""
    if max(kH, kW) >= 2**15:
        raise ValueError(f"a {kH}x{kW} kernel is too large for the k table (each side < 32768)")
    k = np.arange(n * kH * kW, dtype=np.int64)
    outer, r = np.divmod(k, kH * kW)
    i, j = np.divmod(r, kW)
    x = outer * a * b + (i * b + j if kind == "forward" else 0)
    return np.stack([x, (i << 16) | j], axis=1).astype(np.int32)


@functools.lru_cache(maxsize=256)
def _device_k_table(device_id, *key):
    with cupy.cuda.Device(device_id):
        return cupy.asarray(k_table(*key))


def _ktab(kind, n, kH, kW, a, b):
    """The k table on the current device (built once per shape), or a null pointer."""
    if not _conv_feature("ktable"):
        return _NULL
    return _device_k_table(cupy.cuda.Device().id, kind, n, kH, kW, a, b)


NARROW_MAX = 8    # kernels/conv.cu's NARROW_MAX: the most channels a narrow 1x1 kernel keeps


def narrow_1x1(kH, kW, sH, sW, pH, pW, channels):
    """True when a 1x1, stride 1, unpadded convolution with ``channels`` (the forward's
    outputs, the input gradient's summed channels) at most NARROW_MAX runs on the per-pixel
    kernels ``conv1x1_*`` instead of a GEMM (the U-Net's head, 64 -> 4). Pure Python."""
    return (kH, kW, sH, sW, pH, pW) == (1, 1, 1, 1, 0, 0) and channels <= NARROW_MAX


def _check_conv_sizes(op, desc, N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo):
    _check_index_range(op, desc, x_size=N * C * H * W, w_size=O * C * kH * kW,
                       y_size=N * O * Ho * Wo, padded_height_plus_stride=H + 2 * pH + sH,
                       padded_width_plus_stride=W + 2 * pW + sW)


def _bias(op, b, channels, dtype):
    """A bias operand: None, or a (channels,) array of ``dtype`` (ValueError otherwise)."""
    if b is None:
        return None
    b = _input(op, b, "bias", dtype)
    if b.shape != (channels,):
        raise ValueError(f"{op}: bias must have shape ({channels},), got {b.shape}")
    return b


def _sliced(out, slices):
    """The workspace of ``slices`` partial sums of ``out`` (``out`` itself for one)."""
    return out if slices == 1 else cupy.empty((slices,) + out.shape, dtype=out.dtype)


def _add_slices(ws, out, slices, sfx):
    """``out = ws[0] + ws[1] + ...`` in order (splitk_reduce; nothing to do for one slice)."""
    if slices > 1:
        _launch_1d(_kernel("conv", f"splitk_reduce_{sfx}"), out.size,
                   (ws, out, _i32(slices), np.int64(out.size)))
    return out


def conv2d_forward(x, w, b, stride, padding, relu=False):
    """``y = W * x + b`` (cross-correlation). x ``(N,C,H,W)``, w ``(O,C,kH,kW)`` -> ``(N,O,Ho,Wo)``.
    With ``relu``, ``max(y, 0)`` in the same store (as relu_forward, NaN kept)."""
    op = "conv2d_forward"
    x = _input(op, x, "input")
    w = _input(op, w, "weight", x.dtype)
    _ndim(op, x, 4, "input", "(N, C, H, W)")
    _ndim(op, w, 4, "weight", "(C_out, C_in, kH, kW)")
    (sH, sW), (pH, pW) = _conv_params(op, stride, padding)
    N, C, H, W = x.shape
    O, Cw, kH, kW = w.shape
    if C != Cw:
        raise ValueError(f"{op}: input {x.shape} has {C} channels, weight {w.shape} expects {Cw}")
    b = _bias(op, b, O, x.dtype)
    Ho, Wo = (H + 2 * pH - kH) // sH + 1, (W + 2 * pW - kW) // sW + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: kernel {kH}x{kW} is larger than the padded input "
                         f"{H + 2 * pH}x{W + 2 * pW} (input {x.shape}, padding {(pH, pW)})")
    desc = f"input {x.shape} with weight {w.shape}"
    _check_conv_sizes(op, desc, N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)
    sfx = _suffix(op, x.dtype, "input")
    y = cupy.empty((N, O, Ho, Wo), dtype=x.dtype)
    if y.size == 0:
        return y
    if narrow_1x1(kH, kW, sH, sW, pH, pW, O):
        _launch_1d(_kernel("conv", f"conv1x1_forward_{sfx}"), N * H * W,
                   (x, w, w if b is None else b, _i32(b is not None), _i32(bool(relu)), y,
                    _i32(N), _i32(C), _i32(O), _i32(H * W)))
        return y
    if _winograd("forward", kH, kW, sH, sW, pH, pW, H, W, C, O):
        return _winograd_conv(op, desc, x, w, b, y, sfx, flip=False, relu=relu)
    tile, grid, k_chunk = plan_gemm(O, N * Ho * Wo, C * kH * kW, sfx, _num_sms(),
                                    tiles=_conv_feature("tiles"))
    _check_grid(op, desc, grid)
    kernel = _kernel("conv", f"conv2d_forward_{tile}_{sfx}")
    kernel(grid, (tile_threads(tile),),
           (x, w, w if b is None else b, y, _i32(b is not None), _i32(bool(relu)),
            _ktab("forward", C, kH, kW, H, W),
            *_conv_shape_args(N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)))
    return y


def window_partition(kH, kW, sH, sW, pH, pW, H, W, Ho, Wo):
    """True when the convolution's windows partition the input: stride = kernel, no padding,
    and the windows reach the last row and column. Pure Python (tested without a GPU)."""
    return (sH, sW) == (kH, kW) and (pH, pW) == (0, 0) and (H, W) == (Ho * kH, Wo * kW)


def conv2d_backward_input(gy, w, x_shape, stride, padding, bias=None):
    """``dL/dx[n,c,h,v] = sum_{o,i,j} W[o,c,i,j] gy[n,o,p,q]`` over the (p, q) with
    ``h + pH = p*sH + i`` and ``v + pW = q*sW + j`` (col2im, computed as a gather), plus
    ``bias[c]`` when given (the transposed convolution's forward), in the same store."""
    op = "conv2d_backward_input"
    gy = _input(op, gy, "output gradient")
    w = _input(op, w, "weight", gy.dtype)
    _ndim(op, gy, 4, "output gradient", "(N, C_out, Ho, Wo)")
    _ndim(op, w, 4, "weight", "(C_out, C_in, kH, kW)")
    (sH, sW), (pH, pW) = _conv_params(op, stride, padding)
    try:
        N, C, H, W = (int(v) for v in x_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: x_shape must be (N, C, H, W), got {x_shape!r}") from None
    O, Cw, kH, kW = w.shape
    Ho, Wo = (H + 2 * pH - kH) // sH + 1, (W + 2 * pW - kW) // sW + 1
    if Cw != C or gy.shape != (N, O, Ho, Wo):
        raise ValueError(f"{op}: output gradient {gy.shape}, weight {w.shape} and input shape "
                         f"{(N, C, H, W)} do not match (stride {(sH, sW)}, padding "
                         f"{(pH, pW)}: expected output gradient {(N, O, Ho, Wo)})")
    bias = _bias(op, bias, C, gy.dtype)
    desc = f"input {(N, C, H, W)} with weight {w.shape}"
    _check_conv_sizes(op, desc, N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)
    sfx = _suffix(op, gy.dtype, "output gradient")
    gx = cupy.empty((N, C, H, W), dtype=gy.dtype)
    if gx.size == 0:
        return gx
    if narrow_1x1(kH, kW, sH, sW, pH, pW, O):
        _launch_1d(_kernel("conv", f"conv1x1_backward_input_{sfx}"), N * H * W,
                   (gy, w, gy if bias is None else bias, _i32(bias is not None), gx, _i32(N),
                    _i32(C), _i32(O), _i32(H * W)))
        return gx
    if _winograd("input", kH, kW, sH, sW, pH, pW, H, W, C, O):
        return _winograd_conv(op, desc, gy, w, bias, gx, sfx, flip=True)
    if window_partition(kH, kW, sH, sW, pH, pW, H, W, Ho, Wo):
        # Each input pixel lies in exactly one window (the U-Net's 2x2/2 up-convolution): a
        # dense GEMM over the output pixels whose epilogue scatters into gx ("pixel shuffle").
        tile, grid, _ = plan_gemm(C * kH * kW, N * Ho * Wo, O, sfx, _num_sms(),
                                  tiles=_conv_feature("tiles"))
        name = f"conv2d_backward_input_partition_{tile}_{sfx}"
        ktab = ()
    else:
        tile, grid, _ = plan_gemm(C, N * H * W, O * kH * kW, sfx, _num_sms(),
                                  tiles=_conv_feature("tiles"))
        # "ktable" builds have a kernel for stride 1 (no division by the stride)
        unit = "unit_" if _conv_feature("ktable") and (sH, sW) == (1, 1) else ""
        name = f"conv2d_backward_input_{unit}{tile}_{sfx}"
        ktab = (_ktab("input", O, kH, kW, Ho, Wo),)
    _check_grid(op, desc, grid)
    kernel = _kernel("conv", name)
    kernel(grid, (tile_threads(tile),),
           (gy, w, gx, gx if bias is None else bias, _i32(bias is not None), *ktab,
            *_conv_shape_args(N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)))
    return gx


def conv2d_backward_weight(gy, x, w_shape, stride, padding):
    """``dL/dW[o, c, i, j] = sum_{n,p,q} gy[n, o, p, q] * x_pad[n, c, p*sH + i, q*sW + j]``."""
    op = "conv2d_backward_weight"
    gy = _input(op, gy, "output gradient")
    x = _input(op, x, "input", gy.dtype)
    _ndim(op, gy, 4, "output gradient", "(N, C_out, Ho, Wo)")
    _ndim(op, x, 4, "input", "(N, C_in, H, W)")
    (sH, sW), (pH, pW) = _conv_params(op, stride, padding)
    try:
        O, C, kH, kW = (int(v) for v in w_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: w_shape must be (C_out, C_in, kH, kW), got {w_shape!r}") from None
    N, Cx, H, W = x.shape
    Ho, Wo = (H + 2 * pH - kH) // sH + 1, (W + 2 * pW - kW) // sW + 1
    if Cx != C or gy.shape != (N, O, Ho, Wo) or min(kH, kW) < 1:
        raise ValueError(f"{op}: output gradient {gy.shape}, input {x.shape} and weight shape "
                         f"{(O, C, kH, kW)} do not match (stride {(sH, sW)}, padding "
                         f"{(pH, pW)}: expected output gradient {(N, O, Ho, Wo)})")
    desc = f"input {x.shape} with weight {(O, C, kH, kW)}"
    _check_conv_sizes(op, desc, N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)
    sfx = _suffix(op, gy.dtype, "output gradient")
    gw = cupy.empty((O, C, kH, kW), dtype=gy.dtype)
    if gw.size == 0:
        return gw
    if narrow_1x1(kH, kW, sH, sW, pH, pW, O):
        return _narrow_weight(op, desc, gy, x, gw, sfx)
    if _winograd("weight", kH, kW, sH, sW, pH, pW, H, W, C, O):
        return _winograd_weight(op, desc, gy, x, gw, sfx)
    K = N * Ho * Wo
    tile, grid, k_chunk = plan_gemm(O, C * kH * kW, K, sfx, _num_sms(), split_k=True,
                                    tiles=_conv_feature("tiles"))
    splits = grid[2]
    _check_grid(op, desc, grid)
    _check_index_range(op, desc, split_k_workspace=splits * gw.size,
                       split_k_range=splits * k_chunk + 256)
    ws = _sliced(gw, splits)
    kernel = _kernel("conv", f"conv2d_backward_weight_{tile}_{sfx}")
    kernel(grid, (tile_threads(tile),),
           (gy, x, ws, _i32(k_chunk),
            *_conv_shape_args(N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)))
    return _add_slices(ws, gw, splits, sfx)


NARROW_THREADS = 256      # kernels/conv.cu's NARROW_THREADS: conv1x1_backward_weight's block
NARROW_MIN_CHUNK = 2048   # pixels per block of conv1x1_backward_weight at least


def narrow_weight_chunks(pixels, channel_groups, sm_count):
    """How conv1x1_backward_weight cuts the batch's pixels: ``(chunks, len)``, about four waves
    of blocks with the channel groups, NARROW_MIN_CHUNK pixels per chunk at least. Pure."""
    chunks = max(1, min(pixels // NARROW_MIN_CHUNK, _cdiv(4 * sm_count, channel_groups)))
    length = _cdiv(pixels, chunks)
    return _cdiv(pixels, length), length


def _narrow_weight(op, desc, gy, x, gw, sfx):
    """The weight gradient of a narrow 1x1 convolution (``narrow_1x1``): per-chunk sums of
    ``gy[n, o, s] x[n, c, s]`` over the pixels (conv1x1_backward_weight), then the chunks
    added in order (splitk_reduce)."""
    N, C, H, W = x.shape
    O = gy.shape[1]
    groups = _cdiv(C, NARROW_MAX)
    chunks, length = narrow_weight_chunks(N * H * W, groups, _num_sms())
    _check_grid(op, desc, (chunks, groups, 1))
    _check_index_range(op, desc, narrow_workspace=chunks * O * C)
    ws = _sliced(gw, chunks)
    _kernel("conv", f"conv1x1_backward_weight_{sfx}")(
        (chunks, groups), (NARROW_THREADS,),
        (gy, x, ws, _i32(N), _i32(C), _i32(O), _i32(H * W), _i32(length)))
    return _add_slices(ws, gw, chunks, sfx)


def _winograd_plan(op, desc, M, Ncols, K, sfx, points=16, **extents):
    """Plan of the ``points`` GEMMs (M x K)(K x Ncols) of a Winograd pass
    (``winograd_gemm_<tile>``, split along K): planned as one GEMM with ``points`` x the
    columns (as many blocks), launched with grid z = points x slices; the sizes checked with
    the transforms' ``extents``. Returns ``(tile, grid, k_chunk, splits)``."""
    tile, grid, k_chunk = plan_gemm(M, points * Ncols, K, sfx, _num_sms(), split_k=True,
                                    tiles=_conv_feature("tiles"))
    splits = grid[2]
    BM, BN = TILES[tile][:2]
    grid = (_cdiv(Ncols, BN), _cdiv(M, BM), points * splits)
    _check_grid(op, desc, grid)
    _check_index_range(op, desc, winograd_workspace=splits * points * M * Ncols,
                       split_k_range=splits * k_chunk + 256, **extents)
    return tile, grid, k_chunk, splits


def _winograd_gemm(plan, U, V, M, Ncols, K, sfx):
    """``ws[split, xy] = U[xy] V[xy]`` over each K slice, for each of the points xy (U's first
    axis): the workspace (splits, points, M, Ncols)."""
    tile, grid, k_chunk, splits = plan
    points = U.shape[0]
    ws = cupy.empty((splits, points, M, Ncols), dtype=U.dtype)
    _kernel("conv", f"winograd_gemm_{tile}_{sfx}")(
        grid, (tile_threads(tile),), (U, V, ws, _i32(M), _i32(Ncols), _i32(K), _i32(k_chunk),
                                      _i32(splits), _i32(points)))
    return ws


def _winograd_tiling(N, H, W):
    """The kernels' name prefix, the points of the transformed domain and the number of tiles P
    of a Winograd pass on N images of H x W (its tile m = winograd_tile(H, W))."""
    m = winograd_tile(H, W)
    return "winograd" if m == 2 else f"winograd{m}", (m + 2) ** 2, N * (H // m) * (W // m)


def _winograd_weight(op, desc, gy, x, gw, sfx):
    """The weight gradient of a 3x3, stride 1, padding 1 convolution on even H, W by Winograd's
    F(3x3, m x m), m = winograd_tile(H, W) ("winograd" builds; kernels/conv.cu, "Winograd
    weight gradient"): the transforms V = B^T x B of the input patches and U = A dy A^T of the
    output-gradient tiles, the (m + 2)^2 GEMMs U[xy] V[xy] (split along the P tiles like a
    direct weight gradient's K), then gw = G^T (sum of the slices) G."""
    N, C, H, W = x.shape
    O = gy.shape[1]
    name, points, P = _winograd_tiling(N, H, W)
    plan = _winograd_plan(op, desc, O, C, P, sfx, points, winograd_input=points * P * C,
                          winograd_output_gradient=points * O * P)
    V = cupy.empty((points, P, C), dtype=gy.dtype)
    U = cupy.empty((points, O, P), dtype=gy.dtype)
    _launch_1d(_kernel("conv", f"{name}_x_{sfx}"), P * C,
               (x, V, _i32(N), _i32(C), _i32(H), _i32(W)))
    _launch_1d(_kernel("conv", f"{name}_dy_{sfx}"), O * P,
               (gy, U, _i32(N), _i32(O), _i32(H), _i32(W)))
    ws = _winograd_gemm(plan, U, V, O, C, P, sfx)
    _launch_1d(_kernel("conv", f"{name}_out_{sfx}"), O * C,
               (ws, gw, _i32(plan[3]), _i32(O), _i32(C)))
    return gw


def _winograd_conv(op, desc, src, w, b, out, sfx, flip, relu=False):
    """A 3x3, stride 1, padding 1 convolution on even H, W by Winograd's F(m x m, 3x3), m =
    winograd_tile(H, W) ("winograd" builds; kernels/conv.cu, "Winograd convolution"):
    ``out = conv(src, w) + b`` (the forward: src = x, out = y) or, with ``flip``,
    ``out = conv(src, w')`` with w' the filters transposed and turned by 180 degrees (the input
    gradient: src = dy, out = dx). The transforms V = B^T patch B of src and U = G g G^T of
    the filters, the (m + 2)^2 GEMMs U[xy] V[xy] (split along the channels summed, like a
    forward's K), then out = A^T (sum of the slices) A (+ b, then the ReLU if ``relu``), tile
    by tile."""
    N, K, H, W = src.shape            # K: the channels summed over
    R = out.shape[1]                  # R: the channels computed
    O, C = w.shape[:2]
    name, points, P = _winograd_tiling(N, H, W)
    plan = _winograd_plan(op, desc, R, P, K, sfx, points, winograd_input=points * K * P,
                          winograd_filters=points * R * K)
    V = cupy.empty((points, K, P), dtype=src.dtype)
    U = cupy.empty((points, R, K), dtype=src.dtype)
    _launch_1d(_kernel("conv", f"{name}_in_{sfx}"), K * P,
               (src, V, _i32(N), _i32(K), _i32(H), _i32(W)))
    _launch_1d(_kernel("conv", f"{name}_filter_{sfx}"), O * C,
               (w, U, _i32(O), _i32(C), _i32(flip)))
    ws = _winograd_gemm(plan, U, V, R, P, K, sfx)
    _launch_1d(_kernel("conv", f"{name}_conv_out_{sfx}"), R * P,
               (ws, ws if b is None else b, _i32(b is not None), _i32(bool(relu)), out,
                _i32(plan[3]), _i32(N), _i32(R), _i32(H), _i32(W)))
    return out


# =========================================================================== pooling
def maxpool2d_forward(x, kernel, stride):
    """Max over each window; also returns, per output, the window offset ``i*kW + j`` of the
    max (uint8 when kH*kW <= 256, else int32, as numpy_backend)."""
    op = "maxpool2d_forward"
    x = _input(op, x, "input")
    _ndim(op, x, 4, "input", "(N, C, H, W)")
    (kH, kW), (sH, sW) = _pair(op, kernel, "kernel", 1), _pair(op, stride, "stride", 1)
    N, C, H, W = x.shape
    Ho, Wo = (H - kH) // sH + 1, (W - kW) // sW + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: kernel {(kH, kW)} is larger than the input {x.shape}")
    _check_index_range(op, f"input {x.shape}", x_size=x.size, height_plus_stride=H + sH,
                       width_plus_stride=W + sW, window=kH * kW)
    sfx = _suffix(op, x.dtype, "input")
    itype, isfx = (np.uint8, "u8") if kH * kW <= 256 else (np.int32, "i32")
    y = cupy.empty((N, C, Ho, Wo), dtype=x.dtype)
    idx = cupy.empty((N, C, Ho, Wo), dtype=itype)
    _launch_1d(_kernel("pool", f"maxpool2d_forward_{isfx}_{sfx}"), y.size,
               (x, y, idx, _i32(N * C), _i32(H), _i32(W), _i32(Ho), _i32(Wo),
                _i32(kH), _i32(kW), _i32(sH), _i32(sW)))
    return y, idx


def maxpool2d_backward(gy, idx, x_shape, kernel, stride):
    """Route each output gradient to the input position that held the max (a gather per
    input pixel over the windows that cover it: overlapping windows need no atomics)."""
    op = "maxpool2d_backward"
    gy = _input(op, gy, "output gradient")
    idx = _device_array(idx)
    if idx.dtype == np.uint8:
        isfx = "u8"
    elif idx.dtype.kind in "iu":
        idx, isfx = idx.astype(np.int32, copy=False), "i32"
    else:
        raise ValueError(f"{op}: argmax must be an integer array, got dtype {idx.dtype}")
    idx = _contiguous(idx)
    (kH, kW), (sH, sW) = _pair(op, kernel, "kernel", 1), _pair(op, stride, "stride", 1)
    try:
        N, C, H, W = (int(v) for v in x_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: x_shape must be (N, C, H, W), got {x_shape!r}") from None
    Ho, Wo = (H - kH) // sH + 1, (W - kW) // sW + 1
    if gy.shape != (N, C, Ho, Wo) or idx.shape != gy.shape:
        raise ValueError(f"{op}: output gradient {gy.shape} and argmax {idx.shape} must both "
                         f"be {(N, C, Ho, Wo)} for input {(N, C, H, W)}, kernel {(kH, kW)}, "
                         f"stride {(sH, sW)}")
    _check_index_range(op, f"input {(N, C, H, W)}", x_size=N * C * H * W,
                       height_plus_stride=H + sH, width_plus_stride=W + sW, window=kH * kW)
    sfx = _suffix(op, gy.dtype, "output gradient")
    gx = cupy.empty((N, C, H, W), dtype=gy.dtype)
    _launch_1d(_kernel("pool", f"maxpool2d_backward_{isfx}_{sfx}"), gx.size,
               (gy, idx, gx, _i32(N * C), _i32(H), _i32(W), _i32(Ho), _i32(Wo),
                _i32(kH), _i32(kW), _i32(sH), _i32(sW)))
    return gx


# =========================================================================== activations
def _elementwise_kernel(name, sfx, n, arrays):
    """The kernel ``name`` of activation.cu and the number of grid items for ``n`` elements:
    its ``_vec`` version (16 bytes per load, one thread per 16 bytes) when every array starts
    on a 16-byte boundary (CuPy's allocations do; a view may not), else the plain one."""
    if all(a.data.ptr % 16 == 0 for a in arrays):
        width = 16 // arrays[0].dtype.itemsize
        return _kernel("activation", f"{name}_vec_{sfx}"), max(n // width, n % width)
    return _kernel("activation", f"{name}_{sfx}"), n


def relu_forward(x):
    """``max(x, 0)``."""
    op = "relu_forward"
    x = _input(op, x, "input")
    sfx = _suffix(op, x.dtype, "input")
    y = cupy.empty(x.shape, dtype=x.dtype)
    kernel, items = _elementwise_kernel("relu_forward", sfx, x.size, (x, y))
    _launch_1d(kernel, items, (x, y, np.int64(x.size)))
    return y


def relu_backward(gy, y):
    """``gy * [y > 0]``."""
    op = "relu_backward"
    gy = _input(op, gy, "output gradient")
    y = _input(op, y, "output", gy.dtype)
    if gy.shape != y.shape:
        raise ValueError(f"{op}: output gradient {gy.shape} and output {y.shape} differ in shape")
    sfx = _suffix(op, gy.dtype, "output gradient")
    gx = cupy.empty(gy.shape, dtype=gy.dtype)
    kernel, items = _elementwise_kernel("relu_backward", sfx, gy.size, (gy, y, gx))
    _launch_1d(kernel, items, (gy, y, gx, np.int64(gy.size)))
    return gx


# =========================================================================== loss
def _loss_operands(op, x, t, w, what):
    """(x, t, w, N, C, S) validated: x float (N, C, *rest), t int64 (N, *rest), w (C,) or None."""
    x = _input(op, x, what)
    if x.ndim < 2:
        raise ValueError(f"{op}: {what} must be (N, C, ...), got shape {x.shape}")
    N, C = x.shape[:2]
    S = int(np.prod(x.shape[2:], dtype=np.int64))
    if C < 1:
        raise ValueError(f"{op}: {what} {x.shape} has no classes")
    t = _device_array(t)
    if t.dtype.kind not in "iu":
        raise ValueError(f"{op}: target must hold integer class indices, got dtype {t.dtype}")
    expected = (N,) + x.shape[2:]
    if t.shape != expected:
        raise ValueError(f"{op}: target shape {t.shape} does not match {what} {x.shape} "
                         f"(expected {expected})")
    t = _contiguous(t.astype(np.int64, copy=False))
    if w is not None:
        w = _contiguous(_device_array(w).astype(x.dtype, copy=False))
        if w.shape != (C,):
            raise ValueError(f"{op}: class weight must have shape ({C},), got {w.shape}")
    _check_index_range(op, f"{what} {x.shape}", size=x.size, classes=C, positions=N * S)
    return x, t, w, N, C, S


def softmax_cross_entropy_forward(x, t, w, check_target=True, reduction="none"):
    """Weighted cross-entropy of logits ``x`` (N, C, ...) and integer targets t.

    Returns ``(loss, wt, p)``: ``loss = -w[t] * log softmax(x)[t]`` and ``wt = w[t]`` of shape
    ``t.shape``, and ``p = softmax(x)``. With ``reduction="sum"`` loss and wt are their sums
    (0-d), with ``"mean"`` loss is ``sum loss / sum wt``: one more launch adds the blocks'
    partial sums in a fixed order. A target outside ``[0, C)`` raises ValueError (the kernel's
    flag or count, read back: one sync); with ``check_target=False`` (the caller checked) it
    is not read, and such a position would get NaN loss.
    """
    op = "softmax_cross_entropy_forward"
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"{op}: reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    x, t, w, N, C, S = _loss_operands(op, x, t, w, "logits")
    sfx = _suffix(op, x.dtype, "logits")
    p = cupy.empty(x.shape, dtype=x.dtype)
    reduce = reduction != "none"
    if t.size == 0:
        if not reduce:
            return cupy.empty(t.shape, dtype=x.dtype), cupy.empty(t.shape, dtype=x.dtype), p
        total, wsum = cupy.zeros((), dtype=x.dtype), cupy.zeros((), dtype=x.dtype)
        return (total / wsum if reduction == "mean" else total), wsum, p
    kernel = _kernel("loss", f"softmax_xent_forward_{sfx}")
    if not reduce:
        loss = cupy.empty(t.shape, dtype=x.dtype)
        wt = cupy.empty(t.shape, dtype=x.dtype)
        bad = cupy.zeros((1,), dtype=np.int32)
        _launch_1d(kernel, t.size, (x, t, x if w is None else w, _i32(w is not None), loss, wt,
                                    p, bad, p, _i32(0), _i32(N), _i32(C), _i32(S)),
                   threads=SCE_THREADS)
        if check_target and int(bad[0]):   # one flag read (a sync) instead of a min/max pass
            raise ValueError(f"{op}: target values must be in [0, {C}), found values outside "
                             f"(target shape {t.shape})")
        return loss, wt, p
    blocks = min(_cdiv(t.size, SCE_THREADS), 65535)          # as _launch_1d's grid
    partial = cupy.empty((blocks, 3), dtype=x.dtype)
    out = cupy.empty((3,), dtype=x.dtype)
    _launch_1d(kernel, t.size, (x, t, x if w is None else w, _i32(w is not None), p, p, p,
                                _i32_scratch(), partial, _i32(1), _i32(N), _i32(C), _i32(S)),
               threads=SCE_THREADS)
    _kernel("loss", f"softmax_xent_reduce_{sfx}")(
        (1,), (SCE_THREADS,), (partial, _i32(blocks), _i32(reduction == "mean"), out))
    if check_target and int(out[2]):   # the bad targets' count (a sync)
        raise ValueError(f"{op}: target values must be in [0, {C}), found values outside "
                         f"(target shape {t.shape})")
    return out[0], out[1], p


SCE_THREADS = 256    # kernels/loss.cu's SCE_THREADS: the block of its reductions


@functools.lru_cache(maxsize=None)
def _device_scratch(device_id):
    with cupy.cuda.Device(device_id):
        return cupy.zeros((1,), dtype=np.int32)


def _i32_scratch():
    """One int32 on the current device for a kernel argument that is never read or written
    (a pointer argument must still point to valid memory)."""
    return _device_scratch(cupy.cuda.Device().id)


def softmax_cross_entropy_backward(p, t, w, g):
    """``dL/dx = g * w[t] * (p - onehot(t))``; ``g`` of ``t``'s shape, possibly a broadcast view
    of one value (read once, never materialised)."""
    op = "softmax_cross_entropy_backward"
    p, t, w, N, C, S = _loss_operands(op, p, t, w, "probabilities")
    sfx = _suffix(op, p.dtype, "probabilities")
    g = _device_array(g)
    if g.dtype.kind != "f":
        raise ValueError(f"{op}: upstream gradient must be floating, got dtype {g.dtype}")
    if g.size == 1 or (g.size > 0 and all(s == 0 for s in g.strides)):
        if g.size != 1 and g.shape != t.shape:
            raise ValueError(f"{op}: upstream gradient {g.shape} does not match target {t.shape}")
        # One value for every position (e.g. broadcast_to(g * scale, t.shape) of a mean):
        # a one-element view of it, so the broadcast is never materialised.
        g = g[(slice(0, 1),) * g.ndim]
        g, g_step = _contiguous(g.astype(p.dtype, copy=False)), 0
    else:
        if g.shape != t.shape:
            raise ValueError(f"{op}: upstream gradient {g.shape} does not match target {t.shape}")
        g, g_step = _contiguous(g.astype(p.dtype, copy=False)), 1
    gx = cupy.empty(p.shape, dtype=p.dtype)
    _launch_1d(_kernel("loss", f"softmax_xent_backward_{sfx}"), p.size,
               (p, t, p if w is None else w, _i32(w is not None), g, _i32(g_step), gx,
                _i32(N), _i32(C), _i32(S)))
    return gx


# =========================================================================== optimizers
# Each updates the parameter and its state in place, with PyTorch's exact arithmetic order;
# the scalar coefficients are computed here in double precision, as numpy_backend does in
# Python, and passed in the parameter's dtype.
def _grad_operand(op, g, p):
    g = _device_array(g)
    if g.shape != p.shape:
        raise ValueError(f"{op}: gradient {g.shape} and parameter {p.shape} differ in shape")
    if g.dtype.kind != "f":
        raise ValueError(f"{op}: gradient must be floating, got dtype {g.dtype}")
    return _contiguous(g.astype(p.dtype, copy=False))


def adam_update(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    """Adam: ``m <- lerp(m, g, 1-b1)``, ``v <- b2 v + (1-b2) g^2``,
    ``p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``."""
    op = "adam_update"
    p = _inplace(op, p, "parameter")
    m = _inplace(op, m, "first moment", p)
    v = _inplace(op, v, "second moment", p)
    g = _grad_operand(op, g, p)
    sfx = _suffix(op, p.dtype, "parameter")
    T = _SCALAR[sfx]
    _launch_1d(_kernel("optim", f"adam_update_{sfx}"), p.size,
               (p, g, m, v, np.int64(p.size), T(weight_decay), _i32(bool(weight_decay)),
                T(1 - beta1), T(beta2), T(1 - beta2), T(math.sqrt(1 - beta2 ** step)), T(eps),
                T(lr / (1 - beta1 ** step))))


def sgd_update(p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, first):
    """SGD: ``b <- mu b + (1-dampening) g`` (``b <- g`` on the first step); ``p <- p - lr d``
    with ``d = g + mu b`` (Nesterov) or ``d = b``. ``buf`` is None without momentum."""
    op = "sgd_update"
    p = _inplace(op, p, "parameter")
    if momentum:
        if buf is None:
            raise ValueError(f"{op}: momentum {momentum} needs a momentum buffer, got None")
        buf = _inplace(op, buf, "momentum buffer", p)
    g = _grad_operand(op, g, p)
    sfx = _suffix(op, p.dtype, "parameter")
    T = _SCALAR[sfx]
    _launch_1d(_kernel("optim", f"sgd_update_{sfx}"), p.size,
               (p, g, buf if momentum else p, np.int64(p.size), T(lr), T(weight_decay),
                _i32(bool(weight_decay)), T(momentum), T(1 - dampening), _i32(bool(momentum)),
                _i32(bool(nesterov)), _i32(bool(first))))


def adagrad_update(p, g, s, *, clr, eps, weight_decay):
    """AdaGrad: ``s <- s + g^2``, ``p <- p - clr * g / (sqrt(s) + eps)``."""
    op = "adagrad_update"
    p = _inplace(op, p, "parameter")
    s = _inplace(op, s, "sum of squares", p)
    g = _grad_operand(op, g, p)
    sfx = _suffix(op, p.dtype, "parameter")
    T = _SCALAR[sfx]
    _launch_1d(_kernel("optim", f"adagrad_update_{sfx}"), p.size,
               (p, g, s, np.int64(p.size), T(clr), T(eps), T(weight_decay),
                _i32(bool(weight_decay))))
