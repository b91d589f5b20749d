"""The CUDA backend: minicnn's own kernels (``kernels/*.cu``), launched through CuPy.

Every primitive of ``minicnn.backend.PRIMITIVES`` is here with the signature, output shapes,
dtypes and argmax encoding of ``numpy_backend`` (its docstrings state the maths). The named
ops run our kernels only -- no cuDNN, no cuBLAS; CuPy provides the arrays, the NVRTC
compiler, plain elementwise glue (``xp``) and the kernel launches.

This package is imported only when something asks for the ``"cuda"`` device (see
``minicnn.backend.get``) or for its configuration; importing ``minicnn`` never imports it.
One job per module:

* ``config``  -- ``CudaConfig``, the typed build configuration, and ``configure``;
* ``runtime`` -- CuPy, the availability probe, kernel compilation and launches;
* ``checks``  -- the input checks every primitive runs before it launches;
* ``planner`` -- which kernel, tile, grid and K slices a convolution gets (pure Python);
* ``conv``    -- the convolution primitives;
* ``ops``     -- the other primitives (pooling, ReLU, cross-entropy, optimizers).
"""
from . import runtime
from .config import CudaConfig, configure, configured, current as current_config
from .conv import conv2d_backward_input, conv2d_backward_weight, conv2d_forward
from .runtime import check_available
from .ops import (adagrad_update, adam_update, maxpool2d_backward, maxpool2d_forward,
                  relu_backward, relu_forward, sgd_update, softmax_cross_entropy_backward,
                  softmax_cross_entropy_forward)

name = "cuda"
device = "cuda"
xp = runtime.cupy


def asarray(a, dtype=None):
    """``a`` as a CuPy array (copied to the GPU if needed)."""
    return runtime.cupy.asarray(a, dtype=dtype)


def to_host(a):
    """A NumPy array holding ``a``'s values."""
    return runtime.cupy.asnumpy(a)


__all__ = ["CudaConfig", "configure", "configured", "current_config", "check_available",
           "asarray", "to_host", "name", "device", "xp",
           "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "maxpool2d_forward", "maxpool2d_backward", "relu_forward", "relu_backward",
           "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
           "adam_update", "sgd_update", "adagrad_update"]
