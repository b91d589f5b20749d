"""Backends: where the array code lives.

A backend is one module (or package) that defines ``name``, ``device``, ``xp`` (its array
namespace, used for plain elementwise glue), ``asarray``, ``to_host`` and the primitives in
``PRIMITIVES``. ``minicnn.functional`` reaches array code only through these, so adding a
backend is one module.

The NumPy backend is always there. The CUDA backend (the package ``minicnn.backend.cuda``: our
own kernels, launched through CuPy, and its build configuration ``CudaConfig``) is imported the
first time something asks for the ``"cuda"`` device, never before: importing minicnn does not
import CuPy.
"""
import importlib

import numpy as np

from . import numpy_backend

PRIMITIVES = (
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
    "maxpool2d_forward", "maxpool2d_backward",
    "relu_forward", "relu_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "adam_update", "sgd_update", "adagrad_update",
)

DEVICES = {"cpu": "minicnn.backend.numpy_backend", "cuda": "minicnn.backend.cuda"}


class BackendUnavailable(RuntimeError):
    """The asked-for device cannot be used on this machine (the message says why)."""


def get(device):
    """The backend module for ``device`` (``"cpu"`` or ``"cuda"``)."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {sorted(DEVICES)}")
    if device == "cpu":
        return numpy_backend
    module = importlib.import_module(DEVICES[device])
    module.check_available()   # raises BackendUnavailable with the exact reason
    return module


def of(array):
    """The backend that owns ``array`` (NumPy arrays and scalars are on the CPU)."""
    if isinstance(array, (np.ndarray, np.generic)):
        return numpy_backend
    if type(array).__module__.startswith("cupy"):
        return get("cuda")
    raise TypeError(f"not an array of a known backend: {type(array).__name__}")
