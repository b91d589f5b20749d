"""The ladder of convolution kernels (``dev/cuda/``), checked without a GPU.

* every rung of ``dev/cuda/launch.py`` (1-3) compiles with NVRTC, the compiler CuPy
  runs on the GPU machine, and its PTX has exactly the entry points its source
  declares (skipped without the ``nvidia-cuda-nvrtc`` wheel); with nvcc, rung 3
  assembles for sm_90 without spills (rungs 4 and 6, ``kernels/conv.cu`` and
  ``kernels/conv_tf32.cu``, are the library's: test_kernels_compile.py);
* every rung runs in the CPU emulator (``tests/kernel_emu/cuda_emu.h``, driven
  by ``tests/kernel_emu/ladder_check.cpp``) through the launchers the GPU uses
  (``dev/cuda/launch.py``), and each pass it implements agrees with minicnn's
  NumPy backend on small random shapes: outputs start as NaN (an element not
  written is caught), inputs sit between NaN guard zones (a read out of bounds
  poisons the result) and outputs between sentinel zones (a write out of
  bounds is caught); the emulated tensor-core instruction of rung 6 alone
  against a plain 16x8x8 matrix product (the fragment layout; rung 6 itself,
  the library's TF32 path, is checked in test_cuda_without_gpu.py);
* the launchers refuse shapes they cannot run, with a one-line message; the
  runner ``dev/cuda/ladder.py`` answers ``--help`` without CuPy, and its
  ``--check --bench`` runs end to end on the emulator (CuPy and the GPU replaced),
  rungs 4 and 6 through the library's launchers.
"""
import ctypes
import functools
import os
import re
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minicnn.backend import numpy_backend as nb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = os.path.join(ROOT, "dev", "cuda")
EMU = os.path.join(ROOT, "tests", "kernel_emu")
CXX = shutil.which(os.environ.get("CXX", "g++"))
sys.path.insert(0, DEV)
import ladder  # noqa: E402  (dev/cuda/ladder.py: the runner, its tolerances)
import launch  # noqa: E402  (dev/cuda/launch.py)

RUNG_FILES = sorted(f for f in os.listdir(DEV) if re.fullmatch(r"conv_\d_\w+\.cu", f))
# the rungs that launch.py launches (rung 5, dev/cuda/winograd.py, has its own tests)
OURS = sorted(f for _, f, _ in launch.RUNGS.values())
KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\([\w, ]+\) )?(\w+)\(')
TOL = 2e-5       # max |ours - numpy| / max(1, max |numpy|): float32 sums of <= 810 terms
GUARD = 1024     # elements of guard zone on each side of every array


def _kernels(file):
    with open(os.path.join(DEV, file), encoding="utf-8") as f:
        return KERNEL.findall(f.read())


def test_the_ladder_is_complete():
    assert {"conv_1_naive.cu", "conv_2_smem.cu", "conv_3_regblock.cu"} <= set(RUNG_FILES)
    assert os.path.exists(os.path.join(ROOT, "kernels", "conv_tf32.cu"))     # rung 6
    assert set(OURS) <= set(RUNG_FILES)
    for file in OURS:
        assert _kernels(file), f"no kernels found in {file}"


def test_launchers_use_the_kernels_tiling():
    """The grids of launch.py assume the tile sizes that the sources declare."""
    assert launch.cu_constants("conv_2_smem.cu")["TILE"] == launch.TILE
    assert launch.cu_constants("conv_2_smem.cu")["RED"] == launch.THREADS
    regblock = launch.cu_constants("conv_3_regblock.cu")
    assert (regblock["BM"], regblock["BN"], regblock["THREADS"]) == \
        (launch.BM, launch.BN, launch.THREADS)


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: cannot compile for sm_90")
@pytest.mark.parametrize("file, arch", [("conv_3_regblock.cu", "sm_90")])
def test_register_blocks_stay_in_registers(file, arch, tmp_path):
    """Rung 3 by nvcc (ptxas, as the driver compiles NVRTC's PTX): no register
    spills. A register block spilled would live in local memory, slower than
    the shared memory it is there to save."""
    cmd = [NVCC, "-std=c++17", f"-arch={arch}", "--cubin", "-Xptxas", "-v",
           os.path.join(DEV, file), "-o", str(tmp_path / "rung.cubin")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    spills = re.findall(r"(\d+) bytes spill stores", r.stderr)
    assert len(spills) == len(_kernels(file)) and set(spills) == {"0"}, r.stderr


# ------------------------------------------------------------------ NVRTC
def _nvrtc():
    """libnvrtc from the ``nvidia-cuda-nvrtc`` wheel, or None."""
    import glob
    try:
        import nvidia
    except ImportError:
        return None
    libs = [p for d in nvidia.__path__
            for p in glob.glob(os.path.join(d, "cu*", "lib", "libnvrtc.so*"))]
    return ctypes.CDLL(sorted(libs)[0]) if libs else None


NVRTC = _nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="no NVRTC (pip install nvidia-cuda-nvrtc)")
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("file", OURS)
def test_rung_compiles_with_nvrtc(file, arch):
    """As ``ladder.CupyRuntime`` compiles it (``cupy.RawModule``, --std=c++17)."""
    with open(os.path.join(DEV, file), "rb") as f:
        src = f.read()
    nv = NVRTC
    prog = ctypes.c_void_p()
    assert nv.nvrtcCreateProgram(ctypes.byref(prog), src, file.encode(), 0, None, None) == 0
    opts = [b"--std=c++17", f"--gpu-architecture={arch}".encode()]
    status = nv.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetProgramLog(prog, log)
    ptx = b""
    if status == 0:
        nv.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        nv.nvrtcGetPTX(prog, buf)
        ptx = buf.value
    nv.nvrtcDestroyProgram(ctypes.byref(prog))
    assert status == 0, f"NVRTC failed on {file}:\n{log.value.decode()[-4000:]}"
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.decode()))
    assert entries == set(_kernels(file)), (file, sorted(entries))


# ------------------------------------------------------------------ the emulator
@functools.lru_cache(maxsize=None)
def _library(file, build_dir):
    """The rung ``file`` built with the emulator as a shared library."""
    lib = os.path.join(build_dir, file.replace(".cu", ".so"))
    xs = " ".join(f"X({k})" for k in _kernels(file))
    build = [CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-fno-strict-aliasing",
             "-I", EMU, "-I", DEV, f'-DRUNG="{file}"', f"-DKERNELS={xs}",
             os.path.join(EMU, "ladder_check.cpp"), "-o", lib]
    r = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(build)}:\n{r.stderr[-4000:]}"
    return ctypes.CDLL(lib)


class EmulatorRuntime:
    """``dev/cuda/launch.py``'s runtime on the CPU: NumPy arrays inside guard
    zones, each launch run by the emulator. ``launched`` records the kernels."""

    def __init__(self, build_dir):
        self.build_dir = build_dir
        self.outputs, self.launched = [], set()

    def _guarded(self, shape, fill, guard):
        n = int(np.prod(shape))
        buf = np.full(n + 2 * GUARD, guard, np.float32)
        buf[GUARD:GUARD + n] = fill
        return buf, buf[GUARD:GUARD + n].reshape(shape)

    def upload(self, a):
        """A float32 copy of ``a`` between NaN zones."""
        return self._guarded(a.shape, a.ravel(), np.nan)[1]

    def empty(self, shape):
        buf, view = self._guarded(shape, np.nan, 12345.0)
        self.outputs.append(buf)
        return view

    def guards_intact(self):
        return all((b[:GUARD] == 12345.0).all() and (b[-GUARD:] == 12345.0).all()
                   for b in self.outputs)

    def kernel(self, file, name):
        call = getattr(_library(file, self.build_dir), f"call_{name}")
        self.launched.add(name)

        def launch_(grid, block, args):
            dims = (ctypes.c_uint * 6)(*(tuple(grid) + (1,) * (3 - len(grid))),
                                       *(tuple(block) + (1,) * (3 - len(block))))
            assert all(isinstance(a, (np.ndarray, np.int32)) for a in args), args
            keep = [ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray)
                    else ctypes.c_int(int(a)) for a in args]
            argv = (ctypes.c_void_p * len(keep))(*(ctypes.addressof(k) for k in keep))
            call(dims, argv)
        return launch_


# (N, C, H, W, O): odd sizes and few channels; C not a multiple of rung 2's 8
# channels per step, W wider than its 16-pixel tile, O more than rung 3's 64 rows
SHAPES = [(2, 3, 7, 6, 5), (1, 10, 5, 17, 66)]
PASSES = [(n, p) for n, (_, _, fns) in launch.RUNGS.items() for p in fns]


def _reference(what, x, w, b, gy):
    one = (1, 1)
    if what == "forward":
        return nb.conv2d_forward(x, w, b, one, one)
    if what == "input_grad":
        return nb.conv2d_backward_input(gy, w, x.shape, one, one)
    return nb.conv2d_backward_weight(gy, x, w.shape, one, one)


def tf32(a):
    """``a`` rounded to TF32 as ``cvt.rna.tf32.f32`` does (10 mantissa bits, to
    nearest, ties away from zero; infinities and NaNs kept), as float64: the NumPy
    backend's ``to_tf32`` (itself checked against an independent oracle in
    test_ops.py)."""
    return nb.to_tf32(np.asarray(a, np.float32)).astype(np.float64)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
@pytest.mark.parametrize("rung, what", PASSES)
def test_rung_agrees_with_numpy_in_the_emulator(rung, what, tmp_path_factory):
    rt = EmulatorRuntime(str(tmp_path_factory.getbasetemp()))
    name, file, fns = launch.RUNGS[rung]
    rng = np.random.default_rng(rung)
    for N, C, H, W, O in SHAPES:
        # float32 values, the reference in float64 from the same values
        x, gy, w, b = (rng.standard_normal(s).astype(np.float32).astype(np.float64)
                       for s in ((N, C, H, W), (N, O, H, W), (O, C, 3, 3), (O,)))
        args = {"forward": (x, w, b), "input_grad": (gy, w), "weight_grad": (x, gy)}[what]
        got = fns[what](rt, *(rt.upload(a) for a in args))
        ref = _reference(what, x, w, b, gy)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert not np.isnan(got).any(), f"rung {rung} {what}: NaN (unwritten or bad read)"
        assert rt.guards_intact(), f"rung {rung} {what}: a write out of bounds"
        err = float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))
        assert err <= TOL, (rung, what, (N, C, H, W, O), err)
    assert rt.launched == {k for k in _kernels(file) if what.split("_")[0] in k}


# ------------------------------------------------------------------ the tensor-core instruction
def _mma_library(build_dir):
    lib = os.path.join(build_dir, "mma_check.so")
    build = [CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-I", EMU,
             os.path.join(EMU, "mma_check.cpp"), "-o", lib]
    r = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(build)}:\n{r.stderr[-4000:]}"
    return ctypes.CDLL(lib)


def fragments(A, B, C):
    """The per-lane registers of ``mma.m16n8k8`` with .tf32 operands, from the
    PTX ISA's table ("Matrix Fragments for mma.m16n8k8"): g = lane // 4,
    t = lane % 4; a = A[g, t], A[g+8, t], A[g, t+4], A[g+8, t+4];
    b = B[t, g], B[t+4, g]; c = C[g, 2t], C[g, 2t+1], C[g+8, 2t], C[g+8, 2t+1].
    Also the (row, col) of each c register, where the lane's d lands."""
    lanes = np.arange(32)
    g, t = lanes // 4, lanes % 4
    a = np.stack([A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4]], axis=1)
    b = np.stack([B[t, g], B[t + 4, g]], axis=1)
    rows = np.stack([g, g, g + 8, g + 8], axis=1)
    cols = np.stack([2 * t, 2 * t + 1, 2 * t, 2 * t + 1], axis=1)
    return a, b, C[rows, cols], (rows, cols)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
def test_emulated_mma_is_a_16x8x8_matrix_product(tmp_path):
    """Two warps (each its own staging area) with random 16x8, 8x8 and 16x8
    matrices laid out in fragments by the ISA's table: each warp's D is A B + C,
    to fp32 rounding, with A and B rounded to TF32 first. A layout slip in the
    emulator (a1 and a2 swapped, say) fails here; one in the fragment loads of
    kernels/conv_tf32.cu (rung 6) fails test_cuda_without_gpu.py's TF32 test."""
    lib = _mma_library(str(tmp_path))
    rng = np.random.default_rng(6)
    warps = 2
    mats = [(rng.standard_normal((16, 8)), rng.standard_normal((8, 8)),
             rng.standard_normal((16, 8))) for _ in range(warps)]
    frags = [fragments(tf32(A), tf32(B), C.astype(np.float32)) for A, B, C in mats]
    a, b = (np.ascontiguousarray(np.stack([f[i] for f in frags]).astype(np.float32)
                                 .view(np.uint32)) for i in (0, 1))
    c = np.ascontiguousarray(np.stack([f[2] for f in frags]), np.float32)
    d = np.full(c.shape, np.nan, np.float32)
    ptr = lambda arr: arr.ctypes.data_as(ctypes.c_void_p)    # noqa: E731
    lib.mma_check(ctypes.c_int(warps), ptr(a), ptr(b), ptr(c), ptr(d))
    for k, (A, B, C) in enumerate(mats):
        rows, cols = frags[k][3]
        D = np.full((16, 8), np.nan)
        D[rows, cols] = d[k]
        want = tf32(A) @ tf32(B) + C.astype(np.float32)
        assert np.abs(D - want).max() <= 1e-5 * np.abs(want).max(), (k, D - want)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
def test_emulated_tf32_rounding(tmp_path):
    """to_tf32 in the emulator and ``tf32`` above: to nearest, ties away from 0."""
    lib = _mma_library(str(tmp_path))
    lib.tf32_bits.restype, lib.tf32_bits.argtypes = ctypes.c_uint, [ctypes.c_float]
    ulp = 2.0 ** -10                                         # TF32's, at 1
    cases = {1 + ulp / 2: 1 + ulp, -(1 + ulp / 2): -(1 + ulp),   # ties: away from 0
             1 + ulp * 1.5: 1 + 2 * ulp, 1 + ulp / 2 - 2.0 ** -23: 1.0,
             float("inf"): float("inf"), float("-inf"): float("-inf")}
    for x, want in cases.items():
        got = np.uint32(lib.tf32_bits(x)).view(np.float32)
        assert got == tf32(np.float32(x)) == np.float32(want), (x, got, want)
    assert np.isnan(np.uint32(lib.tf32_bits(float("nan"))).view(np.float32))


def test_every_kernel_has_a_launcher():
    for _, file, fns in launch.RUNGS.values():
        passes = {k.split("_", 1)[1] for k in _kernels(file)}
        assert passes == set(fns), (file, passes, set(fns))


@pytest.mark.parametrize("args, message", [
    (((2, 3, 5, 5), (4, 3, 3, 3), (5,)), r"b has shape \(5,\)"),
    (((2, 3, 5, 5), (4, 2, 3, 3), (4,)), r"x has shape \(2, 3, 5, 5\)"),
    (((2, 3, 5, 5), (4, 3, 5, 5), (4,)), r"w has shape \(4, 3, 5, 5\)"),
    (((3, 5, 5), (4, 3, 3, 3), (4,)), "x has shape .*4 dimensions expected"),
])
def test_launchers_refuse_bad_shapes(args, message):
    x, w, b = (np.zeros(s, np.float32) for s in args)
    with pytest.raises(ValueError, match=message):
        launch.naive_forward(None, x, w, b)


def test_launchers_refuse_other_dtypes():
    x, w = np.zeros((1, 2, 4, 4)), np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        launch.smem_input_grad(None, np.zeros((1, 3, 4, 4), np.float32)[:, :, ::-1], w)
    with pytest.raises(ValueError, match="float32"):
        launch.regblock_forward(None, x, w, np.zeros(3, np.float32))


# ------------------------------------------------------------------ the runner
def _run_ladder(argv):
    """``dev/cuda/ladder.py ARGV`` in-process with CuPy made unimportable."""
    code = ("import runpy, sys; sys.modules['cupy'] = None; "
            f"sys.argv = ['ladder.py', *{argv!r}]; "
            f"runpy.run_path({os.path.join(DEV, 'ladder.py')!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_ladder_help_works_without_cupy():
    r = _run_ladder(["--help"])
    assert r.returncode == 0, r.stderr
    assert "--check" in r.stdout and "--bench" in r.stdout


def test_ladder_without_cupy_says_why():
    r = _run_ladder(["--check"])
    assert r.returncode != 0
    assert "CuPy" in r.stderr.strip().splitlines()[-1], r.stderr


class _Event:
    """A stand-in for cupy.cuda.Event on the host clock."""

    def record(self):
        import time
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _fake_cupy():
    """Just enough of CuPy, on NumPy, for ladder.py's check and bench."""
    import types
    stream = types.SimpleNamespace(synchronize=lambda: None)
    cuda = types.SimpleNamespace(Event=_Event, get_current_stream=lambda: stream,
                                 get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)
    return types.SimpleNamespace(asarray=np.asarray, cuda=cuda)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
def test_ladder_checks_and_times_on_the_emulator(monkeypatch, tmp_path, tmp_path_factory):
    """ladder.py's --check and --bench, end to end, with each kernel launch run by
    the emulator (rungs 4 and 6 through the library's CUDA launchers, in fp32 and
    in TF32) and cuDNN by PyTorch on the CPU (timings mean nothing here): every
    rung and pass is checked and timed, the report is written, rung 6 differs
    from cuDNN fp32 as TF32 does, and a rung that is off by 1 % makes the run
    fail."""
    import json
    import torch
    import emulator as emu
    from minicnn import backend
    from minicnn.backend import cuda as cb
    from minicnn.backend.cuda import config
    fake = _fake_cupy()
    build = str(tmp_path_factory.getbasetemp())
    monkeypatch.setattr(ladder, "_cupy", lambda: fake)
    monkeypatch.setattr(ladder, "CupyRuntime", lambda cupy: EmulatorRuntime(build))
    emu.use_the_emulator(monkeypatch, config.CudaConfig().variant, build)
    monkeypatch.setattr(backend, "get", lambda device: cb)
    monkeypatch.setattr(ladder, "LAYERS", {4: 8})
    monkeypatch.setattr(ladder, "CHECK_SHAPES", [(2, 5, 7, 9, 6)])
    monkeypatch.setattr(ladder.common, "time_cupy",
                        lambda fn, n, warmup=3: ladder.common.time_host(fn, n, warmup))
    monkeypatch.setattr(ladder.common, "time_torch_cuda",
                        lambda fn, n, warmup=3: ladder.common.time_host(fn, n, warmup))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self: self, raising=False)
    argv = ["--check", "--bench", "--rungs", "1", "2", "3", "4", "6", "--layers", "4",
            "--batch", "2", "--repeats", "1", "--warmup", "0", "--budget", "0",
            "--out", str(tmp_path)]
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32
    assert ladder.main(argv) == 0
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32) == flags
    rows = json.load(open(tmp_path / "ladder.json"))["rows"]
    ours = [r for r in rows if r["rung"]]
    passes = {n: fns for n, (_, _, fns) in launch.RUNGS.items()} | {4: ladder.PASSES,
                                                                     6: ladder.PASSES}
    assert sorted((r["pass"], r["rung"]) for r in ours) == \
        sorted((p, n) for n, fns in passes.items() for p in fns)
    assert {r["layer"] for r in rows} == {"8->8 @4px"}
    assert all(r["agree"] and r["runs"] == 1 for r in ours)
    assert all(r["rel_err"] < (ladder.TF32_TOL if r["rung"] in ladder.TF32_RUNGS else 1e-5)
               for r in ours)
    assert all(r["rel_err"] > 5e-5 for r in ours if r["rung"] == 6)       # it does round
    assert config.current().precision == "fp32"                          # put back
    assert all((r["speedup_vs_below"] is None) == (r["rung"] == 1) for r in ours)
    assert all(r["vs_cudnn_fp32"] > 0 and r["vs_cudnn_tf32"] > 0 for r in ours)
    assert sum(r["name"].startswith("cuDNN") for r in rows) == 3 * 2
    assert (tmp_path / "ladder.md").read_text().count("| smem |") == 3

    off = dict(launch.RUNGS)
    name, file, fns = off[2]
    off[2] = (name, file, dict(fns, forward=lambda rt, *a: fns["forward"](rt, *a) * 1.01))
    monkeypatch.setattr(launch, "RUNGS", off)
    assert ladder.main(["--check", "--rungs", "2"]) == 1

