"""Group normalisation (and its special cases, instance and layer normalisation).

The channels of each image are split into ``G`` groups of ``C/G`` consecutive channels; each
group of each image is normalised by its own mean and variance, then scaled and shifted per
channel. Nothing depends on the other images of the batch (unlike batch normalisation), so
training and evaluation compute the same function and there are no running statistics to
keep: a good fit for the small batches of segmentation. ``G = C`` is *instance* normalisation
(nnU-Net's default), ``G = 1`` normalises each image's whole feature map (layer norm).

The forward and backward passes are plain elementwise arithmetic and sums over the group
axes, written once with the backend's array namespace ``xp`` (NumPy or CuPy).
"""
from ..tensor import make_result
from ._util import check_float, check_rank, same_device


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """``y[n,c,h,w] = gamma[c] * xhat[n,c,h,w] + beta[c]``, with, for the group ``g`` of
    channel ``c`` and its ``M = (C/G)*H*W`` elements ``S = S(n, g)``:

        mu = (1/M) sum_S x,   var = (1/M) sum_S (x - mu)^2   (biased),
        sigma = sqrt(var + eps),   xhat = (x - mu) / sigma.

    x ``(N, C, H, W)``; ``C`` divisible by ``num_groups``; ``weight`` (gamma) and ``bias``
    (beta) ``(C,)`` or None (1 and 0). Gradients, with ``gh = g * gamma`` (the gradient that
    reaches ``xhat``) and means taken over the group S:

        dL/dx     = (gh - mean_S(gh) - xhat * mean_S(gh * xhat)) / sigma
        dL/dgamma = sum_{n,h,w} g * xhat,      dL/dbeta = sum_{n,h,w} g.

    (The two subtracted means are the gradient flowing through mu and through sigma: xhat
    has mean 0 and mean square ~1 over S whatever x is, so the part of ``gh`` that would
    change those two moments is projected out.)
    """
    check_rank(x, 4, "group_norm input", "(N, C, H, W)")
    check_float(x, "group_norm input")
    N, C, H, W = x.shape
    if not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm: num_groups must be a positive divisor of the "
                         f"{C} channels, got {num_groups!r}")
    if not eps > 0:
        raise ValueError(f"group_norm: eps must be > 0, got {eps!r}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            same_device(x, p)
            if p.shape != (C,) or p.dtype != x.dtype:
                raise ValueError(f"group_norm: {name} must have shape ({C},) and dtype "
                                 f"{x.dtype}, got {p.shape} {p.dtype}")
    xp = x.backend.xp
    G = num_groups
    xg = x.data.reshape(N, G, -1)                        # (N, G, M): one row per group
    mu = xg.mean(axis=2, keepdims=True)
    xc = xg - mu
    var = (xc * xc).mean(axis=2, keepdims=True)
    inv_sigma = 1 / xp.sqrt(var + x.dtype.type(eps))
    xhat = (xc * inv_sigma).reshape(N, C, H, W)
    y = xhat
    if weight is not None:
        y = y * weight.data.reshape(1, C, 1, 1)
    if bias is not None:
        y = y + bias.data.reshape(1, C, 1, 1)

    def backward(g):
        gh = g if weight is None else g * weight.data.reshape(1, C, 1, 1)
        ghg, xhg = gh.reshape(N, G, -1), xhat.reshape(N, G, -1)
        gx = (ghg - ghg.mean(axis=2, keepdims=True)
              - xhg * (ghg * xhg).mean(axis=2, keepdims=True)) * inv_sigma
        grads = [gx.reshape(N, C, H, W)]
        if weight is not None:
            grads.append((g * xhat).sum(axis=(0, 2, 3)) if weight.requires_grad else None)
        if bias is not None:
            grads.append(g.sum(axis=(0, 2, 3)) if bias.requires_grad else None)
        return tuple(grads)

    parents = (x,) + tuple(p for p in (weight, bias) if p is not None)
    return make_result(y, parents, backward)
