"""Activations: ReLU, softmax and log-softmax."""
from ..tensor import make_result


def relu(x):
    """``y = max(x, 0)``;  dy/dx = 1 where x > 0, else 0.  Any shape."""
    bk = x.backend
    y = bk.relu_forward(x.data)
    return make_result(y, (x,), lambda g: (bk.relu_backward(g, y),))


def softmax(x, dim=1):
    """``y_i = e^{x_i - m} / sum_j e^{x_j - m}`` along ``dim`` (m = max, for stability).

    Gradient: ``dx_i = y_i (dy_i - sum_j dy_j y_j)``.
    """
    xp = x.backend.xp
    e = xp.exp(x.data - x.data.max(axis=dim, keepdims=True))
    y = e / e.sum(axis=dim, keepdims=True)
    return make_result(y, (x,), lambda g: (y * (g - (g * y).sum(axis=dim, keepdims=True)),))


def log_softmax(x, dim=1):
    """``y_i = x_i - m - log sum_j e^{x_j - m}`` along ``dim`` (stable log-sum-exp).

    Gradient: ``dx_i = dy_i - softmax(x)_i sum_j dy_j``.
    """
    xp = x.backend.xp
    z = x.data - x.data.max(axis=dim, keepdims=True)
    y = z - xp.log(xp.exp(z).sum(axis=dim, keepdims=True))
    return make_result(y, (x,), lambda g: (g - xp.exp(y) * g.sum(axis=dim, keepdims=True),))
