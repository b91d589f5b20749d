"""The thread count of the BLAS library that NumPy calls (OpenBLAS, in NumPy's wheels).

The NumPy backend runs its convolutions' matrix products on its own threads, one part of the
batch (or of the channels) per task, and wants BLAS to use one thread inside each call
meanwhile (``limit(1)``; see ``numpy_backend._over_parts`` for why). OpenBLAS has no Python
interface for that, so this module asks the library NumPy loaded for its C functions, as
threadpoolctl does. Where NumPy's BLAS is not an OpenBLAS found here, ``available()`` is False
and the backend leaves BLAS alone.
"""
import contextlib
import ctypes
import glob
import os

import numpy as np

_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("64_", "")


def _load():
    """(library, name prefix) of the OpenBLAS shipped in NumPy's wheel, or (None, None)."""
    site = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    for path in sorted(glob.glob(os.path.join(site, "numpy.libs", "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)     # the library NumPy already loaded: same handle
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                if hasattr(lib, f"{prefix}_get_num_threads{suffix}"):
                    return lib, (prefix, suffix)
    return None, None


_lib, _names = _load()


def _fn(name, restype=ctypes.c_int):
    fn = getattr(_lib, f"{_names[0]}_{name}{_names[1]}")
    fn.restype = restype
    return fn


def available():
    """Whether this module can read and set NumPy's BLAS threads."""
    return _lib is not None


def get():
    """BLAS's current thread count (None where not available)."""
    return _fn("get_num_threads")() if _lib is not None else None


def corename():
    """The kernel set OpenBLAS chose ("Haswell": AVX2, "SkylakeX": AVX-512, ...), or None."""
    return _fn("get_corename", ctypes.c_char_p)().decode() if _lib is not None else None


def config():
    """OpenBLAS's own description of its build (version, threading, kernel set), or None."""
    return _fn("get_config", ctypes.c_char_p)().decode() if _lib is not None else None


def set_threads(threads):
    """Let BLAS use ``threads`` threads from now on (a benchmark's ``--threads``); False where
    not available."""
    if _lib is None:
        return False
    _fn("set_num_threads", None)(int(threads))
    return True


@contextlib.contextmanager
def limit(threads):
    """BLAS calls use at most ``threads`` threads inside the block (no-op where unavailable)."""
    before = get()
    if before is None or before == threads:
        yield
        return
    set_threads(threads)
    try:
        yield
    finally:
        set_threads(before)
