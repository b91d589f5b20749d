"""CuPy and the GPU: the one module of the CUDA backend that touches them directly.

It imports CuPy (a failed import is remembered and reported by ``check_available()`` as
``BackendUnavailable`` with the reason), compiles and caches the kernels (``kernel``), asks the
device for its SM count and launches grid-stride kernels. The other modules reach CuPy only
as ``runtime.cupy`` and launch only through ``runtime.kernel``, so a test can stand in for all
of it here (tests/test_cuda_without_gpu.py runs the launchers on the CPU emulator that way).
"""
import functools
import importlib.util
import os
import sys

from .. import BackendUnavailable
from . import config

try:
    import cupy
except Exception as _err:   # noqa: BLE001  ImportError, or a CuPy that breaks while importing
    cupy = None
    _IMPORT_ERROR = _err
else:
    _IMPORT_ERROR = None

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


def kernels_package():
    """``minicnn.kernels``: installed (setup.py maps the repo's ``kernels/`` there), or, in a
    source checkout, loaded from ``<repo>/kernels`` under that same name (never ``kernels``)."""
    try:
        from ... import kernels
        return kernels
    except ImportError:
        pass
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))), "kernels")
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
MODULE_OPTIONS = {"optim": ("--fmad=false",)}


def module_options(module_name):
    """The NVRTC options of ``kernels/<module_name>.cu``: conv's and conv_tf32's from the
    configuration in force (``config.current()``), the others fixed."""
    if module_name in ("conv", "conv_tf32"):
        return config.current().conv_options()
    return MODULE_OPTIONS.get(module_name, ())


def kernel(module_name, kernel_name):
    """The compiled kernel ``kernel_name`` of ``kernels/<module_name>.cu`` (compiled once per
    option set, then cached)."""
    return _kernel(module_name, kernel_name, module_options(module_name))


@functools.lru_cache(maxsize=None)
def _kernel(module_name, kernel_name, options):
    return kernels_package().module(module_name, options).get_function(kernel_name)


@functools.lru_cache(maxsize=None)
def _sm_count(device_id):
    return int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])


def num_sms():
    """The number of streaming multiprocessors of the current device."""
    return _sm_count(cupy.cuda.Device().id)


def launch_1d(kern, n, args, threads=256):
    """Launch a grid-stride kernel over ``n`` items (nothing for n == 0)."""
    if n <= 0:
        return
    blocks = min((n + threads - 1) // threads, 65535)
    kern((blocks,), (threads,), args)


@functools.lru_cache(maxsize=None)
def _device_scratch(device_id):
    with cupy.cuda.Device(device_id):
        return cupy.zeros((1,), dtype="int32")


def i32_scratch():
    """One int32 on the current device for a kernel argument that is never read or written
    (a pointer argument must still point to valid memory)."""
    return _device_scratch(cupy.cuda.Device().id)
