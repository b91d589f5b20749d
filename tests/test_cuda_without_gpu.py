"""What can be checked of the CUDA backend without a GPU: the kernel sources run on the CPU
(``tests/kernel_emu``), the launch planning, and the backends' common contract.

``tests/kernel_emu/cuda_emu.h`` compiles a ``kernels/*.cu`` file as C++ and runs each launch
block by block, every CUDA thread a fiber that yields at ``__syncthreads()``; the check
programs compare the kernels with plain loops (see the header for what this can and cannot
catch). The same emulator, built as shared libraries and called through ctypes, also runs
cuda_backend's primitives end to end on NumPy arrays (``_use_the_emulator``): launchers,
plans and kernels together, against numpy_backend. The GPU self-check in
``benchmarks/gpu_check.sh`` remains the test on real hardware.
"""
import ctypes
import functools
import inspect
import os
import re
import shutil
import subprocess
import types

import numpy as np
import pytest

from minicnn import backend
from minicnn.backend import cuda_backend as cb, numpy_backend as nb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "tests", "kernel_emu")
CXX = shutil.which(os.environ.get("CXX", "g++"))


def _run_conv_check(variant, tmp_path, flags=("-O2",), env=None):
    """Build tests/kernel_emu/conv_check.cpp with the NVRTC options of the conv build
    ``variant`` (-D macros, passed to g++ as they are) and ``flags``, run it, and check that all
    its (at least 100) checks passed; returns the run's stderr."""
    exe = tmp_path / "conv_check"
    build = [CXX, "-std=c++20", *flags, "-fno-strict-aliasing", *cb.conv_variant_options(variant),
             "-I", EMU, "-I", os.path.join(ROOT, "kernels"), "-x", "c++",
             os.path.join(EMU, "conv_check.cpp"), "-o", str(exe)]
    r = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(build)}:\n{r.stderr[-4000:]}"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, env=env)
    failed = [line for line in r.stdout.splitlines() if not line.startswith("ok")]
    assert r.returncode == 0, ("\n".join(failed) + r.stderr)[-4000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith(" 0 failures") and int(last.split()[0]) >= 100, last
    return r.stderr


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
@pytest.mark.parametrize("variant", list(cb.CONV_VARIANTS))
def test_kernels_in_the_emulator(variant, tmp_path):
    """Each build variant of the kernel file (``cb.CONV_VARIANTS``)."""
    _run_conv_check(variant, tmp_path)


def _asan_works(tmp_path):
    src = tmp_path / "t.cpp"
    src.write_text("int main() { return 0; }\n")
    r = subprocess.run([CXX, "-fsanitize=address", str(src), "-o", str(tmp_path / "t")],
                       capture_output=True, text=True, timeout=120)
    return r.returncode == 0


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
@pytest.mark.parametrize("variant", [cb.DEFAULT_CONV_VARIANT,
                                     "fastdiv+kmajor+ktable+prefetch+tiles+vec4",
                                     "fastdiv+prefetch+tiles+vec4+winograd"])
def test_build_in_the_emulator_under_asan(variant, tmp_path):
    """The default build, the one with kmajor, ktable and tiles, and the default with winograd
    under AddressSanitizer (the GPU's memcheck runs only where a GPU is lent: on the H200,
    2026-11-27, it passed for the old default and the kmajor+ktable+tiles build), with every
    buffer's guard zone poisoned: an out-of-bounds *read*, which the plain emulator run cannot
    see (rows read past M are never stored), stops the program. Dropping the ``gm < M`` test
    of the prefetched A loads is caught at once (checked by hand, 2026-11-27)."""
    if not _asan_works(tmp_path):
        pytest.skip(f"{CXX} cannot build with -fsanitize=address (no libasan)")
    env = dict(os.environ, ASAN_OPTIONS="detect_stack_use_after_return=0:detect_leaks=0")
    stderr = _run_conv_check(variant, tmp_path, ("-O1", "-fsanitize=address,undefined",
                                                 "-fno-sanitize-recover=undefined"), env)
    assert "ERROR: AddressSanitizer" not in stderr and "runtime error" not in stderr


@pytest.mark.parametrize("M, Ncols, K, suffix, split_k, tile", [
    (16, 230400, 9, "f32", False, "m32n128"),         # first U-Net layer: few output channels
    (128, 57600, 1152, "f32", False, "m128n128"),     # 128 -> 128 @48px: a large grid
    (512, 3600, 4608, "f32", False, "m64n64"),        # 512 @12px: too few 128x128 tiles
    (512, 3600, 4608, "f64", False, "m64n64"),        # no 128x128 tile in float64
    (64, 576, 230400, "f32", True, "m64n64"),         # a weight gradient: split K
])
def test_plan_gemm(M, Ncols, K, suffix, split_k, tile):
    got, grid, k_chunk = cb.plan_gemm(M, Ncols, K, suffix, sm_count=132, split_k=split_k)
    assert got == tile
    BM, BN, BK = cb.TILES[tile][:3]
    assert grid[:2] == (-(-Ncols // BN), -(-M // BM))
    if split_k:
        assert grid[2] > 1 and k_chunk % BK == 0
        assert (grid[2] - 1) * k_chunk < K <= grid[2] * k_chunk      # no empty slice
    else:
        assert grid[2] == 1 and k_chunk == K


# U-Net layers at batch 25 on 132 SMs, (M, Ncols, K, split_k) -> the "tiles" planner's tile
UNET_GEMMS = [
    ((64, 230400, 576, False), "m64n128"),     # down0.conv2 forward: M = 64
    ((256, 14400, 2304, False), "m128n128"),   # down2.conv2 forward
    ((1024, 900, 9216, False), "m64n64"),      # bottleneck forward: few columns, keep blocks
    ((128, 57600, 1152, False), "m128n64"),    # down1.conv2 forward
    ((256, 2304, 14400, True), "m128n128"),    # down2.conv2 weight gradient: split-K fills
    ((64, 576, 230400, True), "m64n128"),      # down0.conv2 weight gradient
]


@pytest.mark.parametrize("problem, tile", UNET_GEMMS)
def test_plan_gemm_with_tiles(problem, tile):
    M, Ncols, K, split_k = problem
    got, grid, k_chunk = cb.plan_gemm(M, Ncols, K, "f32", 132, split_k=split_k, tiles=True)
    assert got == tile
    costs = {t: cb.tile_cost(t, M, Ncols, K, 132, split_k)
             for t in ("m128n128", "m128n64", "m64n128", "m64n64")}
    assert costs[got] == min(costs.values())
    BM, BN, BK = cb.TILES[got][:3]
    assert grid[:2] == (-(-Ncols // BN), -(-M // BM))
    assert (grid[2] - 1) * k_chunk < K <= grid[2] * k_chunk and k_chunk % BK == 0
    # without the feature the planner never picks the new tiles; float64 ignores the feature
    assert cb.plan_gemm(M, Ncols, K, "f32", 132, split_k)[0] in ("m64n64", "m128n128")
    assert cb.plan_gemm(M, Ncols, K, "f64", 132, split_k, tiles=True) == \
        cb.plan_gemm(M, Ncols, K, "f64", 132, split_k)


def test_plan_gemm_with_tiles_covers_any_problem():
    rng = np.random.default_rng(0)
    for _ in range(500):
        M, Ncols, K = (int(v) for v in rng.integers(1, [2048, 300000, 300000]))
        split_k = bool(rng.integers(2))
        tile, grid, k_chunk = cb.plan_gemm(M, Ncols, K, "f32", 132, split_k, tiles=True)
        BM, BN, BK = cb.TILES[tile][:3]
        assert grid[0] * BN >= Ncols > (grid[0] - 1) * BN
        assert grid[1] * BM >= M > (grid[1] - 1) * BM
        assert (grid[2] - 1) * k_chunk < K <= grid[2] * k_chunk
        assert grid[2] == 1 or (split_k and k_chunk % BK == 0)
        assert (tile == "m32n128") == (M <= 32)


def test_tile_cost_model():
    # the same blocks per SM: the tile with less overhead per FMA is cheaper
    assert cb.tile_cost("m128n128", 256, 256 * 132, 64, 132) < \
        cb.tile_cost("m64n64", 256, 256 * 132, 64, 132)
    # one 4-warp block per SM runs at half rate: it costs as much as two (8 warps, full rate)
    one = cb.tile_cost("m128n64", 128, 64 * 132, 64, 132)
    two = cb.tile_cost("m128n64", 128, 2 * 64 * 132, 64, 132)
    assert one == two
    assert {cb.tile_threads(t) for t in cb.TILES} == {128, 256}
    assert set(cb.TILE_OVERHEAD) == set(cb.TILE_BLOCKS_PER_SM) == set(cb.TILES)


def test_tiles_feature_reaches_the_planner(monkeypatch):
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "fastdiv+prefetch+tiles+vec4")
    assert cb._conv_feature("tiles") and not cb._conv_feature("ktable")
    assert "-DMINICNN_CONV_TILES=1" in cb._module_options("conv")
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "fastdiv+prefetch+vec4")
    assert not cb._conv_feature("tiles")
    monkeypatch.delenv("MINICNN_CONV_VARIANT")                     # the default build has it
    assert cb._conv_feature("tiles")
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "tiles+nonsense")
    with pytest.raises(ValueError, match="MINICNN_CONV_VARIANT"):
        cb._conv_feature("tiles")


def test_k_tables_give_the_convolution():
    """The launcher's k tables (cb.k_table), read the way the "ktable" kernels read them
    (kernels/conv.cu: ConvForward::b, ConvBackwardInput::b), give numpy_backend's forward and
    input gradient (stride 2, padding 1, a non-square kernel)."""
    rng = np.random.default_rng(1)
    N, C, H, W, O, kH, kW, (sH, sW), (pH, pW) = 2, 3, 7, 6, 4, 3, 2, (2, 2), (1, 1)
    Ho, Wo = (H + 2 * pH - kH) // sH + 1, (W + 2 * pW - kW) // sW + 1
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, kH, kW))
    gy = rng.standard_normal((N, O, Ho, Wo))
    K = C * kH * kW
    tab = cb.k_table("forward", C, kH, kW, H, W)
    assert tab.shape == (K, 2) and tab.dtype == np.int32
    y = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for p in range(Ho):
            for q in range(Wo):
                h0, w0 = p * sH - pH, q * sW - pW
                col = np.zeros(K)
                for k, (off, ij) in enumerate(tab):
                    i, j = ij >> 16, ij & 0xFFFF
                    if 0 <= h0 + i < H and 0 <= w0 + j < W:
                        col[k] = x.reshape(-1)[n * C * H * W + h0 * W + w0 + off]
                y[n, :, p, q] = w.reshape(O, K) @ col
    np.testing.assert_allclose(y, nb.conv2d_forward(x, w, None, (sH, sW), (pH, pW)), atol=1e-12)

    tab = cb.k_table("input", O, kH, kW, Ho, Wo)
    A = w.transpose(1, 0, 2, 3).reshape(C, O * kH * kW)     # A[c, (o, i, j)]
    gx = np.zeros((N, C, H, W))
    for n in range(N):
        for h in range(H):
            for v in range(W):
                hp, wp = h + pH, v + pW
                col = np.zeros(O * kH * kW)
                for k, (obase, ij) in enumerate(tab):
                    ph, pw = hp - (ij >> 16), wp - (ij & 0xFFFF)
                    if ph >= 0 and pw >= 0 and ph % sH == 0 and pw % sW == 0 \
                            and ph // sH < Ho and pw // sW < Wo:
                        col[k] = gy.reshape(-1)[n * O * Ho * Wo + obase + ph // sH * Wo + pw // sW]
                gx[n, :, h, v] = A @ col
    np.testing.assert_allclose(gx, nb.conv2d_backward_input(gy, w, x.shape, (sH, sW), (pH, pW)),
                               atol=1e-12)
    with pytest.raises(ValueError, match="too large for the k table"):
        cb.k_table("forward", 1, 1, 2**15, 1, 2**15)


@functools.lru_cache(maxsize=None)
def _kernel_signatures(module, variant="plain"):
    """{kernel name: [parameter type, ...]} of kernels/<module>.cu (for conv, built as
    ``variant``), from the C++ preprocessor (the entry points are written by macros)."""
    src = f'#include "cuda_emu.h"\n#include "{module}.cu"\n'
    options = cb.conv_variant_options(variant) if module == "conv" else ()
    r = subprocess.run([CXX, "-E", "-P", "-std=c++20", *options,
                        "-I", EMU, "-I", os.path.join(ROOT, "kernels"), "-x", "c++", "-"],
                       input=src, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    sigs = {}
    for name, params in re.findall(r'extern "C"\s*void\s+(\w+)\(([^)]*)\)', r.stdout):
        # "const float* __restrict__ x" -> "float*", "long long size" -> "longlong"
        sigs[name] = [re.sub(r"\w+$", "", p.replace("__restrict__", " ").replace("const ", "")
                             .strip()).replace(" ", "") for p in params.split(",")]
    return sigs


def _conv_signatures(variant):
    return _kernel_signatures("conv", variant)


class _FakeDevice:
    id = 0

    def __init__(self, *args):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FakeCupy:
    """Just enough of CuPy, on NumPy, for the conv launchers to run up to their launches."""
    ndarray = np.ndarray
    asarray = staticmethod(np.asarray)
    ascontiguousarray = staticmethod(np.ascontiguousarray)
    empty = staticmethod(np.empty)

    class cuda:
        Device = _FakeDevice


def _run_conv_launchers(variant, monkeypatch):
    """Run the conv launchers of build ``variant`` on NumPy arrays with a stand-in for CuPy,
    checking each launch's arguments against its kernel's parameter types (pointers get
    arrays, the k table an int32 (K, 2) array in "ktable" builds and a null pointer otherwise,
    ``int`` gets int32, ``long long`` int64; the block has the tile's threads). Returns the
    kinds of kernel launched (names without tile and dtype suffixes)."""
    sigs = _conv_signatures(variant)
    launched = []

    def fake_kernel(module, name):
        assert name in sigs, f"{name} is not a kernel of the {variant} build"

        def launch(grid, block, args):
            params = sigs[name]
            assert len(args) == len(params), (name, len(args), params)
            for ptype, arg in zip(params, args):
                if ptype.endswith("*"):
                    if ptype == "int2*":
                        ok = (isinstance(arg, np.ndarray) and arg.dtype == np.int32
                              and arg.ndim == 2 and arg.shape[1] == 2) or \
                            (arg == 0 and isinstance(arg, np.uint64) and "ktable" not in variant)
                    else:
                        ok = isinstance(arg, np.ndarray) and \
                            arg.dtype == {"float*": np.float32, "double*": np.float64}[ptype]
                else:
                    ok = {"int": np.int32, "longlong": np.int64}[ptype] == type(arg)
                assert ok, (name, ptype, type(arg), getattr(arg, "dtype", None))
            tile = re.search(r"_(m\d+n\d+)_f", name)
            if tile:
                assert block == (cb.tile_threads(tile.group(1)),)
            if name.startswith("conv1x1_backward_weight"):
                assert block == (cb.NARROW_THREADS,)
            launched.append(name)
        return launch

    monkeypatch.setenv("MINICNN_CONV_VARIANT", variant)
    monkeypatch.setattr(cb, "cupy", _FakeCupy)
    monkeypatch.setattr(cb, "_kernel", fake_kernel)
    monkeypatch.setattr(cb, "_num_sms", lambda: 132)
    monkeypatch.setattr(cb, "_device_k_table", lambda device_id, *key: cb.k_table(*key))
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for (N, C, H, W, O, k, s, p) in [(2, 64, 12, 12, 128, 3, 1, 1), (2, 8, 9, 9, 16, 3, 2, 1),
                                         (2, 16, 6, 6, 8, 2, 2, 0), (4, 8, 24, 24, 16, 3, 1, 1),
                                         (4, 8, 25, 25, 16, 3, 1, 1),   # odd: no Winograd
                                         (1, 1024, 6, 6, 512, 3, 1, 1),   # split along K
                                         (3, 17, 5, 5, 3, 1, 1, 0)]:      # narrow 1x1
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            w = rng.standard_normal((O, C, k, k)).astype(dtype)
            s2, p2 = (s, s), (p, p)
            y = cb.conv2d_forward(x, w, np.zeros(O, dtype), s2, p2)
            cb.conv2d_backward_input(y, w, x.shape, s2, p2)
            cb.conv2d_backward_weight(y, x, w.shape, s2, p2)
    return {re.sub(r"_m\d+n\d+_f\d+$", "", n) for n in launched}


@functools.lru_cache(maxsize=None)
def _emulated_library(module, variant, build_dir):
    """kernels/<module>.cu (conv: built as ``variant``) for the emulator, as a shared library
    with one ``call_<kernel>(dims, args)`` per entry point: ``dims`` the grid and block (6
    unsigned), ``args`` pointers to the arguments, as CUDA's launch API takes them."""
    ctype = {"longlong": "long long", "longlong*": "long long*", "unsignedchar*": "unsigned char*"}
    lines = ['#include "cuda_emu.h"', f'#include "{module}.cu"']
    for name, params in sorted(_kernel_signatures(module, variant).items()):
        args = ", ".join(f"*({ctype.get(p, p)}*)a[{i}]" for i, p in enumerate(params))
        lines.append(f'extern "C" void call_{name}(const unsigned* d, void** a) '
                     f'{{ emu_launch(dim3(d[0], d[1], d[2]), dim3(d[3], d[4], d[5]), {name}, '
                     f'{args}); }}')
    src = os.path.join(build_dir, f"{module}_{variant.replace('+', '_')}.cpp")
    lib = src[:-4] + ".so"
    with open(src, "w") as f:
        f.write("\n".join(lines) + "\n")
    options = cb.conv_variant_options(variant) if module == "conv" else ()
    build = [CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-fno-strict-aliasing", *options,
             "-I", EMU, "-I", os.path.join(ROOT, "kernels"), src, "-o", lib]
    r = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(build)}:\n{r.stderr[-4000:]}"
    return ctypes.CDLL(lib)


class _EmuArray(np.ndarray):
    """A NumPy array that tells its address as a CuPy array does (``a.data.ptr``)."""
    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


class _EmuCupy(_FakeCupy):
    """NumPy arrays that look enough like CuPy's for every launcher of cuda_backend."""
    ndarray = _EmuArray

    @staticmethod
    def asarray(a, dtype=None):
        return np.asarray(a, dtype=dtype).view(_EmuArray)

    @staticmethod
    def ascontiguousarray(a):
        return np.ascontiguousarray(a).view(_EmuArray)

    @staticmethod
    def empty(shape, dtype=np.float64):
        return np.empty(shape, dtype).view(_EmuArray)

    @staticmethod
    def zeros(shape, dtype=np.float64):
        return np.zeros(shape, dtype).view(_EmuArray)


def _use_the_emulator(monkeypatch, variant, build_dir):
    """cuda_backend with CuPy replaced by _EmuCupy and each kernel by the emulator's."""
    monkeypatch.setenv("MINICNN_CONV_VARIANT", variant)
    monkeypatch.setattr(cb, "cupy", _EmuCupy)
    monkeypatch.setattr(cb, "_kernel", lambda module, name: _emulated_kernel(
        _emulated_library(module, variant if module == "conv" else "plain", build_dir), name))
    monkeypatch.setattr(cb, "_num_sms", lambda: 132)
    monkeypatch.setattr(cb, "_device_k_table", lambda device_id, *key: cb.k_table(*key))


def _emulated_kernel(lib, name):
    """A stand-in for a CuPy RawKernel that runs ``name`` in the emulator: NumPy arrays are
    passed as their data pointers, NumPy scalars by address (a uint64 0: a null pointer)."""

    def launch(grid, block, args):
        dims = (ctypes.c_uint * 6)(*(tuple(grid) + (1,) * (3 - len(grid))),
                                   *(tuple(block) + (1,) * (3 - len(block))))
        keep = []
        for a in args:
            if isinstance(a, np.ndarray):
                keep.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.uint64):
                keep.append(ctypes.c_void_p(int(a) or None))
            else:
                keep.append({np.int32: ctypes.c_int, np.int64: ctypes.c_longlong,
                             np.float32: ctypes.c_float, np.float64: ctypes.c_double}[type(a)](a))
        argv = (ctypes.c_void_p * len(keep))(*(ctypes.addressof(k) for k in keep))
        getattr(lib, f"call_{name}")(dims, argv)
    return launch


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
@pytest.mark.parametrize("variant, env", [
    (cb.DEFAULT_CONV_VARIANT, {}), ("fastdiv+prefetch+tiles+vec4+winograd", {}),
    ("fastdiv+prefetch+tiles+vec4+winograd", {"MINICNN_WINOGRAD_TILE": "2"}),
    ("fastdiv+prefetch+tiles+vec4+winograd", {"MINICNN_WINOGRAD": "weight"}), ("plain", {})])
def test_conv_launchers_compute_the_convolution_in_the_emulator(variant, env, monkeypatch,
                                                               tmp_path_factory):
    """The conv primitives of cuda_backend, launchers and kernels together, run on the CPU:
    CuPy replaced by NumPy and each launch by the emulator running the kernel the launcher
    names, with the grid, block and arguments it passes. Against numpy_backend, forward and
    both gradients, on shapes that take each path (Winograd's with 16 channels or more, its
    4x4 output tiles where 4 divides H and W, split K, stride 2, the up-convolution's
    partition, 1x1). This is what catches a launcher that
    passes arguments in the wrong order or plans a grid its kernel does not expect."""
    _use_the_emulator(monkeypatch, variant, str(tmp_path_factory.getbasetemp()))
    for name in ("MINICNN_WINOGRAD", "MINICNN_WINOGRAD_TILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rng = np.random.default_rng(1)
    for dtype, tol in ((np.float32, 2e-5), (np.float64, 1e-12)):
        for (N, C, H, W, O, k, s, p) in [(2, 16, 6, 8, 17, 3, 1, 1),      # Winograd
                                         (2, 16, 8, 12, 17, 3, 1, 1),     # 4x4 tiles
                                         (1, 1100, 2, 2, 16, 3, 1, 1),    # Winograd, split K
                                         (1, 1100, 4, 4, 16, 3, 1, 1),    # 4x4, split K
                                         (1, 3, 7, 6, 5, 3, 1, 1),        # odd, few channels
                                         (2, 5, 9, 9, 6, 3, 2, 1),        # stride 2
                                         (2, 6, 4, 6, 7, 2, 2, 0),        # up-convolution
                                         (3, 17, 5, 5, 3, 1, 1, 0)]:      # 1x1
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            w = rng.standard_normal((O, C, k, k)).astype(dtype)
            b = rng.standard_normal(O).astype(dtype)
            bc = rng.standard_normal(C).astype(dtype)   # a bias of the transposed convolution
            s2, p2 = (s, s), (p, p)
            y = nb.conv2d_forward(x, w, b, s2, p2)
            gy = rng.standard_normal(y.shape).astype(dtype)
            for what, got, ref in [
                    ("forward", cb.conv2d_forward(x, w, b, s2, p2), y),
                    ("forward + ReLU", cb.conv2d_forward(x, w, b, s2, p2, relu=True),
                     nb.conv2d_forward(x, w, b, s2, p2, relu=True)),
                    ("input gradient", cb.conv2d_backward_input(gy, w, x.shape, s2, p2),
                     nb.conv2d_backward_input(gy, w, x.shape, s2, p2)),
                    ("input gradient + bias",
                     cb.conv2d_backward_input(gy, w, x.shape, s2, p2, bias=bc),
                     nb.conv2d_backward_input(gy, w, x.shape, s2, p2, bias=bc)),
                    ("weight gradient", cb.conv2d_backward_weight(gy, x, w.shape, s2, p2),
                     nb.conv2d_backward_weight(gy, x, w.shape, s2, p2))]:
                scale = max(1.0, float(np.abs(ref).max()))
                assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape)
                err = float(np.abs(got - ref).max()) / scale
                assert err <= tol, (what, dtype.__name__, (N, C, H, W, O, k, s, p), err)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
def test_other_launchers_compute_their_primitives_in_the_emulator(monkeypatch, tmp_path_factory):
    """As above for the other primitives: ReLU (an aligned array, which takes the 16-byte
    kernels, and a view one element in, which does not), max-pool (ties, NaN, overlapping
    and partitioning windows), the cross-entropy (class weights or none, a dense and a
    broadcast upstream gradient) and the three optimizers, against numpy_backend, bit for bit
    as gpu_check.sh's self-check on a GPU (the forward loss to rounding)."""
    _use_the_emulator(monkeypatch, cb.DEFAULT_CONV_VARIANT, str(tmp_path_factory.getbasetemp()))
    launched, kernel = set(), cb._kernel
    monkeypatch.setattr(cb, "_kernel", lambda module, name: launched.add(name) or
                        kernel(module, name))
    rng = np.random.default_rng(2)
    E = _EmuCupy.asarray

    def same(got, ref, what):
        assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape, got.dtype)
        assert np.array_equal(np.asarray(got), ref, equal_nan=True), what

    for dtype in (np.float32, np.float64):
        big = rng.standard_normal(1003).astype(dtype)
        big[::97], big[5::89], big[7::83] = np.nan, -0.0, np.inf
        gbig = rng.standard_normal(big.shape).astype(dtype)
        for tag, sl in (("aligned", slice(None)), ("offset view", slice(1, None))):
            y = cb.relu_forward(E(big)[sl])
            same(y, nb.relu_forward(big[sl]), f"relu forward {tag}")
            same(cb.relu_backward(E(gbig)[sl], y),
                 nb.relu_backward(gbig[sl], nb.relu_forward(big[sl])), f"relu backward {tag}")
        for (N, C, H, W), k, st in [((2, 3, 13, 11), (3, 3), (2, 2)),
                                     ((2, 3, 12, 10), (2, 2), (2, 2)),
                                     ((1, 2, 9, 12), (4, 3), (1, 2))]:
            x = rng.integers(-2, 3, size=(N, C, H, W)).astype(dtype)   # many ties
            x[0, 0, 0, :2] = np.nan
            y, idx = cb.maxpool2d_forward(E(x), k, st)
            yr, ir = nb.maxpool2d_forward(x, k, st)
            same(y, yr, f"maxpool forward {x.shape} {k} {st}")
            same(idx, ir, f"maxpool argmax {x.shape} {k} {st}")
            gy = rng.standard_normal(yr.shape).astype(dtype)
            same(cb.maxpool2d_backward(E(gy), idx, x.shape, k, st),
                 nb.maxpool2d_backward(gy, ir, x.shape, k, st), f"maxpool backward {x.shape}")
        for shape in [(5, 4), (2, 4, 7, 9)]:
            x = (rng.standard_normal(shape) * 3).astype(dtype)
            t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
            for w in (None, rng.random(shape[1]).astype(dtype)):
                out = cb.softmax_cross_entropy_forward(E(x), E(t), None if w is None else E(w))
                ref = nb.softmax_cross_entropy_forward(x, t, w)
                for name, o, r in zip(("loss", "wt", "p"), out, ref):
                    np.testing.assert_allclose(o, r, rtol=1e-6 if dtype == np.float32 else 1e-14,
                                               err_msg=f"cross-entropy {name} {shape}")
                for g in (rng.standard_normal(t.shape).astype(dtype),
                          np.broadcast_to(np.asarray(0.25, dtype), t.shape)):
                    same(cb.softmax_cross_entropy_backward(E(ref[2]), E(t),
                                                           None if w is None else E(w), E(g)),
                         nb.softmax_cross_entropy_backward(ref[2], t, w, g),
                         f"cross-entropy backward {shape}")
        for shape in [(5, 4), (3, 4, 40, 50)]:       # the sums: 1 block, and 24 blocks
            x = (rng.standard_normal(shape) * 3).astype(dtype)
            t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
            for w in (None, rng.random(shape[1]).astype(dtype)):
                for red in ("sum", "mean"):
                    out = cb.softmax_cross_entropy_forward(E(x), E(t), None if w is None else E(w),
                                                           reduction=red)
                    ref = nb.softmax_cross_entropy_forward(x, t, w, reduction=red)
                    for name, o, r in zip(("loss", "wt", "p"), out, ref):
                        assert o.shape == r.shape and o.dtype == r.dtype, (name, red, o.shape)
                        np.testing.assert_allclose(
                            o, r, rtol=1e-5 if dtype == np.float32 else 1e-13,
                            err_msg=f"cross-entropy {red} {name} {shape}")
        for red in ("none", "mean"):
            with pytest.raises(ValueError, match="target values must be in"):
                cb.softmax_cross_entropy_forward(E(np.zeros((2, 3), dtype)), E(np.array([0, 3])),
                                                 None, reduction=red)
        p0, g0 = (rng.standard_normal(1000).astype(dtype) for _ in range(2))
        for wd in (0.0, 0.01):
            P, M, V = E(p0.copy()), E(p0 * 0.1), E(np.abs(p0))
            Pr, Mr, Vr = p0.copy(), p0 * 0.1, np.abs(p0)
            kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd, step=7)
            cb.adam_update(P, E(g0), M, V, **kw)
            nb.adam_update(Pr, g0, Mr, Vr, **kw)
            for name, a, r in (("p", P, Pr), ("m", M, Mr), ("v", V, Vr)):
                same(a, r, f"adam {name} wd {wd}")
            for mom, nest, first in ((0.0, False, False), (0.9, False, True), (0.9, True, False)):
                P, B, Pr, Br = E(p0.copy()), E(p0 * 0.5), p0.copy(), p0 * 0.5
                kw = dict(lr=0.01, momentum=mom, dampening=0.1, nesterov=nest, weight_decay=wd,
                          first=first)
                cb.sgd_update(P, E(g0), B if mom else None, **kw)
                nb.sgd_update(Pr, g0, Br if mom else None, **kw)
                same(P, Pr, f"sgd p {mom} {nest} {first}")
                same(B, Br, f"sgd buffer {mom} {nest} {first}")
            P, S, Pr, Sr = E(p0.copy()), E(np.abs(g0)), p0.copy(), np.abs(g0)
            cb.adagrad_update(P, E(g0), S, clr=0.01, eps=1e-10, weight_decay=wd)
            nb.adagrad_update(Pr, g0, Sr, clr=0.01, eps=1e-10, weight_decay=wd)
            same(P, Pr, "adagrad p")
            same(S, Sr, "adagrad s")
    assert {f"relu_{d}{v}_{t}" for d in ("forward", "backward") for v in ("", "_vec")
            for t in ("f32", "f64")} <= launched
    assert {"maxpool2d_forward_u8_f32", "maxpool2d_backward_u8_f64", "softmax_xent_forward_f32",
            "softmax_xent_backward_f64", "softmax_xent_reduce_f32", "adam_update_f32",
            "sgd_update_f64", "adagrad_update_f32"} <= launched


# the transforms of each Winograd path (both launch the GEMMs "winograd_gemm")
WINOGRAD_WEIGHT = {f"winograd_{k}_{dt}" for k in ("x", "dy", "out") for dt in ("f32", "f64")}
WINOGRAD_CONV = {f"winograd_{k}_{dt}" for k in ("in", "filter", "conv_out")
                 for dt in ("f32", "f64")}
WINOGRAD_CONV4 = {f"winograd4_{k}_{dt}" for k in ("in", "filter", "conv_out")   # 4x4 tiles
                  for dt in ("f32", "f64")}
WINOGRAD_WEIGHT4 = {f"winograd4_{k}_{dt}" for k in ("x", "dy", "out") for dt in ("f32", "f64")}


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to read the signatures")
@pytest.mark.parametrize("variant", [cb.DEFAULT_CONV_VARIANT, "plain",
                                     "fastdiv+kmajor+ktable+prefetch+tiles+vec4",
                                     "fastdiv+prefetch+tiles+vec4+winograd"])
def test_conv_launchers_match_the_kernel_signatures(variant, monkeypatch):
    """Every argument the conv launchers pass has the type of its kernel parameter (CuPy
    passes a RawKernel's arguments by position, unchecked), for every kernel kind of the
    build; what the kernels compute is the GPU's and the emulator's business."""
    monkeypatch.delenv("MINICNN_WINOGRAD", raising=False)
    monkeypatch.delenv("MINICNN_WINOGRAD_TILE", raising=False)
    kinds = _run_conv_launchers(variant, monkeypatch)
    assert {"conv2d_forward", "conv2d_backward_input_partition", "conv2d_backward_weight",
            "splitk_reduce_f32", "splitk_reduce_f64", "conv1x1_forward_f32",
            "conv1x1_backward_input_f64", "conv1x1_backward_weight_f32"} <= kinds
    assert ("conv2d_backward_input_unit" in kinds) == ("ktable" in variant)
    winograd = (WINOGRAD_WEIGHT | WINOGRAD_WEIGHT4 | WINOGRAD_CONV | WINOGRAD_CONV4
                | {"winograd_gemm"})
    assert (winograd <= kinds) == ("winograd" in variant)
    assert not winograd & kinds or "winograd" in variant


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to read the signatures")
@pytest.mark.parametrize("passes, forward_input, weight", [
    ("none", False, False), ("weight", False, True), ("forward", True, False),
    ("input", True, False), ("forward+input+weight", True, True)])
def test_winograd_passes_choose_the_kernels(passes, forward_input, weight, monkeypatch):
    """MINICNN_WINOGRAD picks the passes that run Winograd's kernels in a "winograd" build;
    the U-Net-sized shapes of the run above need both GEMM kinds otherwise."""
    monkeypatch.setenv("MINICNN_WINOGRAD", passes)
    monkeypatch.delenv("MINICNN_WINOGRAD_TILE", raising=False)
    kinds = _run_conv_launchers("fastdiv+prefetch+tiles+vec4+winograd", monkeypatch)
    for conv in (WINOGRAD_CONV, WINOGRAD_CONV4):     # the 6 px shape takes 2x2 tiles
        assert (conv <= kinds) == forward_input
        assert not (conv & kinds) or forward_input
    for grad in (WINOGRAD_WEIGHT, WINOGRAD_WEIGHT4):
        assert (grad <= kinds) == weight
        assert not (grad & kinds) or weight
    assert ("winograd_gemm" in kinds) == (forward_input or weight)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to read the signatures")
def test_winograd_tile_chooses_the_kernels(monkeypatch):
    """MINICNN_WINOGRAD_TILE=2 sends every Winograd pass to the 2x2 tiles (F(2x2, 3x3),
    F(3x3, 2x2)); 4 (the default) sends those whose sizes 4 divides to the 4x4 ones; anything
    else is refused by name."""
    monkeypatch.delenv("MINICNN_WINOGRAD", raising=False)
    monkeypatch.setenv("MINICNN_WINOGRAD_TILE", "2")
    kinds = _run_conv_launchers("fastdiv+prefetch+tiles+vec4+winograd", monkeypatch)
    assert WINOGRAD_CONV | WINOGRAD_WEIGHT <= kinds
    assert not (WINOGRAD_CONV4 | WINOGRAD_WEIGHT4) & kinds
    assert [cb.winograd_tile(H, W) for H, W in ((96, 96), (6, 6), (8, 12))] == [2, 2, 2]
    monkeypatch.delenv("MINICNN_WINOGRAD_TILE")
    assert [cb.winograd_tile(H, W) for H, W in ((96, 96), (6, 6), (8, 12), (8, 6), (12, 10))] \
        == [4, 2, 4, 2, 2]
    for bad in ("3", "4x4", ""):
        monkeypatch.setenv("MINICNN_WINOGRAD_TILE", bad)
        with pytest.raises(ValueError, match="MINICNN_WINOGRAD_TILE"):
            cb.winograd_tile(8, 8)


def test_new_primitive_arguments_are_refused_clearly(monkeypatch):
    """The primitives' keyword arguments: a reduction outside none/sum/mean and (CUDA) a bias
    of the wrong length raise ValueError naming the primitive, before any launch."""
    x, t = np.zeros((2, 3), np.float32), np.array([0, 1])
    for bk in (nb, cb):
        if bk is cb:
            monkeypatch.setattr(cb, "cupy", _EmuCupy)
            monkeypatch.setattr(cb, "_kernel", lambda module, name: pytest.fail("launched"))
        with pytest.raises(ValueError, match="softmax_cross_entropy_forward: reduction must"):
            bk.softmax_cross_entropy_forward(x, t, None, reduction="avg")
    gy, w = np.zeros((1, 4, 3, 3), np.float32), np.zeros((4, 2, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"conv2d_backward_input: bias must have shape \(2,\)"):
        cb.conv2d_backward_input(gy, w, (1, 2, 3, 3), (1, 1), (0, 0),
                                 bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"conv2d_forward: bias must have shape \(4,\)"):
        cb.conv2d_forward(np.zeros((1, 2, 3, 3), np.float32), w, np.zeros(2, np.float32),
                          (1, 1), (0, 0))


def test_narrow_1x1_rule_and_the_kernels_constants():
    """The narrow 1x1 kernels take 1x1 / stride 1 / unpadded convolutions of at most
    NARROW_MAX channels (the U-Net's head); the launchers' constants are the kernels'."""
    one = dict(kH=1, kW=1, sH=1, sW=1, pH=0, pW=0)
    assert cb.narrow_1x1(**one, channels=4) and cb.narrow_1x1(**one, channels=cb.NARROW_MAX)
    assert not cb.narrow_1x1(**one, channels=cb.NARROW_MAX + 1)
    for change in (dict(kH=3), dict(sW=2), dict(pH=1)):
        assert not cb.narrow_1x1(**{**one, **change}, channels=4)
    with open(os.path.join(ROOT, "kernels", "conv.cu")) as f:
        src = f.read()
    assert f"constexpr int NARROW_MAX = {cb.NARROW_MAX};" in src
    assert f"constexpr int NARROW_THREADS = {cb.NARROW_THREADS};" in src
    # the weight gradient's pixel chunks: every pixel in exactly one, about four waves
    for pixels, groups, sms in [(230400, 8, 132), (75, 3, 132), (2048 * 7 + 1, 1, 2),
                                (10**6, 1, 1000)]:
        chunks, length = cb.narrow_weight_chunks(pixels, groups, sms)
        assert (chunks - 1) * length < pixels <= chunks * length
        assert length >= min(pixels, cb.NARROW_MIN_CHUNK) and chunks <= max(1, 4 * sms)
    assert cb.narrow_weight_chunks(230400, 8, 132) == (66, 3491)
    with open(os.path.join(ROOT, "kernels", "loss.cu")) as f:
        assert f"constexpr int SCE_THREADS = {cb.SCE_THREADS};" in f.read()


def test_winograd_applies_and_its_passes(monkeypatch):
    """The shapes Winograd's kernels take (3x3, stride 1, padding 1, even sizes, 16 channels
    or more on both sides: every 3x3 layer of the U-Net but the first), and the parsing of
    MINICNN_WINOGRAD."""
    unet = dict(kH=3, kW=3, sH=1, sW=1, pH=1, pW=1)
    assert cb.winograd_applies(**unet, H=96, W=96, C=64, O=64)
    assert cb.winograd_applies(**unet, H=6, W=6, C=1024, O=1024)
    assert cb.winograd_applies(**unet, H=2, W=2, C=16, O=16)   # test_ops' "wide" draws
    assert not cb.winograd_applies(**unet, H=96, W=96, C=1, O=64)        # the first layer
    assert not cb.winograd_applies(**unet, H=96, W=96, C=64, O=15)
    assert not cb.winograd_applies(**unet, H=95, W=96, C=64, O=64)       # odd: half a tile
    assert not cb.winograd_applies(**unet, H=96, W=7, C=64, O=64)
    for change in (dict(kH=5), dict(sW=2), dict(pH=0), dict(kW=1, pW=0)):
        assert not cb.winograd_applies(**{**unet, **change}, H=12, W=12, C=64, O=64)
    monkeypatch.delenv("MINICNN_WINOGRAD", raising=False)
    assert cb.winograd_passes() == {"forward", "input", "weight"}
    monkeypatch.setenv("MINICNN_WINOGRAD", "weight+forward")
    assert cb.winograd_passes() == {"forward", "weight"}
    monkeypatch.setenv("MINICNN_WINOGRAD", "none")
    assert cb.winograd_passes() == set()
    for bad in ("", "fwd", "weight+weight", "none+weight"):
        monkeypatch.setenv("MINICNN_WINOGRAD", bad)
        with pytest.raises(ValueError, match="MINICNN_WINOGRAD"):
            cb.winograd_passes()


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
@pytest.mark.parametrize("check, count", [("activation_check", 120), ("pool_check", 32)])
def test_elementwise_kernels_in_the_emulator(check, count, tmp_path):
    """activation_check.cpp: kernels/activation.cu's 16-byte ReLU kernels give what the
    element-wise ones and a separate reference give, bit for bit, for lengths 0-40 and 1003
    (every tail), with NaN, +-inf, -0.0 and denormals, and write nothing past the end
    (dropping the tail or reading a vector past it is caught). pool_check.cpp: kernels/pool.cu
    against plain loops, bit for bit, with ties, NaNs and overlapping windows (a wrong index
    decomposition or a changed summation order is caught). Both in tests/kernel_emu/."""
    exe = tmp_path / check
    build = [CXX, "-std=c++20", "-O2", "-I", EMU, "-I", os.path.join(ROOT, "kernels"), "-x",
             "c++", os.path.join(EMU, check + ".cpp"), "-o", str(exe)]
    r = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith(f"{count} checks, 0 failures"), \
        r.stdout


def test_relu_launcher_takes_the_vector_kernel_only_when_aligned(monkeypatch):
    """16-byte kernels for arrays that start on a 16-byte boundary, with one grid item per
    whole vector (or per tail element, if more); the element-wise kernel otherwise."""
    monkeypatch.setattr(cb, "_kernel", lambda module, name: (module, name))

    class Arr:
        def __init__(self, ptr, dtype):
            self.data, self.dtype = type("Mem", (), {"ptr": ptr})(), np.dtype(dtype)
    f32, f64 = (Arr(4096, np.float32), Arr(8192, np.float32)), (Arr(4096, np.float64),)
    assert cb._elementwise_kernel("relu_forward", "f32", 1003, f32) == \
        (("activation", "relu_forward_vec_f32"), 250)
    assert cb._elementwise_kernel("relu_forward", "f32", 3, f32) == \
        (("activation", "relu_forward_vec_f32"), 3)
    assert cb._elementwise_kernel("relu_backward", "f64", 9, f64) == \
        (("activation", "relu_backward_vec_f64"), 4)
    assert cb._elementwise_kernel("relu_forward", "f32", 1003, (Arr(4100, np.float32),)) == \
        (("activation", "relu_forward_f32"), 1003)
    assert cb._elementwise_kernel("relu_backward", "f32", 8, f32 + (Arr(8, np.float32),)) == \
        (("activation", "relu_backward_f32"), 8)


def test_window_partition():
    assert cb.window_partition(2, 2, 2, 2, 0, 0, 12, 12, 6, 6)      # the up-convolution
    assert cb.window_partition(3, 1, 3, 1, 0, 0, 9, 5, 3, 5)
    assert not cb.window_partition(2, 2, 2, 2, 0, 0, 13, 12, 6, 6)  # row 12 is in no window
    assert not cb.window_partition(2, 2, 2, 2, 1, 1, 12, 12, 7, 7)  # padding
    assert not cb.window_partition(3, 3, 2, 2, 0, 0, 13, 13, 6, 6)  # overlapping windows


@pytest.mark.parametrize("name", backend.PRIMITIVES)
def test_backends_share_each_primitive_signature(name):
    assert inspect.signature(getattr(nb, name)) == inspect.signature(getattr(cb, name))


def test_primitive_cross_entropy_refuses_targets_unless_told_they_are_checked():
    x = np.zeros((2, 3), np.float32)
    for t in (np.array([0, 3]), np.array([-1, 0])):
        with pytest.raises(ValueError, match=r"target values must be in \[0, 3\)"):
            nb.softmax_cross_entropy_forward(x, t, None)
    loss, wt, p = nb.softmax_cross_entropy_forward(x, np.array([0, 2]), None, check_target=False)
    np.testing.assert_allclose(loss, np.log(3), rtol=1e-6)


def test_conv_variant_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MINICNN_CONV_VARIANT", raising=False)
    assert cb.conv_variant() == cb.DEFAULT_CONV_VARIANT == "fastdiv+prefetch+tiles+vec4"
    assert cb._module_options("conv") == ("-DMINICNN_CONV_FASTDIV=1", "-DMINICNN_CONV_PREFETCH=1",
                                          "-DMINICNN_CONV_TILES=1", "-DMINICNN_CONV_VEC4=1")
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "plain")          # the build without features
    assert cb.conv_variant() == "plain" and cb._module_options("conv") == ()
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "prefetch")
    assert cb.conv_variant() == "prefetch" and cb._module_options("conv") == \
        ("-DMINICNN_CONV_PREFETCH=1",)
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "vec4+fastdiv")      # any order, one build
    assert cb.conv_variant() == "fastdiv+vec4" and cb._module_options("conv") == \
        ("-DMINICNN_CONV_FASTDIV=1", "-DMINICNN_CONV_VEC4=1")
    for bad in ("fast", "prefetch+prefetch", "plain+vec4", "vec4+", ""):
        monkeypatch.setenv("MINICNN_CONV_VARIANT", bad)
        with pytest.raises(ValueError, match=re.escape(f"MINICNN_CONV_VARIANT={bad!r}")):
            cb.conv_variant()
