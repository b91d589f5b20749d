"""The launchers of the ladder's own rungs (1-3): shapes, grids, arguments.

Each rung ``dev/cuda/conv_<n>_<name>.cu`` holds kernels of one 3x3, stride-1,
padding-1 convolution of NCHW float32 tensors. A launcher here turns arrays into
one kernel launch: it checks the shapes, allocates the output and computes the
grid. It runs on a *runtime*, so that the same code launches on a GPU and in the
tests' CPU emulator:

* ``rt.kernel(file, name)``: a callable ``(grid, block, args)``, as a
  ``cupy.RawKernel`` (args: arrays of the runtime, and ``numpy.int32``);
* ``rt.empty(shape)``: a float32 array of the runtime.

``dev/cuda/ladder.py`` has the CuPy runtime; ``tests/test_ladder.py`` the
emulator's. Every launcher takes and returns C-contiguous float32 arrays:
``forward(rt, x, w, b)``, ``input_grad(rt, gy, w)``, ``weight_grad(rt, x, gy)``
(the signatures of rung 5's ``dev/cuda/winograd.py``, plus the runtime).
"""
import os
import re

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS = 256          # the 1-D blocks of rungs 1 and 3, and of rung 2's gw
TILE = 16              # rung 2: a block computes TILE x TILE output pixels
BM = BN = 64           # rung 3: a block computes BM channels x BN pixels


def _dims(x=None, w=None, gy=None, b=None):
    """``(N, C, H, W, O)`` of a 3x3 convolution with input ``x`` (N, C, H, W),
    weight ``w`` (O, C, 3, 3), output gradient ``gy`` (N, O, H, W) and bias
    ``b`` (O,), from the two or three of them a pass takes; a ValueError names
    the first that does not fit."""
    given = {k: a for k, a in (("x", x), ("w", w), ("gy", gy), ("b", b))
             if a is not None}
    for name, a in given.items():
        if a.ndim != (1 if name == "b" else 4):
            raise ValueError(f"{name} has shape {tuple(a.shape)}: "
                             f"{'1' if name == 'b' else '4'} dimensions expected")
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError(f"{name}: the ladder's kernels take C-contiguous "
                             f"float32 arrays; got {a.dtype}, shape {a.shape}")
    N, C, H, W = x.shape if x is not None else (None,) * 4
    O = w.shape[0] if w is not None else gy.shape[1]
    C = w.shape[1] if w is not None else C
    if gy is not None:
        N, H, W = gy.shape[0], gy.shape[2], gy.shape[3]
    want = {"x": (N, C, H, W), "w": (O, C, 3, 3), "gy": (N, O, H, W), "b": (O,)}
    for name, a in given.items():
        if tuple(a.shape) != want[name]:
            raise ValueError(f"{name} has shape {tuple(a.shape)}; the ladder's "
                             f"3x3, stride-1, padding-1 kernels need {want[name]} "
                             f"here (shapes: " + ", ".join(
                                 f"{k} {tuple(v.shape)}" for k, v in given.items()) + ")")
    if N * max(C, O) * H * W >= 2**31:
        raise ValueError(f"{N}x{max(C, O)}x{H}x{W} elements: too many for the "
                         "kernels' 32-bit index arithmetic")
    return N, C, H, W, O


def cu_constants(file):
    """``{NAME: value}`` of the ``constexpr int NAME = value`` lines of the
    rung ``file`` (with ``A = 1, B = 2`` lists and products of earlier names):
    the tests and docs/scripts/make_figures.py read the tiling from the source."""
    with open(os.path.join(HERE, file), encoding="utf-8") as f:
        text = f.read()
    found = {}
    for decl in re.findall(r"constexpr int ([^;]+);", text):
        for name, expr in re.findall(r"(\w+)\s*=\s*([^,]+)", decl):
            assert re.fullmatch(r"[\w\s()+*/-]+", expr), expr   # arithmetic only
            found[name] = int(eval(expr, {"__builtins__": {}}, dict(found)))  # noqa: S307
    return found


def _args(*dims):
    return tuple(np.int32(d) for d in dims)


def _blocks(n, per_block=THREADS):
    return (n + per_block - 1) // per_block


# ------------------------------------------------------------ rung 1: naive
def naive_forward(rt, x, w, b):
    N, C, H, W, O = _dims(x=x, w=w, b=b)
    y = rt.empty((N, O, H, W))
    rt.kernel("conv_1_naive.cu", "conv1_forward")(
        (_blocks(N * O * H * W),), (THREADS,), (x, w, b, y) + _args(N, C, H, W, O))
    return y


def naive_input_grad(rt, gy, w):
    N, C, H, W, O = _dims(w=w, gy=gy)
    gx = rt.empty((N, C, H, W))
    rt.kernel("conv_1_naive.cu", "conv1_input_grad")(
        (_blocks(N * C * H * W),), (THREADS,), (gy, w, gx) + _args(N, C, H, W, O))
    return gx


def naive_weight_grad(rt, x, gy):
    N, C, H, W, O = _dims(x=x, gy=gy)
    gw = rt.empty((O, C, 3, 3))
    rt.kernel("conv_1_naive.cu", "conv1_weight_grad")(
        (_blocks(O * C * 9),), (THREADS,), (x, gy, gw) + _args(N, C, H, W, O))
    return gw


# ------------------------------------------------------------ rung 2: shared memory
def _tiles(H, W):
    return -(-H // TILE) * -(-W // TILE)


def smem_forward(rt, x, w, b):
    N, C, H, W, O = _dims(x=x, w=w, b=b)
    y = rt.empty((N, O, H, W))
    rt.kernel("conv_2_smem.cu", "conv2_forward")(
        (_tiles(H, W), O, N), (TILE, TILE), (x, w, b, y) + _args(N, C, H, W, O))
    return y


def smem_input_grad(rt, gy, w):
    N, C, H, W, O = _dims(w=w, gy=gy)
    gx = rt.empty((N, C, H, W))
    rt.kernel("conv_2_smem.cu", "conv2_input_grad")(
        (_tiles(H, W), C, N), (TILE, TILE), (gy, w, gx) + _args(N, C, H, W, O))
    return gx


def smem_weight_grad(rt, x, gy):
    N, C, H, W, O = _dims(x=x, gy=gy)
    gw = rt.empty((O, C, 3, 3))
    rt.kernel("conv_2_smem.cu", "conv2_weight_grad")(
        (C, O), (THREADS,), (x, gy, gw) + _args(N, C, H, W, O))
    return gw


# ------------------------------------------------------------ rung 3: implicit GEMM
def _implicit_gemm(file, prefix, threads):
    """The forward and input-gradient launchers of an implicit-GEMM rung: one
    block of ``threads`` per BM output channels x BN pixels (the input
    gradient's "output channels" are the input's)."""
    def forward(rt, x, w, b):
        N, C, H, W, O = _dims(x=x, w=w, b=b)
        y = rt.empty((N, O, H, W))
        rt.kernel(file, f"{prefix}_forward")(
            (_blocks(N * H * W, BN), _blocks(O, BM)), (threads,),
            (x, w, b, y) + _args(N, C, H, W, O))
        return y

    def input_grad(rt, gy, w):
        N, C, H, W, O = _dims(w=w, gy=gy)
        gx = rt.empty((N, C, H, W))
        rt.kernel(file, f"{prefix}_input_grad")(
            (_blocks(N * H * W, BN), _blocks(C, BM)), (threads,),
            (gy, w, gx) + _args(N, C, H, W, O))
        return gx
    return forward, input_grad


# rung 3: register blocks
regblock_forward, regblock_input_grad = _implicit_gemm("conv_3_regblock.cu", "conv3",
                                                       THREADS)


# rung number -> (name, source file, {pass: launcher}); rungs 4 to 6 are not
# launched from here (ladder.py: minicnn's CUDA backend in fp32 and in TF32,
# dev/cuda/winograd.py)
RUNGS = {
    1: ("naive", "conv_1_naive.cu", {"forward": naive_forward,
                                     "input_grad": naive_input_grad,
                                     "weight_grad": naive_weight_grad}),
    2: ("smem", "conv_2_smem.cu", {"forward": smem_forward,
                                   "input_grad": smem_input_grad,
                                   "weight_grad": smem_weight_grad}),
    3: ("regblock", "conv_3_regblock.cu", {"forward": regblock_forward,
                                           "input_grad": regblock_input_grad}),
}
