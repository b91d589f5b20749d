"""Segmentation losses on logits ``(N, C)`` or ``(N, C, H, W)`` and integer targets.

Targets hold class indices in ``[0, C)``, shape ``(N,)`` or ``(N, H, W)``: an integer array or
an integer Tensor.
"""
from ..tensor import Tensor, make_result
from . import activation, arithmetic
from ._util import check_float

REDUCTIONS = ("mean", "sum", "none")


def _check_logits_target(logits, target, op):
    """Validate and return the target as an integer array on the logits' device."""
    check_float(logits, f"{op} logits")
    if logits.ndim < 2:
        raise ValueError(f"{op}: logits must be (N, C) or (N, C, H, W), got shape {logits.shape}")
    bk = logits.backend
    t = target.data if isinstance(target, Tensor) else target
    if not hasattr(t, "dtype"):
        raise ValueError(f"{op}: target must be an integer array or Tensor, "
                         f"got {type(target).__name__}")
    if t.dtype.kind not in "iu":
        raise ValueError(f"{op}: target must hold integer class indices, got dtype {t.dtype}")
    expected = (logits.shape[0],) + logits.shape[2:]
    if tuple(t.shape) != expected:
        raise ValueError(f"{op}: target shape {tuple(t.shape)} does not match logits "
                         f"{logits.shape} (expected {expected})")
    C = logits.shape[1]
    if t.size:
        # Checked where t lives: a host array (the usual case: masks from the data loader) is
        # checked before its upload, so a GPU step does not wait for a device reduction.
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= C:
            raise ValueError(f"{op}: target values must be in [0, {C}), found values in "
                             f"[{lo}, {hi}]")
    return bk.asarray(t).astype(bk.xp.int64, copy=False)


def _class_weight(weight, logits, op):
    """The class weights as an array of the logits' dtype and device (or None)."""
    if weight is None:
        return None
    w = weight.data if isinstance(weight, Tensor) else weight
    w = logits.backend.asarray(w, dtype=logits.dtype)
    if tuple(w.shape) != (logits.shape[1],):
        raise ValueError(f"{op}: weight must have one value per class, shape "
                         f"({logits.shape[1]},), got {tuple(w.shape)}")
    return w


def _check_reduction(reduction, op):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def one_hot(t, num_classes, dtype, xp):
    """``y[n, c, ...] = 1 if t[n, ...] == c else 0`` (class axis 1, as the logits)."""
    classes = xp.arange(num_classes).reshape((1, num_classes) + (1,) * (t.ndim - 1))
    return (t[:, None] == classes).astype(dtype)


def cross_entropy(logits, target, weight=None, reduction="mean"):
    """Softmax cross-entropy with optional class weights, as PyTorch's ``cross_entropy``.

    Per position (n, and pixel): ``l = -w[t] log softmax(x)[t]``, with the stable
    ``log softmax(x)_c = x_c - m - log sum_k e^{x_k - m}``, ``m = max_k x_k``.
    ``reduction='mean'`` is the weighted mean ``sum l / sum w[t]`` (PyTorch's semantics),
    ``'sum'`` is ``sum l``, ``'none'`` returns ``l`` of the target's shape.

    Gradient: ``dl/dx_c = w[t] (softmax(x)_c - [c == t])``, times the upstream gradient
    (``1 / sum w[t]`` for the mean).
    """
    _check_reduction(reduction, "cross_entropy")
    t = _check_logits_target(logits, target, "cross_entropy")
    w = _class_weight(weight, logits, "cross_entropy")
    bk = logits.backend
    if reduction == "none":
        loss, wt, p = bk.softmax_cross_entropy_forward(logits.data, t, w, check_target=False)
        return make_result(loss, (logits,),
                           lambda g: (bk.softmax_cross_entropy_backward(p, t, w, g),))
    # the sums in the backend's own kernels (the CUDA one: two launches, no per-position copy)
    total, wsum, p = bk.softmax_cross_entropy_forward(logits.data, t, w, check_target=False,
                                                      reduction=reduction)

    def backward(g):
        g = g * (1 / wsum) if reduction == "mean" else g     # (the order of earlier versions)
        return (bk.softmax_cross_entropy_backward(p, t, w, bk.xp.broadcast_to(g, t.shape)),)
    return make_result(bk.xp.asarray(total, dtype=logits.dtype), (logits,), backward)


def dice_loss(logits, target, smooth=1.0, classes=None, per_image=False):
    """Soft multi-class Dice loss on softmax probabilities.

    With ``p = softmax(x)`` and ``y = onehot(t)``, for each class ``c``::

        dice_c = (2 sum p_c y_c + s) / (sum p_c + sum y_c + s)

    sums over the batch and the pixels (or over the pixels of each image if ``per_image``,
    then averaged over images); ``loss = 1 - mean_{c in classes} dice_c``. ``classes`` picks
    the classes that count (default: all; the U-Net uses RV, Myo, LV = (1, 2, 3)); ``s``
    (``smooth``) keeps an absent class from dividing by zero.

    Gradient (through the softmax): ``d dice_c / d p_c = (2 y_c - dice_c) / (sum p_c +
    sum y_c + s)``; it is built here from the differentiable ops it is made of.
    """
    t = _check_logits_target(logits, target, "dice_loss")
    C = logits.shape[1]
    classes = list(range(C)) if classes is None else [int(c) for c in classes]
    if not classes or any(not 0 <= c < C for c in classes):
        raise ValueError(f"dice_loss: classes must be a non-empty subset of 0..{C - 1}, "
                         f"got {classes}")
    xp = logits.backend.xp
    p = activation.softmax(logits, dim=1)
    y = one_hot(t, C, logits.dtype, xp)
    axes = tuple(range(2, logits.ndim)) if per_image else (0,) + tuple(range(2, logits.ndim))
    inter = arithmetic.sum(p * Tensor(y), axes)
    denom = arithmetic.sum(p, axes) + Tensor(y.sum(axis=axes))
    dice = (inter * 2.0 + smooth) / (denom + smooth)          # (C,) or (N, C)
    dice = dice[..., classes] if len(classes) < C else dice
    return 1.0 - arithmetic.mean(dice)


def focal_loss(logits, target, gamma=2.0, weight=None, reduction="mean"):
    """Focal loss (Lin et al. 2017), multi-class, with optional class weights.

    Per position: ``l = -w[t] (1 - p_t)^gamma log p_t`` with ``p_t = softmax(x)[t]``;
    ``gamma = 0`` gives the cross-entropy. ``'mean'`` is ``sum l / sum w[t]`` as for
    ``cross_entropy``. It down-weights pixels that are already well classified.

    Gradient, with ``u = 1 - p_t``: ``dl/dlog p_t = -w[t] (u^gamma - gamma u^(gamma-1) p_t
    log p_t)``, then through the log-softmax; it is built from the differentiable ops.
    """
    _check_reduction(reduction, "focal_loss")
    if gamma < 0:
        raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma}")
    t = _check_logits_target(logits, target, "focal_loss")
    w = _class_weight(weight, logits, "focal_loss")
    xp = logits.backend.xp
    logp = activation.log_softmax(logits, dim=1)
    logp_t = arithmetic.sum(logp * Tensor(one_hot(t, logits.shape[1], logits.dtype, xp)), 1)
    p_t = arithmetic.exp(logp_t)
    wt = xp.ones(t.shape, dtype=logits.dtype) if w is None else w[t]
    # u = 1 - p_t; adding the smallest normal number changes no u > 0, but keeps u^(gamma-1)
    # finite where p_t rounds to 1 (there log p_t = 0 and the true gradient is 0, not NaN)
    u = (1.0 - p_t) + float(xp.finfo(logits.dtype).tiny)
    loss = -(Tensor(wt) * u ** float(gamma) * logp_t)
    if reduction == "none":
        return loss
    total = arithmetic.sum(loss)
    return total / float(wt.sum()) if reduction == "mean" else total
