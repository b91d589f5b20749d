"""Elementwise arithmetic and reductions, with NumPy broadcasting.

For ``z = f(x, y)`` broadcast to a common shape, each input's gradient is the elementwise
gradient summed over the axes along which that input was broadcast (``unbroadcast``).
"""
import builtins

from ..tensor import Tensor, make_result
from ._util import as_tensor, same_device


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: over leading axes it lacks and axes where it has size 1."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and g.shape[axis] != 1:
            g = g.sum(axis=axis, keepdims=True)
    return g


def _binary(x, y):
    """Both operands as Tensors; a number takes the other operand's dtype and device."""
    if not isinstance(x, Tensor):
        x = as_tensor(x, y)
    y = as_tensor(y, x)
    same_device(x, y)
    return x, y


def add(x, y):
    """``z = x + y``;  dz/dx = 1, dz/dy = 1."""
    x, y = _binary(x, y)
    return make_result(x.data + y.data, (x, y),
                       lambda g: (unbroadcast(g, x.shape), unbroadcast(g, y.shape)))


def sub(x, y):
    """``z = x - y``;  dz/dx = 1, dz/dy = -1."""
    x, y = _binary(x, y)
    return make_result(x.data - y.data, (x, y),
                       lambda g: (unbroadcast(g, x.shape), unbroadcast(-g, y.shape)))


def mul(x, y):
    """``z = x * y``;  dz/dx = y, dz/dy = x."""
    x, y = _binary(x, y)
    a, b = x.data, y.data
    return make_result(a * b, (x, y),
                       lambda g: (unbroadcast(g * b, x.shape) if x.requires_grad else None,
                                  unbroadcast(g * a, y.shape) if y.requires_grad else None))


def div(x, y):
    """``z = x / y``;  dz/dx = 1/y, dz/dy = -x/y^2."""
    x, y = _binary(x, y)
    a, b = x.data, y.data
    return make_result(a / b, (x, y),
                       lambda g: (unbroadcast(g / b, x.shape) if x.requires_grad else None,
                                  unbroadcast(-g * a / (b * b), y.shape) if y.requires_grad
                                  else None))


def neg(x):
    """``z = -x``;  dz/dx = -1."""
    return make_result(-x.data, (x,), lambda g: (-g,))


def pow(x, exponent):
    """``z = x^p`` for a constant number ``p``;  dz/dx = p x^(p-1)."""
    if not isinstance(exponent, (int, float)):
        raise ValueError(f"pow takes a constant number as exponent, got {type(exponent).__name__}")
    a = x.data
    return make_result(a ** exponent, (x,), lambda g: (g * exponent * a ** (exponent - 1),))


def exp(x):
    """``z = e^x``;  dz/dx = e^x = z."""
    z = x.backend.xp.exp(x.data)
    return make_result(z, (x,), lambda g: (g * z,))


def log(x):
    """``z = ln x``;  dz/dx = 1/x."""
    a = x.data
    return make_result(x.backend.xp.log(a), (x,), lambda g: (g / a,))


def _axes(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -ndim <= d < builtins.max(ndim, 1):
            raise ValueError(f"dim {d} out of range for a {ndim}-D tensor")
    return tuple(sorted(d % builtins.max(ndim, 1) for d in dims))


def sum(x, dim=None, keepdim=False):
    """``z = sum_{dim} x``;  dz/dx = 1, broadcast back over the summed axes."""
    axes = _axes(dim, x.ndim)
    xp = x.backend.xp
    shape = x.shape

    def backward(g):
        if not keepdim:
            g = xp.expand_dims(g, axes) if axes else g
        return (xp.broadcast_to(g, shape),)
    return make_result(xp.asarray(x.data.sum(axis=axes, keepdims=keepdim)), (x,), backward)


def mean(x, dim=None, keepdim=False):
    """``z = (1/n) sum_{dim} x`` with n the number of summed elements;  dz/dx = 1/n."""
    axes = _axes(dim, x.ndim)
    n = 1
    for a in axes:
        n *= x.shape[a]
    return mul(sum(x, dim, keepdim), 1.0 / n)
