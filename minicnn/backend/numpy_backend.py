"""The NumPy backend: every primitive minicnn needs, on the CPU.

A backend is one module that defines the names listed in ``minicnn.backend.PRIMITIVES``.
The autograd layer (``minicnn.functional``) calls only these, plus plain elementwise glue
through ``xp`` (the backend's array namespace: NumPy here, CuPy on the GPU).

Shapes follow PyTorch: activations are NCHW, a convolution weight is ``(C_out, C_in, kH, kW)``.
Everything keeps the input's dtype (float32 stays float32).

The convolution is the classic *im2col* formulation: a strided view exposes every
``C_in x kH x kW`` window of the padded input without copying, one copy lays the windows
out as the columns of a matrix, and one matrix product with the flattened weight does all the
multiply-adds::

    cols[n, (c, i, j), (p, q)] = x_pad[n, c, p*sH + i, q*sW + j]
    y[n, o, (p, q)]            = sum_k W[o, k] * cols[n, k, (p, q)]        (+ b[o])

Threads. The memory-bound elementwise primitives (ReLU, max-pool, the loss) would run on one
core, since a NumPy ufunc is single-threaded; on large batches they split the batch over a few
threads instead (``_over_batch``: NumPy releases the GIL inside its loops), which brings the
large ones to PyTorch's speed (small tensors stay on one thread: waking a thread costs more
than it saves). The convolutions split their work too (``_over_parts``): a few images (or
input channels) per task, each task's im2col copy and matrix product on one thread, with BLAS
itself limited to one thread meanwhile. Letting BLAS thread each product instead loses badly
when another process wants the same cores: its threads meet at a barrier after every block,
so one thread that loses its core stalls the others (benchmarks/NOTES.md, entry 25). Set
``MINICNN_NUM_THREADS`` to choose how many threads (default: the cores this process may use,
at most 8); it is read once, at import.

Precision. ``set_precision("tf32")`` makes the three convolution primitives round their
float32 operands to TF32 first (``to_tf32``: 10 mantissa bits, as a tensor core's
``cvt.rna.tf32.f32``), and sum in fp32 as before: what training on tensor cores does to the
numbers (the GPU sums in another order), emulated on the CPU, so that its cost in accuracy can
be measured without a GPU. ``"fp32"`` (the default) leaves them exact; float64 is never
rounded.
"""
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import blas_threads

name = "numpy"
device = "cpu"
xp = np

# memory-bound loops stop gaining beyond a few threads, so the default is capped at 8
_THREADS = max(1, int(os.environ.get("MINICNN_NUM_THREADS", 0)) or min(8, len(
    getattr(os, "sched_getaffinity", lambda _: range(os.cpu_count() or 1))(0))))
_PARALLEL_MIN_ELEMENTS = 1 << 19    # below ~0.5 M elements, threads cost more than they save
PRECISIONS = ("fp32", "tf32")
_precision = "fp32"                 # of the convolutions' products (set_precision)
_PARTS_PER_THREAD = 4               # a convolution's tasks per thread (see _over_parts)
_pool = None


def _thread_pool():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="minicnn")
    return _pool


def _over_batch(fn, a):
    """Call ``fn(rows)`` on consecutive slices of the first axis of ``a`` (the batch) that
    together cover it: in a few threads when ``a`` is large, else once (``fn(...)`` for a 0-d
    ``a``). ``fn`` writes its part of preallocated outputs, so the parts never overlap."""
    if a.ndim == 0:
        fn(Ellipsis)
        return
    n = len(a)
    parts = min(_THREADS, n) if a.size >= _PARALLEL_MIN_ELEMENTS else 1
    if parts <= 1:
        fn(slice(0, n))
        return
    bounds = [n * k // parts for k in range(parts + 1)]
    futures = [_thread_pool().submit(fn, slice(lo, hi))
               for lo, hi in zip(bounds[1:-1], bounds[2:])]
    fn(slice(bounds[0], bounds[1]))             # the calling thread does the first part
    for f in futures:
        f.result()


def _over_parts(fn, n):
    """Call ``fn(rows)`` on consecutive slices of ``range(n)`` that together cover it: a
    convolution's tasks, each an im2col copy and a matrix product on one thread (BLAS limited to
    one thread meanwhile). There are ``_PARTS_PER_THREAD`` times more tasks than threads and
    each thread takes the next one when it is done, so a thread that loses its core to another
    process simply does fewer of them. ``fn`` writes its part of preallocated outputs. One
    thread, or a BLAS whose threads are out of reach, gives one call ``fn(slice(0, n))``."""
    parts = min(n, _THREADS * _PARTS_PER_THREAD)
    if _THREADS == 1 or parts <= 1 or not blas_threads.available():
        fn(slice(0, n))
        return
    bounds = [n * k // parts for k in range(parts + 1)]
    with blas_threads.limit(1):
        futures = [_thread_pool().submit(fn, slice(lo, hi))
                   for lo, hi in zip(bounds[:-1], bounds[1:])]
        for f in futures:
            f.result()


def set_precision(precision):
    """The convolutions' precision from now on: ``"fp32"`` (exact float32 operands, the
    default) or ``"tf32"`` (float32 operands rounded by ``to_tf32`` first). Returns the
    previous one."""
    global _precision
    if precision not in PRECISIONS:
        raise ValueError(f"set_precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    previous, _precision = _precision, precision
    return previous


def to_tf32(a):
    """``a`` (float32) rounded to TF32 as ``cvt.rna.tf32.f32`` does: the 13 low mantissa bits
    dropped after adding half of the last kept bit (to nearest, ties away from zero; a carry
    into the exponent is the correct rounding up); infinities and NaNs kept. TF32 has fp32's
    8 exponent bits and 10 of its 23 mantissa bits, so the relative error is at most 2^-11.
    Other dtypes are returned as they are."""
    if a.dtype != np.float32:
        return a
    u = np.ascontiguousarray(a).view(np.uint32)
    r = (u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return np.where((u & 0x7F800000) == 0x7F800000, u, r).view(np.float32)


def _operands(*arrays):
    """The convolution's operands as the precision in force wants them."""
    return tuple(to_tf32(a) for a in arrays) if _precision == "tf32" else arrays


def asarray(a, dtype=None):
    """``a`` as an array of this backend (a copy only where needed)."""
    return np.asarray(a, dtype=dtype)


def to_host(a):
    """A NumPy array holding ``a``'s values."""
    return np.asarray(a)


# --------------------------------------------------------------------------- convolution
def _pad(x, padding):
    pH, pW = padding
    if pH == 0 and pW == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (pH, pH), (pW, pW)))


def _windows(xp_, kernel, stride, out_hw):
    """Read-only view ``(N, C, kH, kW, Ho, Wo)`` of every window of the padded input."""
    N, C = xp_.shape[:2]
    (kH, kW), (sH, sW), (Ho, Wo) = kernel, stride, out_hw
    sn, sc, sh, sw = xp_.strides
    return as_strided(xp_, shape=(N, C, kH, kW, Ho, Wo),
                      strides=(sn, sc, sh, sw, sh * sH, sw * sW), writeable=False)


# The column matrix is the largest temporary of a convolution (kH*kW times the input part). A
# fresh array of that size costs more in page faults than the copy itself, so it lives in a
# scratch buffer that is reused by every call: one per thread (a task of _over_parts writes
# its own), so the backend as a whole is still not thread-safe.
_scratch = threading.local()


def _scratch_array(shape, dtype):
    """A scratch array of ``shape`` (contents undefined, valid until this thread's next call)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if getattr(_scratch, "buffer", None) is None or _scratch.buffer.nbytes < nbytes:
        _scratch.buffer = np.empty(nbytes, np.uint8)
    return _scratch.buffer[:nbytes].view(dtype).reshape(shape)


def _im2col(x, kernel, stride, padding, out_hw, channels_first=False):
    """The column matrix of ``x``: ``(N, C*kH*kW, Ho*Wo)``, or ``(C*kH*kW, N*Ho*Wo)`` with
    ``channels_first`` (one copy, into the scratch buffer)."""
    N, C = x.shape[:2]
    (kH, kW), (Ho, Wo) = kernel, out_hw
    win = _windows(_pad(x, padding), kernel, stride, out_hw)     # (N, C, kH, kW, Ho, Wo)
    if channels_first:
        win = win.transpose(1, 2, 3, 0, 4, 5)
    cols = _scratch_array(win.shape, x.dtype)
    np.copyto(cols, win)
    K = C * kH * kW
    return cols.reshape((K, N * Ho * Wo) if channels_first else (N, K, Ho * Wo))


def conv2d_forward(x, w, b, stride, padding, relu=False):
    """``y = W * x + b`` (cross-correlation). x ``(N,C,H,W)``, w ``(O,C,kH,kW)`` -> ``(N,O,Ho,Wo)``.
    With ``relu``, ``max(y, 0)`` as relu_forward (the CUDA kernels can fuse it into the store)."""
    x, w = _operands(x, w)
    N, C, H, W = x.shape
    O, _, kH, kW = w.shape
    Ho = (H + 2 * padding[0] - kH) // stride[0] + 1
    Wo = (W + 2 * padding[1] - kW) // stride[1] + 1
    y = np.empty((N, O, Ho * Wo), x.dtype)                   # contiguous NCHW
    w_mat = w.reshape(O, -1)

    def part(n):        # images n: their columns, one product, bias and ReLU while warm
        cols = _im2col(x[n], (kH, kW), stride, padding, (Ho, Wo))
        yn = np.matmul(w_mat, cols, out=y[n])
        if b is not None:
            yn += b.reshape(1, O, 1)
        if relu:
            np.maximum(yn, 0, out=yn)
    _over_parts(part, N)
    return y.reshape(N, O, Ho, Wo)


def conv2d_backward_input(gy, w, x_shape, stride, padding, bias=None):
    """``dL/dx``: every output gradient flows back through the kernel onto the input pixels.

    ``gx_pad[n, c, p*sH + i, q*sW + j] += sum_o W[o, c, i, j] * gy[n, o, p, q]``

    ``bias`` (C,), when given, is added to every ``gx[n, c]``: this primitive is also the
    transposed convolution's forward, whose bias the CUDA kernels add in the same store.

    With stride 1 this is a "full" correlation of ``gy`` with the kernel flipped in space and
    with in/out channels swapped, i.e. one more forward convolution (padding ``k - 1 - p``).
    Otherwise: one matrix product ``W^T gy`` and one strided add per kernel offset (col2im).
    """
    gy, w = _operands(gy, w)
    N, C, H, W = x_shape
    O, _, kH, kW = w.shape
    _, _, Ho, Wo = gy.shape
    sH, sW = stride
    pH, pW = padding
    if (sH, sW) == (1, 1) and pH < kH and pW < kW:
        w_flip = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        return conv2d_forward(gy, w_flip, bias, (1, 1), (kH - 1 - pH, kW - 1 - pW))
    gx = np.zeros((N, C, H + 2 * pH, W + 2 * pW), dtype=gy.dtype)
    w_t = w.reshape(O, -1).T

    def part(n):        # images n
        gcols = np.matmul(w_t, gy[n].reshape(-1, O, Ho * Wo))      # (n, C*kH*kW, Ho*Wo)
        gcols = gcols.reshape(-1, C, kH, kW, Ho, Wo)
        for i in range(kH):
            for j in range(kW):
                gx[n, :, i:i + sH * Ho:sH, j:j + sW * Wo:sW] += gcols[:, :, i, j]
    _over_parts(part, N)
    gx = gx[:, :, pH:pH + H, pW:pW + W]
    return gx if bias is None else gx + bias.reshape(1, C, 1, 1)


def conv2d_backward_weight(gy, x, w_shape, stride, padding):
    """``dL/dW[o, c, i, j] = sum_{n,p,q} gy[n, o, p, q] * x_pad[n, c, p*sH + i, q*sW + j]``.

    One matrix product over all images and pixels at once: ``gy`` as ``(O, N*Ho*Wo)`` times
    the columns laid out as ``(C*kH*kW, N*Ho*Wo)``, transposed; one per group of input
    channels ``c`` (its columns, its slice ``dW[:, c]``), so the parts never add up and the
    sum over the images is BLAS's, in one order, as with one product.
    """
    gy, x = _operands(gy, x)
    O, C, kH, kW = w_shape
    N, _, Ho, Wo = gy.shape
    gy_t = gy.reshape(N, O, Ho * Wo).transpose(1, 0, 2).reshape(O, N * Ho * Wo)
    gw = np.empty((O, C, kH * kW), gy.dtype)

    def part(c):        # input channels c
        cols = _im2col(x[:, c], (kH, kW), stride, padding, (Ho, Wo), channels_first=True)
        np.matmul(gy_t, cols.T, out=gw[:, c].reshape(O, -1))
    _over_parts(part, C)
    return gw.reshape(w_shape)


# --------------------------------------------------------------------------- pooling
def maxpool2d_forward(x, kernel, stride):
    """Max over each window; also returns, per output, the window offset ``i*kW + j`` of the max
    (the first one in row-major order on ties; NaN counts as the max, as in ``argmax``)."""
    N, C, H, W = x.shape
    (kH, kW), (sH, sW) = kernel, stride
    Ho, Wo = (H - kH) // sH + 1, (W - kW) // sW + 1
    itype = np.uint8 if kH * kW <= 256 else np.int32
    if (kH, kW) == (sH, sW) and kH * kW <= 16:
        # non-overlapping windows (the U-Net's 2x2/2): kH*kW strided views, one per offset;
        # the max is a chain of np.maximum (NaN propagates), the offset the first view equal
        # to it (found last to first, so that the first wins)
        y = np.empty((N, C, Ho, Wo), x.dtype)
        idx = np.empty((N, C, Ho, Wo), itype)

        def part(b):
            views = [x[b, :, i:Ho * kH:kH, j:Wo * kW:kW] for i in range(kH) for j in range(kW)]
            yb, ib = y[b], idx[b]
            yb[...] = views[0]
            for v in views[1:]:
                np.maximum(yb, v, out=yb)
            ib[...] = len(views) - 1
            for k in range(len(views) - 2, -1, -1):
                np.copyto(ib, k, where=views[k] == yb)
        _over_batch(part, x)
        if not np.isnan(y).any():
            return y, idx
        # a NaN in a window matches no view: fall through to argmax for the exact offsets
    if (kH, kW) == (sH, sW):  # non-overlapping windows: a reshape, no copy of the windows
        win = x[:, :, :Ho * kH, :Wo * kW].reshape(N, C, Ho, kH, Wo, kW).transpose(0, 1, 2, 4, 3, 5)
    else:
        win = _windows(x, kernel, stride, (Ho, Wo)).transpose(0, 1, 4, 5, 2, 3)
    win = win.reshape(N, C, Ho, Wo, kH * kW)
    idx = win.argmax(axis=-1).astype(itype)
    y = np.take_along_axis(win, idx[..., None].astype(np.intp), axis=-1)[..., 0]
    return y, idx


def maxpool2d_backward(gy, idx, x_shape, kernel, stride):
    """Route each output gradient to the input position that held the max."""
    (kH, kW), (sH, sW) = kernel, stride
    N, C, Ho, Wo = gy.shape
    if (kH, kW) == (sH, sW) and x_shape[2:] == (Ho * kH, Wo * kW):
        # windows tile the input exactly (the U-Net's 2x2/2): each input pixel belongs to one
        # window, so every gradient element is written once, through a view of gx
        gx = np.empty(x_shape, dtype=gy.dtype)
        view = gx.reshape(N, C, Ho, kH, Wo, kW)

        def part(b):
            for i in range(kH):
                for j in range(kW):
                    np.multiply(gy[b], idx[b] == i * kW + j, out=view[b, :, :, i, :, j])
        _over_batch(part, gx)
        return gx
    gx = np.zeros(x_shape, dtype=gy.dtype)
    for i in range(kH):
        for j in range(kW):
            gx[:, :, i:i + sH * Ho:sH, j:j + sW * Wo:sW] += np.where(idx == i * kW + j, gy, 0)
    return gx


# --------------------------------------------------------------------------- activations
def relu_forward(x):
    """``max(x, 0)``."""
    y = np.empty_like(x)
    _over_batch(lambda b: np.maximum(x[b], 0, out=y[b]), x)
    return y


def relu_backward(gy, y):
    """``gy * [y > 0]``."""
    if gy.shape != y.shape:     # as the CUDA backend
        raise ValueError(f"relu_backward: output gradient {gy.shape} and output {y.shape} "
                         "differ in shape")
    gx = np.empty(y.shape, gy.dtype)
    _over_batch(lambda b: np.multiply(gy[b], y[b] > 0, out=gx[b]), y)
    return gx


# --------------------------------------------------------------------------- loss
def softmax_cross_entropy_forward(x, t, w, check_target=True, reduction="none"):
    """Weighted cross-entropy of logits ``x`` (N, C, ...) and integer targets t.

    Returns ``(loss, wt, p)``: ``loss = -w[t] * log softmax(x)[t]`` and ``wt = w[t]`` of shape
    ``t.shape``, and the probabilities ``p = softmax(x)`` kept for the backward pass.
    Uses the stable ``log softmax = x - max - log(sum(exp(x - max)))``. With
    ``reduction="sum"`` loss and wt are their sums (0-d arrays), with ``"mean"`` loss is
    ``sum loss / sum wt`` (PyTorch's weighted mean); the CUDA backend can add them up in
    its kernels instead of storing every position's (its untimed ``xent_sums``).
    A target outside ``[0, C)`` raises ValueError; ``check_target=False`` is for a caller that
    has checked already (``functional.cross_entropy``), and saves the CUDA backend a sync.
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"softmax_cross_entropy_forward: reduction must be 'none', 'sum' or "
                         f"'mean', got {reduction!r}")
    if check_target and t.size and (t.min() < 0 or t.max() >= x.shape[1]):
        raise ValueError(f"softmax_cross_entropy_forward: target values must be in "
                         f"[0, {x.shape[1]}), found values outside (target shape {t.shape})")
    loss = np.empty(t.shape, x.dtype)
    wt = np.empty(t.shape, x.dtype)
    p = np.empty_like(x)

    def part(b):        # the images b of the batch (every position is independent)
        xb, tb = x[b], t[b]
        z = xb - xb.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        logp_t = np.take_along_axis(z, tb[:, None], axis=1)[:, 0] - np.log(s[:, 0])
        wt[b] = 1 if w is None else w[tb]
        np.multiply(-wt[b], logp_t, out=loss[b])
        np.divide(e, s, out=p[b])
    _over_batch(part, x)
    if reduction == "none":
        return loss, wt, p
    total, wsum = np.asarray(loss.sum()), np.asarray(wt.sum())
    with np.errstate(invalid="ignore", divide="ignore"):    # an empty batch: NaN, as PyTorch
        return (total / wsum if reduction == "mean" else total), wsum, p


def softmax_cross_entropy_backward(p, t, w, g):
    """``dL/dx = g * w[t] * (p - onehot(t))``.

    ``g`` is the upstream gradient per position, of ``t``'s shape (possibly a broadcast view of
    one value, as for a mean or sum reduction).
    """
    gx = np.empty_like(p)

    def part(b):
        tb = t[b]
        scale = g[b] if w is None else g[b] * w[tb]
        gx[b] = p[b]
        np.put_along_axis(gx[b], tb[:, None], np.take_along_axis(p[b], tb[:, None], axis=1) - 1,
                          axis=1)
        gx[b] *= np.expand_dims(scale, 1)
    _over_batch(part, p)
    return gx


# --------------------------------------------------------------------------- optimizers
# Each updates the parameter and its state in place, with PyTorch's exact arithmetic order.
def adam_update(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    """Adam: ``m <- lerp(m, g, 1-b1)``, ``v <- b2 v + (1-b2) g^2``,
    ``p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``."""
    def part(b):    # rows b of every array (elementwise: the split changes no number)
        pb, gb, mb, vb = p[b], g[b], m[b], v[b]
        if weight_decay:
            gb = gb + weight_decay * pb
        mb += (1 - beta1) * (gb - mb)
        vb *= beta2
        vb += (1 - beta2) * (gb * gb)
        denom = np.sqrt(vb) / math.sqrt(1 - beta2 ** step) + eps
        pb -= (lr / (1 - beta1 ** step)) * (mb / denom)
    _over_batch(part, p)


def sgd_update(p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, first):
    """SGD: ``b <- mu b + (1-dampening) g`` (``b <- g`` on the first step); ``p <- p - lr d``
    with ``d = g + mu b`` (Nesterov) or ``d = b``. ``buf`` is None without momentum."""
    if weight_decay:
        g = g + weight_decay * p
    if momentum:
        if first:
            buf[...] = g
        else:
            buf *= momentum
            buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g


def adagrad_update(p, g, s, *, clr, eps, weight_decay):
    """AdaGrad: ``s <- s + g^2``, ``p <- p - clr * g / (sqrt(s) + eps)``."""
    if weight_decay:
        g = g + weight_decay * p
    s += g * g
    p -= clr * g / (np.sqrt(s) + eps)
