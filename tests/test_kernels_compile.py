"""The CUDA sources compile, and the CUDA backend stays optional.

* every ``kernels/*.cu`` compiles with nvcc for sm_80 and sm_90 (skipped without nvcc);
* ``import minicnn`` does not import CuPy, nor does loading ``minicnn.kernels``;
* ``minicnn.backend.get("cuda")`` without CuPy, or without a GPU, raises
  ``BackendUnavailable`` whose message says why.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from minicnn.backend import cuda_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_DIR = os.path.join(ROOT, "kernels")
CU_FILES = sorted(f for f in os.listdir(KERNEL_DIR) if f.endswith(".cu"))
NVCC = shutil.which("nvcc")
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run_python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_kernel_sources_present():
    assert {"conv.cu", "pool.cu", "activation.cu", "loss.cu", "optim.cu"} <= set(CU_FILES)
    assert os.path.exists(os.path.join(KERNEL_DIR, "common.cuh"))


# every file as it is, plus the other build variants of conv.cu (cuda_backend.CONV_VARIANTS;
# the module imports without CuPy)
BUILDS = [(cu, ()) for cu in CU_FILES] + \
    [("conv.cu", opts) for opts in cuda_backend.CONV_VARIANTS.values() if opts]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: cannot compile the CUDA kernels")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("cu, options", BUILDS)
def test_kernel_compiles(cu, options, arch, tmp_path):
    out = tmp_path / (cu[:-3] + ".cubin")
    cmd = [NVCC, "-std=c++17", f"-arch={arch}", "--cubin", *options, "-I", KERNEL_DIR,
           os.path.join(KERNEL_DIR, cu), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    assert out.exists() and out.stat().st_size > 0


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
        "assert '#include \"common.cuh\"' in k.source('conv')\n"
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
