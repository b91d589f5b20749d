"""Ops that only move values around: reshape, concatenation, indexing."""
from ..tensor import make_result
from ._util import same_device


def reshape(x, shape):
    """Same values, new shape;  the gradient is reshaped back."""
    shape = tuple(int(s) for s in shape)
    try:
        y = x.data.reshape(shape)
    except ValueError:
        raise ValueError(f"cannot reshape a tensor of shape {x.shape} into {shape}") from None
    return make_result(y, (x,), lambda g: (g.reshape(x.shape),))


def cat(tensors, dim=0):
    """Concatenate along ``dim``;  each input's gradient is its slice of the output gradient.

    Shapes must agree on every axis but ``dim`` (in the U-Net: channels of the skip
    connection and of the upsampled path, ``dim=1``).
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat() needs at least one tensor")
    xp = same_device(*tensors).xp
    ndim = tensors[0].ndim
    if not -ndim <= dim < ndim:
        raise ValueError(f"cat(): dim {dim} out of range for {ndim}-D tensors")
    dim %= ndim
    for t in tensors:
        if t.ndim != ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, tensors[0].shape))
                                 if i != dim):
            raise ValueError("cat(): shapes must match except along dim "
                             f"{dim}, got {[t.shape for t in tensors]}")
    bounds, total = [], 0
    for t in tensors:
        bounds.append((total, total + t.shape[dim]))
        total += t.shape[dim]

    def backward(g):
        index = [slice(None)] * ndim
        grads = []
        for lo, hi in bounds:
            index[dim] = slice(lo, hi)
            grads.append(g[tuple(index)])
        return grads
    return make_result(xp.concatenate([t.data for t in tensors], axis=dim), tensors, backward)


def getitem(x, index):
    """``y = x[index]`` (basic slicing or an integer array);  dx = scatter-add of dy."""
    xp = x.backend.xp
    y = x.data[index]

    def backward(g):
        gx = xp.zeros(x.shape, dtype=g.dtype)
        xp.add.at(gx, index, g)
        return (gx,)
    return make_result(y, (x,), backward)
