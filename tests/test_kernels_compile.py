"""The CUDA sources compile, and the CUDA backend stays optional.

* every ``kernels/*.cu`` compiles with nvcc for sm_80 and sm_90 (skipped without nvcc), and
  with NVRTC, the run-time compiler CuPy uses, as the backend builds it (skipped without the
  ``nvidia-cuda-nvrtc`` wheel); so does rung 5 of the ladder, ``dev/cuda/conv_5_winograd.cu``,
  as ``dev/cuda/winograd.py`` builds it;
* ``import minicnn`` does not import CuPy, nor does loading ``minicnn.kernels``;
* ``minicnn.backend.get("cuda")`` without CuPy, or without a GPU, raises
  ``BackendUnavailable`` whose message says why.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from minicnn.backend.cuda import config, runtime
from minicnn.backend.cuda.config import CudaConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_DIR = os.path.join(ROOT, "kernels")
LADDER = os.path.join(ROOT, "dev", "cuda")
WINOGRAD = os.path.join(LADDER, "conv_5_winograd.cu")
DEFAULT = CudaConfig().conv_options()
CU_FILES = sorted(f for f in os.listdir(KERNEL_DIR) if f.endswith(".cu"))
NVCC = shutil.which("nvcc")
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run_python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_kernel_sources_present():
    assert {"conv.cu", "pool.cu", "activation.cu", "loss.cu", "optim.cu"} <= set(CU_FILES)
    assert os.path.exists(os.path.join(KERNEL_DIR, "common.cuh"))


# every file as it is (conv.cu: the shipped build), plus the other builds of conv.cu that the
# benchmarks time (config.VARIANTS), plus the Winograd rung
BUILDS = [(os.path.join(KERNEL_DIR, cu), ()) for cu in CU_FILES] + \
    [(os.path.join(KERNEL_DIR, "conv.cu"), CudaConfig.from_variant(v).conv_options())
     for v in config.VARIANTS] + [(WINOGRAD, DEFAULT)]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: cannot compile the CUDA kernels")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("cu, options", BUILDS,
                         ids=[f"{os.path.basename(cu)}{''.join(o)}" for cu, o in BUILDS])
def test_kernel_compiles(cu, options, arch, tmp_path):
    out = tmp_path / (os.path.basename(cu)[:-3] + ".cubin")
    cmd = [NVCC, "-std=c++17", f"-arch={arch}", "--cubin", *options, "-I", KERNEL_DIR,
           "-I", LADDER, cu, "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    assert out.exists() and out.stat().st_size > 0


def _nvrtc():
    """libnvrtc from the ``nvidia-cuda-nvrtc`` wheel (.ci/run installs it), or None."""
    import ctypes
    import glob
    try:
        import nvidia
    except ImportError:
        return None
    libs = [p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "cu*", "lib",
                                                                       "libnvrtc.so*"))]
    return ctypes.CDLL(sorted(libs)[0]) if libs else None


NVRTC = _nvrtc()


def _nvrtc_compile(path, options):
    """Compile the .cu file ``path`` with NVRTC as ``minicnn.kernels.module`` (and the
    Winograd rung's launcher) do at run time through CuPy, for compute_90: ``(status, log,
    names of the PTX's entry points)``."""
    import ctypes
    import re
    with open(path, "rb") as f:
        src = f.read()
    prog = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 0,
                                    None, None) == 0
    opts = [o.encode() for o in ("--std=c++17", f"-I{KERNEL_DIR}", f"-I{LADDER}",
                                 "--gpu-architecture=compute_90", *options)]
    status = NVRTC.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(prog, log)
    entries = set()
    if status == 0:
        NVRTC.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetPTX(prog, ptx)
        entries = set(re.findall(r"\.entry\s+(\w+)", ptx.value.decode()))
    NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))
    return status, log.value.decode(errors="replace"), entries


@pytest.mark.skipif(NVRTC is None, reason="no NVRTC (pip install nvidia-cuda-nvrtc)")
@pytest.mark.parametrize("name, variant", [(cu[:-3], None) for cu in CU_FILES if cu != "conv.cu"]
                         + [("conv", v) for v in (CudaConfig().variant, "plain")]
                         + [("conv_5_winograd", CudaConfig().variant)])
def test_kernels_compile_with_nvrtc(name, variant, monkeypatch):
    """NVRTC, the compiler CuPy runs on the GPU machine, accepts every kernel file with the
    options the backend gives it (a conv build's -D macros, optim's --fmad=false), and every
    entry point that the launchers name is in the PTX."""
    monkeypatch.setattr(config, "_current", CudaConfig.from_variant(variant or "plain"))
    options = runtime.module_options("conv" if name == "conv_5_winograd" else name)
    path = WINOGRAD if name == "conv_5_winograd" else os.path.join(KERNEL_DIR, f"{name}.cu")
    status, log, entries = _nvrtc_compile(path, options)
    assert status == 0, f"NVRTC failed on {name}.cu {options}:\n{log[-4000:]}"
    dts = ("f32", "f64")
    conv = {f"{k}_{tile}_{t}" for k in ("conv2d_forward", "conv2d_backward_input",
                                         "conv2d_backward_input_partition",
                                         "conv2d_backward_weight")
            for tile, t in (("m32n128", "f32"), ("m64n64", "f64"), ("m128n128", "f32"))} \
        | {f"{k}_{t}" for k in ("splitk_reduce", "conv1x1_forward", "conv1x1_backward_input",
                                "conv1x1_backward_weight") for t in dts}
    winograd = {f"{m}_{k}_{t}" for m in ("winograd", "winograd4")
                for k in ("x", "dy", "out", "in", "filter", "conv_out") for t in dts} \
        | {"winograd_gemm_m128n64_f32", "winograd_gemm_m64n64_f64"}
    expected = {
        "pool": {f"maxpool2d_{d}_{i}_{t}{w}" for d in ("forward", "backward")
                 for i in ("u8", "i32") for t in dts for w in ("", "_div32")},
        "activation": {f"relu_{d}{v}_{t}" for d in ("forward", "backward") for v in ("", "_vec")
                       for t in dts},
        "loss": {f"softmax_xent_{k}_{t}" for k in ("forward", "backward", "reduce") for t in dts},
        "optim": {f"{o}_update_{t}" for o in ("adam", "sgd", "adagrad") for t in dts},
        "conv": conv,
        "conv_tf32": {f"{k}_tf32" for k in ("conv2d_forward", "conv2d_backward_input",
                                            "conv2d_backward_input_partition",
                                            "conv2d_backward_weight")},
        "conv_5_winograd": conv | winograd,      # rung 5 includes rung 4 (conv.cu)
    }[name]
    tiles = {f"conv2d_forward_{tile}_f32" for tile in ("m128n64", "m64n128")}
    if variant and "tiles" in variant:
        expected |= tiles
    assert expected <= entries, sorted(expected - entries)
    if name == "conv":
        assert not (winograd & entries), "Winograd's kernels are rung 5's, not the library's"
        assert ("tiles" in variant) == (tiles <= entries)


# mma.sync ... .tf32 needs sm_80 or later (tensor cores with TF32: Ampere)
@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: cannot compile for sm_80/90")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_tensor_core_kernels_keep_their_accumulators_in_registers(arch, tmp_path):
    """kernels/conv_tf32.cu by nvcc (ptxas assembles its inline tensor-core PTX, as the driver
    does NVRTC's): every kernel, no register spills. A spilled accumulator fragment would live
    in local memory, slower than the shared memory the tiles are there to save."""
    cmd = [NVCC, "-std=c++17", f"-arch={arch}", "--cubin", "-Xptxas", "-v", "-I", KERNEL_DIR,
           os.path.join(KERNEL_DIR, "conv_tf32.cu"), "-o", str(tmp_path / "tf32.cubin")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    spills = re.findall(r"(\d+) bytes spill stores", r.stderr)
    assert len(spills) == 4 and set(spills) == {"0"}, r.stderr


def test_import_minicnn_does_not_import_cupy():
    r = _run_python("import minicnn, sys; assert 'cupy' not in sys.modules, 'cupy imported'")
    assert r.returncode == 0, r.stderr


def test_kernels_package_imports_without_cupy():
    # Loaded by path under its installed name (it ships as minicnn.kernels, never `kernels`).
    code = (
        "import importlib.util, sys\n"
        f"p = {os.path.join(KERNEL_DIR, '__init__.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('minicnn.kernels', p)\n"
        "k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k)\n"
        "assert 'cupy' not in sys.modules\n"
        "assert {'conv.cu', 'pool.cu', 'activation.cu', 'loss.cu', 'optim.cu'} <= set(k.SOURCES)\n"
        "assert '#include \"conv_problems.cuh\"' in k.source('conv')\n"
        "assert {'common.cuh', 'conv_problems.cuh'} <= set(k.HEADERS)\n"
        "assert callable(k.module)\n"
    )
    r = _run_python(code)
    assert r.returncode == 0, r.stderr


def test_cuda_backend_without_cupy_is_unavailable():
    # Simulate a machine without CuPy: a None entry in sys.modules makes `import cupy` fail.
    code = (
        "import sys; sys.modules['cupy'] = None\n"
        "from minicnn import backend\n"
        "try:\n"
        "    backend.get('cuda')\n"
        "except backend.BackendUnavailable as err:\n"
        "    print(err)\n"
        "else:\n"
        "    raise SystemExit('no BackendUnavailable')\n"
    )
    r = _run_python(code)
    assert r.returncode == 0, r.stderr
    assert "CuPy" in r.stdout and "cupy-cuda13x" in r.stdout, r.stdout


def _gpu_usable():
    from minicnn import backend
    try:
        backend.get("cuda")
    except backend.BackendUnavailable:
        return False
    return True


def test_get_cuda_without_gpu_raises_backend_unavailable():
    if _gpu_usable():
        pytest.skip("a CUDA GPU is usable here: nothing to refuse")
    from minicnn import backend
    with pytest.raises(backend.BackendUnavailable, match="CuPy"):
        backend.get("cuda")
