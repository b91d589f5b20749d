"""minicnn's CUDA kernels: the ``.cu`` sources and a tiny loader.

This folder ships as the package ``minicnn.kernels`` (setup.py maps it there with
``package_dir``; it is never a top-level ``kernels`` package). It holds no logic beyond
finding and compiling the sources: the launch code is ``minicnn/backend/cuda/``.

``source(name)`` is the text of ``NAME.cu``; ``module(name, options)`` compiles it with NVRTC
through ``cupy.RawModule`` (once per process and option set; CuPy also caches the binary on
disk). Their ``#include``s of the headers here (``common.cuh``; ``conv_problems.cuh``, shared
by conv.cu and conv_tf32.cu) are resolved by putting this folder on the include path
(``-I``). CuPy is imported inside ``module`` only, so this package imports without it.
"""
import functools
import hashlib
import os

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(f for f in os.listdir(KERNEL_DIR) if f.endswith(".cu"))
HEADERS = sorted(f for f in os.listdir(KERNEL_DIR) if f.endswith(".cuh"))


def source(name):
    """The text of ``NAME.cu`` (``name`` without the extension)."""
    if f"{name}.cu" not in SOURCES:
        raise ValueError(f"no kernel source {name}.cu in {KERNEL_DIR}; have {SOURCES}")
    with open(os.path.join(KERNEL_DIR, f"{name}.cu"), encoding="utf-8") as f:
        return f.read()


def _headers_digest():
    """A hash of the shared headers. CuPy's on-disk cache is keyed by the source text only, not
    by what it includes, so the digest goes into the source to rebuild when a header changes."""
    h = hashlib.sha256()
    for name in HEADERS:
        with open(os.path.join(KERNEL_DIR, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _module(name, options):
    import cupy
    code = source(name) + f"\n// headers: {_headers_digest()}\n"
    return cupy.RawModule(code=code, options=("--std=c++17", f"-I{KERNEL_DIR}") + options)


def module(name, options=()):
    """``cupy.RawModule`` of ``NAME.cu`` compiled with the extra NVRTC ``options``
    (cached per process). Kernels are then ``module(name).get_function("kernel_f32")``."""
    return _module(name, tuple(options))
