"""minicnn: a small, readable autograd and CNN library written from scratch.

>>> import numpy as np, minicnn
>>> x = minicnn.Tensor(np.ones((1, 1, 4, 4), dtype=np.float32), requires_grad=True)
>>> y = minicnn.functional.max_pool2d(x, 2).sum()
>>> y.backward(); x.grad.sum()
np.float32(4.0)

Arrays live on a backend (NumPy on the CPU; our own CUDA kernels through CuPy on the GPU,
loaded only when asked for). ``minicnn`` never imports torch or cupy at import time.
"""
from . import backend
from .tensor import Tensor, no_grad, is_grad_enabled
from . import functional
from . import nn
from . import optim
from .random import manual_seed

__all__ = ["Tensor", "no_grad", "is_grad_enabled", "functional", "nn", "optim", "backend",
           "manual_seed"]
__version__ = "0.1.0"
