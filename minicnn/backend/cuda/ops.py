"""The other primitives: kernels/pool.cu, activation.cu, loss.cu and optim.cu launched on
CuPy arrays (the convolutions are in ``conv.py``).

=====================================  ==========================================
primitive                              kernel(s) (``<name>_<f32|f64>``)
=====================================  ==========================================
maxpool2d_forward / _backward          pool.cu  maxpool2d_{forward,backward}_{u8,i32}
                                       (``_div32``: untimed ``pool_div32``)
relu_forward / relu_backward           activation.cu  relu_* (``relu_*_vec``, 16-byte
                                       loads: untimed ``relu_vec16``)
softmax_cross_entropy_forward / _bwd   loss.cu  softmax_xent_{forward,backward} (+ CuPy
                                       sums; ``softmax_xent_reduce``: untimed ``xent_sums``)
adam_update, sgd_update, adagrad_update  optim.cu (compiled with --fmad=false)
=====================================  ==========================================

The untimed changes (``config.UNTIMED``) are off unless ``config.current()`` names them.
"""
import math

import numpy as np

from . import checks, config, planner, runtime
from .checks import i32

SCE_THREADS = 256    # kernels/loss.cu's SCE_THREADS: the block of its reductions


# =========================================================================== pooling
def _pool_width():
    """The pool kernels' name suffix: ``_div32`` (index in 32 bits) when the untimed
    ``pool_div32`` is on, else none (64-bit index arithmetic, as the H200 timed)."""
    return "_div32" if config.current().tries("pool_div32") else ""


def maxpool2d_forward(x, kernel, stride):
    """Max over each window; also returns, per output, the window offset ``i*kW + j`` of the
    max (uint8 when kH*kW <= 256, else int32, as numpy_backend)."""
    op = "maxpool2d_forward"
    x = checks.operand(op, x, "input")
    checks.ndim(op, x, 4, "input", "(N, C, H, W)")
    (kH, kW), (sH, sW) = checks.pair(op, kernel, "kernel", 1), checks.pair(op, stride, "stride", 1)
    N, C, H, W = x.shape
    Ho, Wo = (H - kH) // sH + 1, (W - kW) // sW + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: kernel {(kH, kW)} is larger than the input {x.shape}")
    checks.index_range(op, f"input {x.shape}", x_size=x.size, height_plus_stride=H + sH,
                       width_plus_stride=W + sW, window=kH * kW)
    sfx = checks.suffix(op, x.dtype, "input") + _pool_width()
    itype, isfx = (np.uint8, "u8") if kH * kW <= 256 else (np.int32, "i32")
    y = runtime.cupy.empty((N, C, Ho, Wo), dtype=x.dtype)
    idx = runtime.cupy.empty((N, C, Ho, Wo), dtype=itype)
    runtime.launch_1d(runtime.kernel("pool", f"maxpool2d_forward_{isfx}_{sfx}"), y.size,
               (x, y, idx, i32(N * C), i32(H), i32(W), i32(Ho), i32(Wo),
                i32(kH), i32(kW), i32(sH), i32(sW)))
    return y, idx


def maxpool2d_backward(gy, idx, x_shape, kernel, stride):
    """Route each output gradient to the input position that held the max (a gather per
    input pixel over the windows that cover it: overlapping windows need no atomics)."""
    op = "maxpool2d_backward"
    gy = checks.operand(op, gy, "output gradient")
    idx = checks.device_array(idx)
    if idx.dtype == np.uint8:
        isfx = "u8"
    elif idx.dtype.kind in "iu":
        idx, isfx = idx.astype(np.int32, copy=False), "i32"
    else:
        raise ValueError(f"{op}: argmax must be an integer array, got dtype {idx.dtype}")
    idx = checks.contiguous(idx)
    (kH, kW), (sH, sW) = checks.pair(op, kernel, "kernel", 1), checks.pair(op, stride, "stride", 1)
    try:
        N, C, H, W = (int(v) for v in x_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: x_shape must be (N, C, H, W), got {x_shape!r}") from None
    Ho, Wo = (H - kH) // sH + 1, (W - kW) // sW + 1
    if gy.shape != (N, C, Ho, Wo) or idx.shape != gy.shape:
        raise ValueError(f"{op}: output gradient {gy.shape} and argmax {idx.shape} must both "
                         f"be {(N, C, Ho, Wo)} for input {(N, C, H, W)}, kernel {(kH, kW)}, "
                         f"stride {(sH, sW)}")
    checks.index_range(op, f"input {(N, C, H, W)}", x_size=N * C * H * W,
                       height_plus_stride=H + sH, width_plus_stride=W + sW, window=kH * kW)
    sfx = checks.suffix(op, gy.dtype, "output gradient") + _pool_width()
    gx = runtime.cupy.empty((N, C, H, W), dtype=gy.dtype)
    runtime.launch_1d(runtime.kernel("pool", f"maxpool2d_backward_{isfx}_{sfx}"), gx.size,
               (gy, idx, gx, i32(N * C), i32(H), i32(W), i32(Ho), i32(Wo),
                i32(kH), i32(kW), i32(sH), i32(sW)))
    return gx


# =========================================================================== activations
def _elementwise_kernel(name, sfx, n, arrays):
    """The kernel ``name`` of activation.cu and the number of grid items for ``n`` elements:
    with the untimed ``relu_vec16``, its ``_vec`` version (16 bytes per load, one thread per
    16 bytes) when every array starts on a 16-byte boundary (CuPy's allocations do; a view
    may not); else the plain one (one element per thread, as the H200 timed)."""
    if config.current().tries("relu_vec16") and all(a.data.ptr % 16 == 0 for a in arrays):
        width = 16 // arrays[0].dtype.itemsize
        return runtime.kernel("activation", f"{name}_vec_{sfx}"), max(n // width, n % width)
    return runtime.kernel("activation", f"{name}_{sfx}"), n


def relu_forward(x):
    """``max(x, 0)``."""
    op = "relu_forward"
    x = checks.operand(op, x, "input")
    sfx = checks.suffix(op, x.dtype, "input")
    y = runtime.cupy.empty(x.shape, dtype=x.dtype)
    kernel, items = _elementwise_kernel("relu_forward", sfx, x.size, (x, y))
    runtime.launch_1d(kernel, items, (x, y, np.int64(x.size)))
    return y


def relu_backward(gy, y):
    """``gy * [y > 0]``."""
    op = "relu_backward"
    gy = checks.operand(op, gy, "output gradient")
    y = checks.operand(op, y, "output", gy.dtype)
    if gy.shape != y.shape:
        raise ValueError(f"{op}: output gradient {gy.shape} and output {y.shape} differ in shape")
    sfx = checks.suffix(op, gy.dtype, "output gradient")
    gx = runtime.cupy.empty(gy.shape, dtype=gy.dtype)
    kernel, items = _elementwise_kernel("relu_backward", sfx, gy.size, (gy, y, gx))
    runtime.launch_1d(kernel, items, (gy, y, gx, np.int64(gy.size)))
    return gx


# =========================================================================== loss
def _loss_operands(op, x, t, w, what):
    """(x, t, w, N, C, S) validated: x float (N, C, *rest), t int64 (N, *rest), w (C,) or None."""
    x = checks.operand(op, x, what)
    if x.ndim < 2:
        raise ValueError(f"{op}: {what} must be (N, C, ...), got shape {x.shape}")
    N, C = x.shape[:2]
    S = int(np.prod(x.shape[2:], dtype=np.int64))
    if C < 1:
        raise ValueError(f"{op}: {what} {x.shape} has no classes")
    t = checks.device_array(t)
    if t.dtype.kind not in "iu":
        raise ValueError(f"{op}: target must hold integer class indices, got dtype {t.dtype}")
    expected = (N,) + x.shape[2:]
    if t.shape != expected:
        raise ValueError(f"{op}: target shape {t.shape} does not match {what} {x.shape} "
                         f"(expected {expected})")
    t = checks.contiguous(t.astype(np.int64, copy=False))
    if w is not None:
        w = checks.contiguous(checks.device_array(w).astype(x.dtype, copy=False))
        if w.shape != (C,):
            raise ValueError(f"{op}: class weight must have shape ({C},), got {w.shape}")
    checks.index_range(op, f"{what} {x.shape}", size=x.size, classes=C, positions=N * S)
    return x, t, w, N, C, S


def softmax_cross_entropy_forward(x, t, w, check_target=True, reduction="none"):
    """Weighted cross-entropy of logits ``x`` (N, C, ...) and integer targets t.

    Returns ``(loss, wt, p)``: ``loss = -w[t] * log softmax(x)[t]`` and ``wt = w[t]`` of shape
    ``t.shape``, and ``p = softmax(x)``. With ``reduction="sum"`` loss and wt are their sums
    (0-d), with ``"mean"`` loss is ``sum loss / sum wt``: CuPy sums of the per-position
    values, or, with the untimed ``xent_sums``, no per-position values and one more launch
    that adds the blocks' partial sums in a fixed order. A target outside ``[0, C)`` raises
    ValueError (the kernel's flag or count, read back: one sync); with
    ``check_target=False`` (the caller checked) it is not read, and such a position would
    get NaN loss.
    """
    op = "softmax_cross_entropy_forward"
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"{op}: reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    x, t, w, N, C, S = _loss_operands(op, x, t, w, "logits")
    sfx = checks.suffix(op, x.dtype, "logits")
    p = runtime.cupy.empty(x.shape, dtype=x.dtype)
    reduce = reduction != "none"
    if t.size == 0:
        if not reduce:
            return runtime.cupy.empty(t.shape, dtype=x.dtype), runtime.cupy.empty(t.shape, dtype=x.dtype), p
        total, wsum = runtime.cupy.zeros((), dtype=x.dtype), runtime.cupy.zeros((), dtype=x.dtype)
        return (total / wsum if reduction == "mean" else total), wsum, p
    kernel = runtime.kernel("loss", f"softmax_xent_forward_{sfx}")
    if not reduce or not config.current().tries("xent_sums"):
        loss = runtime.cupy.empty(t.shape, dtype=x.dtype)
        wt = runtime.cupy.empty(t.shape, dtype=x.dtype)
        bad = runtime.cupy.zeros((1,), dtype=np.int32)
        runtime.launch_1d(kernel, t.size, (x, t, x if w is None else w, i32(w is not None), loss, wt,
                                    p, bad, p, i32(0), i32(N), i32(C), i32(S)),
                   threads=SCE_THREADS)
        if check_target and int(bad[0]):   # one flag read (a sync) instead of a min/max pass
            raise ValueError(f"{op}: target values must be in [0, {C}), found values outside "
                             f"(target shape {t.shape})")
        if reduce:                      # the path the H200 timed: CuPy's sums
            total, wsum = loss.sum(), wt.sum()
            return (total / wsum if reduction == "mean" else total), wsum, p
        return loss, wt, p
    blocks = min(planner.cdiv(t.size, SCE_THREADS), 65535)          # as _launch_1d's grid
    partial = runtime.cupy.empty((blocks, 3), dtype=x.dtype)
    out = runtime.cupy.empty((3,), dtype=x.dtype)
    runtime.launch_1d(kernel, t.size, (x, t, x if w is None else w, i32(w is not None), p, p, p,
                                runtime.i32_scratch(), partial, i32(1), i32(N), i32(C), i32(S)),
               threads=SCE_THREADS)
    runtime.kernel("loss", f"softmax_xent_reduce_{sfx}")(
        (1,), (SCE_THREADS,), (partial, i32(blocks), i32(reduction == "mean"), out))
    if check_target and int(out[2]):   # the bad targets' count (a sync)
        raise ValueError(f"{op}: target values must be in [0, {C}), found values outside "
                         f"(target shape {t.shape})")
    return out[0], out[1], p


def softmax_cross_entropy_backward(p, t, w, g):
    """``dL/dx = g * w[t] * (p - onehot(t))``; ``g`` of ``t``'s shape, possibly a broadcast view
    of one value (read once, never materialised)."""
    op = "softmax_cross_entropy_backward"
    p, t, w, N, C, S = _loss_operands(op, p, t, w, "probabilities")
    sfx = checks.suffix(op, p.dtype, "probabilities")
    g = checks.device_array(g)
    if g.dtype.kind != "f":
        raise ValueError(f"{op}: upstream gradient must be floating, got dtype {g.dtype}")
    if g.size == 1 or (g.size > 0 and all(s == 0 for s in g.strides)):
        if g.size != 1 and g.shape != t.shape:
            raise ValueError(f"{op}: upstream gradient {g.shape} does not match target {t.shape}")
        # One value for every position (e.g. broadcast_to(g * scale, t.shape) of a mean):
        # a one-element view of it, so the broadcast is never materialised.
        g = g[(slice(0, 1),) * g.ndim]
        g, g_step = checks.contiguous(g.astype(p.dtype, copy=False)), 0
    else:
        if g.shape != t.shape:
            raise ValueError(f"{op}: upstream gradient {g.shape} does not match target {t.shape}")
        g, g_step = checks.contiguous(g.astype(p.dtype, copy=False)), 1
    gx = runtime.cupy.empty(p.shape, dtype=p.dtype)
    runtime.launch_1d(runtime.kernel("loss", f"softmax_xent_backward_{sfx}"), p.size,
               (p, t, p if w is None else w, i32(w is not None), g, i32(g_step), gx,
                i32(N), i32(C), i32(S)))
    return gx


# =========================================================================== optimizers
# Each updates the parameter and its state in place, with PyTorch's exact arithmetic order;
# the scalar coefficients are computed here in double precision, as numpy_backend does in
# Python, and passed in the parameter's dtype.
def _grad_operand(op, g, p):
    g = checks.device_array(g)
    if g.shape != p.shape:
        raise ValueError(f"{op}: gradient {g.shape} and parameter {p.shape} differ in shape")
    if g.dtype.kind != "f":
        raise ValueError(f"{op}: gradient must be floating, got dtype {g.dtype}")
    return checks.contiguous(g.astype(p.dtype, copy=False))


def adam_update(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    """Adam: ``m <- lerp(m, g, 1-b1)``, ``v <- b2 v + (1-b2) g^2``,
    ``p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``."""
    op = "adam_update"
    p = checks.inplace(op, p, "parameter")
    m = checks.inplace(op, m, "first moment", p)
    v = checks.inplace(op, v, "second moment", p)
    g = _grad_operand(op, g, p)
    sfx = checks.suffix(op, p.dtype, "parameter")
    T = checks.SCALAR[sfx]
    runtime.launch_1d(runtime.kernel("optim", f"adam_update_{sfx}"), p.size,
               (p, g, m, v, np.int64(p.size), T(weight_decay), i32(bool(weight_decay)),
                T(1 - beta1), T(beta2), T(1 - beta2), T(math.sqrt(1 - beta2 ** step)), T(eps),
                T(lr / (1 - beta1 ** step))))


def sgd_update(p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, first):
    """SGD: ``b <- mu b + (1-dampening) g`` (``b <- g`` on the first step); ``p <- p - lr d``
    with ``d = g + mu b`` (Nesterov) or ``d = b``. ``buf`` is None without momentum."""
    op = "sgd_update"
    p = checks.inplace(op, p, "parameter")
    if momentum:
        if buf is None:
            raise ValueError(f"{op}: momentum {momentum} needs a momentum buffer, got None")
        buf = checks.inplace(op, buf, "momentum buffer", p)
    g = _grad_operand(op, g, p)
    sfx = checks.suffix(op, p.dtype, "parameter")
    T = checks.SCALAR[sfx]
    runtime.launch_1d(runtime.kernel("optim", f"sgd_update_{sfx}"), p.size,
               (p, g, buf if momentum else p, np.int64(p.size), T(lr), T(weight_decay),
                i32(bool(weight_decay)), T(momentum), T(1 - dampening), i32(bool(momentum)),
                i32(bool(nesterov)), i32(bool(first))))


def adagrad_update(p, g, s, *, clr, eps, weight_decay):
    """AdaGrad: ``s <- s + g^2``, ``p <- p - clr * g / (sqrt(s) + eps)``."""
    op = "adagrad_update"
    p = checks.inplace(op, p, "parameter")
    s = checks.inplace(op, s, "sum of squares", p)
    g = _grad_operand(op, g, p)
    sfx = checks.suffix(op, p.dtype, "parameter")
    T = checks.SCALAR[sfx]
    runtime.launch_1d(runtime.kernel("optim", f"adagrad_update_{sfx}"), p.size,
               (p, g, s, np.int64(p.size), T(clr), T(eps), T(weight_decay),
                i32(bool(weight_decay))))
