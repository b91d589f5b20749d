"""The CPU emulator of the CUDA kernels (``tests/kernel_emu/cuda_emu.h``), for the tests.

``run_check`` builds and runs one of the check programs of ``tests/kernel_emu`` (the kernel
source compiled as C++ after the emulator header) with a conv build's ``-D`` options.
``use_the_emulator`` makes ``minicnn.backend.cuda`` run on NumPy arrays: CuPy replaced by
``EmuCupy`` and each kernel the launchers name by the same kernel of the real source, built as
a shared library and called through ctypes with the grid, block and arguments the launcher
passes (each argument checked against the kernel's parameter type first: CuPy passes a
RawKernel's arguments by position, unchecked). The GPU self-check in
``benchmarks/gpu_check.sh`` remains the test on real hardware.
"""
import ctypes
import functools
import os
import re
import shutil
import subprocess
import types

import numpy as np

from minicnn.backend.cuda import config, planner, runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "tests", "kernel_emu")
KERNELS = os.path.join(ROOT, "kernels")
LADDER = os.path.join(ROOT, "dev", "cuda")
CXX = shutil.which(os.environ.get("CXX", "g++"))
INCLUDES = ("-I", EMU, "-I", KERNELS, "-I", LADDER)
# the sources built with a conv build's -D options (conv_tf32 and rung 5 include its problems)
CONV_BUILDS = ("conv", "conv_tf32", "conv_5_winograd")


def options(variant):
    """The -D options of the conv build ``variant`` ("plain" or features joined by "+")."""
    return config.CudaConfig.from_variant(variant).conv_options()


def run_check(program, variant, tmp_path, flags=("-O2",), env=None, minimum=100):
    """Build tests/kernel_emu/PROGRAM.cpp with the conv build ``variant``'s options and
    ``flags``, run it, and check that all its (at least ``minimum``) checks passed; returns
    ``(number of checks, the run's stderr)``."""
    exe = tmp_path / program
    build = [CXX, "-std=c++20", *flags, "-fno-strict-aliasing", *options(variant), *INCLUDES,
             "-x", "c++", os.path.join(EMU, program + ".cpp"), "-o", str(exe)]
    r = subprocess.run(build, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{' '.join(build)}:\n{r.stderr[-4000:]}"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, env=env)
    failed = [line for line in r.stdout.splitlines() if not line.startswith("ok")]
    assert r.returncode == 0, ("\n".join(failed) + r.stderr)[-4000:]
    last = r.stdout.strip().splitlines()[-1]
    count = int(last.split()[0])
    assert last.endswith(" 0 failures") and count >= minimum, last
    return count, r.stderr


def asan_works(tmp_path):
    """Whether the C++ compiler can build with AddressSanitizer here."""
    src = tmp_path / "t.cpp"
    src.write_text("int main() { return 0; }\n")
    r = subprocess.run([CXX, "-fsanitize=address", str(src), "-o", str(tmp_path / "t")],
                       capture_output=True, text=True, timeout=120)
    return r.returncode == 0


@functools.lru_cache(maxsize=None)
def kernel_signatures(source, variant="plain"):
    """{kernel name: [parameter type, ...]} of SOURCE.cu (kernels/ or dev/cuda/; conv.cu and
    the Winograd rung built as ``variant``), from the C++ preprocessor (the entry points are
    written by macros)."""
    src = f'#include "cuda_emu.h"\n#include "{source}.cu"\n'
    opts = options(variant) if source in CONV_BUILDS else ()
    r = subprocess.run([CXX, "-E", "-P", "-std=c++20", *opts, *INCLUDES, "-x", "c++", "-"],
                       input=src, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    sigs = {}
    for name, params in re.findall(r'extern "C"\s*void\s+(\w+)\(([^)]*)\)', r.stdout):
        # "const float* __restrict__ x" -> "float*", "long long size" -> "longlong"
        sigs[name] = [re.sub(r"\w+$", "", p.replace("__restrict__", " ").replace("const ", "")
                             .strip()).replace(" ", "") for p in params.split(",")]
    return sigs


def check_arguments(sigs, name, grid, block, args):
    """Assert that a launch of kernel ``name`` passes what its parameters take: pointers get
    arrays of their dtype, ``int`` an int32, ``long long`` an int64; a tile's kernel gets the
    tile's threads."""
    assert name in sigs, f"{name} is not a kernel of this build"
    params = sigs[name]
    assert len(args) == len(params), (name, len(args), params)
    pointer = {"float*": np.float32, "double*": np.float64, "int*": np.int32,
               "longlong*": np.int64, "unsignedchar*": np.uint8}
    for ptype, arg in zip(params, args):
        if ptype.endswith("*"):
            ok = isinstance(arg, np.ndarray) and arg.dtype == pointer[ptype]
        else:
            ok = {"int": np.int32, "longlong": np.int64, "float": np.float32,
                  "double": np.float64}[ptype] == type(arg)
        assert ok, (name, ptype, type(arg), getattr(arg, "dtype", None))
    tile = re.search(r"_(m\d+n\d+)_f", name)
    if tile:
        assert tuple(block) == (planner.tile_threads(tile.group(1)),), (name, block)
    if name.startswith("conv2d_") and name.endswith("_tf32"):
        assert tuple(block) == (planner.TF32_THREADS,), (name, block)


class FakeDevice:
    id = 0

    def __init__(self, *args):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class EmuArray(np.ndarray):
    """A NumPy array that tells its address as a CuPy array does (``a.data.ptr``)."""
    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


class EmuCupy:
    """NumPy arrays that look enough like CuPy's for every launcher of the CUDA backend."""
    ndarray = EmuArray

    class cuda:
        Device = FakeDevice

    @staticmethod
    def asarray(a, dtype=None):
        return np.asarray(a, dtype=dtype).view(EmuArray)

    @staticmethod
    def ascontiguousarray(a):
        return np.ascontiguousarray(a).view(EmuArray)

    @staticmethod
    def empty(shape, dtype=np.float64):
        return np.empty(shape, dtype).view(EmuArray)

    @staticmethod
    def zeros(shape, dtype=np.float64):
        return np.zeros(shape, dtype).view(EmuArray)


@functools.lru_cache(maxsize=None)
def library(source, variant, build_dir):
    """SOURCE.cu (conv.cu and the Winograd rung built as ``variant``) for the emulator, as a
    shared library with one ``call_<kernel>(dims, args)`` per entry point: ``dims`` the grid
    and block (6 unsigned), ``args`` pointers to the arguments, as CUDA's launch API takes
    them."""
    ctype = {"longlong": "long long", "longlong*": "long long*", "unsignedchar*": "unsigned char*"}
    lines = ['#include "cuda_emu.h"', f'#include "{source}.cu"']
    for name, params in sorted(kernel_signatures(source, variant).items()):
        args = ", ".join(f"*({ctype.get(p, p)}*)a[{i}]" for i, p in enumerate(params))
        lines.append(f'extern "C" void call_{name}(const unsigned* d, void** a) '
                     f'{{ emu_launch(dim3(d[0], d[1], d[2]), dim3(d[3], d[4], d[5]), {name}, '
                     f'{args}); }}')
    src = os.path.join(build_dir, f"{source}_{variant.replace('+', '_')}.cpp")
    lib = src[:-4] + ".so"
    with open(src, "w") as f:
        f.write("\n".join(lines) + "\n")
    opts = options(variant) if source in CONV_BUILDS else ()
    build = [CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-fno-strict-aliasing", *opts,
             *INCLUDES, src, "-o", lib]
    r = subprocess.run(build, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{' '.join(build)}:\n{r.stderr[-4000:]}"
    return ctypes.CDLL(lib)


def emulated_kernel(source, variant, build_dir, name):
    """A stand-in for the CuPy RawKernel ``name`` of SOURCE.cu that checks its arguments and
    runs it in the emulator: NumPy arrays are passed as their data pointers, NumPy scalars by
    address."""
    lib = library(source, variant, build_dir)
    sigs = kernel_signatures(source, variant)

    def launch(grid, block, args):
        check_arguments(sigs, name, grid, block, args)
        dims = (ctypes.c_uint * 6)(*(tuple(grid) + (1,) * (3 - len(grid))),
                                   *(tuple(block) + (1,) * (3 - len(block))))
        keep = []
        for a in args:
            if isinstance(a, np.ndarray):
                keep.append(ctypes.c_void_p(a.ctypes.data))
            else:
                keep.append({np.int32: ctypes.c_int, np.int64: ctypes.c_longlong,
                             np.float32: ctypes.c_float, np.float64: ctypes.c_double}[type(a)](a))
        argv = (ctypes.c_void_p * len(keep))(*(ctypes.addressof(k) for k in keep))
        getattr(lib, f"call_{name}")(dims, argv)
    return launch


def use_the_emulator(monkeypatch, variant, build_dir, untimed=(), precision="fp32"):
    """The CUDA backend with the conv build ``variant``, the ``untimed`` changes and the
    ``precision`` in force, CuPy replaced by EmuCupy and each kernel by the emulator's (132
    SMs, as an H100's)."""
    monkeypatch.setattr(config, "_current", config.CudaConfig(
        features=config.CudaConfig.from_variant(variant).features, untimed=untimed,
        precision=precision))
    monkeypatch.setattr(runtime, "cupy", EmuCupy)
    monkeypatch.setattr(runtime, "kernel", lambda module, name: emulated_kernel(
        module, variant if module in CONV_BUILDS else "plain", build_dir, name))
    monkeypatch.setattr(runtime, "num_sms", lambda: 132)
    monkeypatch.setattr(runtime, "_device_scratch", lambda device_id: EmuCupy.zeros(1, np.int32))


class EmuGpuArray(EmuArray):
    """An array on the emulated GPU: NumPy's, that minicnn takes for a CuPy array (see
    ``use_the_emulated_gpu``)."""


class NumpyAsCupy(types.ModuleType):
    """All of NumPy as CuPy: every function of NumPy (``asarray``, ``empty``, ``zeros``, ...),
    whatever would be a plain ndarray returned as an EmuGpuArray; ufuncs keep the subclass
    themselves. ``asnumpy`` gives a plain ndarray back."""
    ndarray = EmuGpuArray
    cuda = EmuCupy.cuda

    def __getattr__(self, name):
        f = getattr(np, name)
        if isinstance(f, (np.ufunc, type)) or not callable(f):
            return f

        def on_the_gpu(*args, **kwargs):
            r = f(*args, **kwargs)
            return r.view(EmuGpuArray) if type(r) is np.ndarray else r
        return on_the_gpu

    def asnumpy(self, a):
        return np.asarray(a).view(np.ndarray)


def use_the_emulated_gpu(monkeypatch, build_dir, precision="fp32"):
    """The whole CUDA backend usable on the CPU, for models and training runs: the shipped
    conv build with ``precision``, each kernel run by the emulator, CuPy replaced by NumPy
    (``NumpyAsCupy``), the GPU reported present, and ``minicnn.backend.of`` taking an
    EmuGpuArray for a CUDA array. ``.to("cuda")`` then moves a tensor there."""
    from minicnn import backend
    from minicnn.backend import cuda
    use_the_emulator(monkeypatch, config.CudaConfig().variant, build_dir, precision=precision)
    gpu = NumpyAsCupy("cupy_emulated")
    monkeypatch.setattr(runtime, "cupy", gpu)
    monkeypatch.setattr(cuda, "xp", gpu)
    monkeypatch.setattr(runtime, "_availability", True)
    of = backend.of
    monkeypatch.setattr(backend, "of", lambda a: cuda if isinstance(a, EmuGpuArray) else of(a))
