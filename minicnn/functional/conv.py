"""2-D convolution and transposed convolution (NCHW, PyTorch's weight layouts).

Notation: x ``(N, C, H, W)``, weight ``(O, C, kH, kW)``, stride ``(sH, sW)``, padding
``(pH, pW)``, x_pad the input with pH/pW zeros on each side.
"""
from ..tensor import make_result
from ._util import check_float, check_rank, pair, same_device


def _check_common(x, weight, bias, stride, padding, op):
    check_rank(x, 4, f"{op} input", "(N, C, H, W)")
    check_rank(weight, 4, f"{op} weight", "(C_out, C_in, kH, kW)" if op == "conv2d"
               else "(C_in, C_out, kH, kW)")
    tensors = (x, weight) if bias is None else (x, weight, bias)
    bk = same_device(*tensors)
    for t, name in zip(tensors, ("input", "weight", "bias")):
        check_float(t, f"{op} {name}")
        if t.dtype != x.dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype} but input has {x.dtype}")
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    if min(stride) < 1:
        raise ValueError(f"{op}: stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {padding}")
    return bk, stride, padding


def _check_bias(bias, channels, op):
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f"{op}: bias must have shape ({channels},), got {bias.shape}")


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """Cross-correlation, as PyTorch's ``conv2d``::

        y[n,o,p,q] = b[o] + sum_{c,i,j} W[o,c,i,j] * x_pad[n, c, p*sH + i, q*sW + j]
        Ho = (H + 2 pH - kH) // sH + 1,   Wo likewise

    Gradients, with g = dL/dy of shape ``(N, O, Ho, Wo)``:

    * ``dL/dx_pad[n,c,p*sH+i,q*sW+j] += sum_o W[o,c,i,j] g[n,o,p,q]`` (a transposed
      convolution of g with W), then the padding is cut off;
    * ``dL/dW[o,c,i,j] = sum_{n,p,q} g[n,o,p,q] x_pad[n,c,p*sH+i,q*sW+j]`` (correlation of
      the input with g);
    * ``dL/db[o] = sum_{n,p,q} g[n,o,p,q]``.
    """
    bk, stride, padding = _check_common(x, weight, bias, stride, padding, "conv2d")
    N, C, H, W = x.shape
    O, Cw, kH, kW = weight.shape
    if C != Cw:
        raise ValueError(f"conv2d: input has {C} channels but weight {weight.shape} expects {Cw}")
    _check_bias(bias, O, "conv2d")
    if H + 2 * padding[0] < kH or W + 2 * padding[1] < kW:
        raise ValueError(f"conv2d: kernel {kH}x{kW} is larger than the padded input "
                         f"{H + 2 * padding[0]}x{W + 2 * padding[1]} (input {x.shape}, "
                         f"padding {padding})")
    y = bk.conv2d_forward(x.data, weight.data, None if bias is None else bias.data,
                          stride, padding)

    def backward(g):
        gx = bk.conv2d_backward_input(g, weight.data, x.shape, stride, padding) \
            if x.requires_grad else None
        gw = bk.conv2d_backward_weight(g, x.data, weight.shape, stride, padding) \
            if weight.requires_grad else None
        gb = g.sum(axis=(0, 2, 3)) if bias is not None and bias.requires_grad else None
        return gx, gw, gb
    parents = (x, weight) if bias is None else (x, weight, bias)
    return make_result(y, parents, backward)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
    """Transposed convolution, as PyTorch's ``conv_transpose2d`` (no output padding).

    Weight ``(C_in, C_out, kH, kW)``. Each input pixel stamps a weighted copy of the kernel
    onto the output::

        y_pad[n, o, p*sH + i, q*sW + j] += sum_c x[n,c,p,q] W[c,o,i,j];   y = crop(y_pad) + b
        Ho = (H - 1) sH - 2 pH + kH,   Wo likewise

    It is exactly the input gradient of ``conv2d`` with the same weight, so its gradients are
    the other two conv2d computations:

    * ``dL/dx = conv2d(g, W, stride, padding)``;
    * ``dL/dW[c,o,i,j] = sum_{n,p,q} x[n,c,p,q] g_pad[n,o,p*sH+i,q*sW+j]``
      (conv2d's weight gradient with the roles of input and output gradient swapped);
    * ``dL/db[o] = sum_{n,p,q} g[n,o,p,q]``.

    When the kernel tiles the output without overlap (stride = kernel size, no padding, as
    the U-Net's 2x2 stride-2 up-convolution), each input pixel owns its own ``kH x kW`` output
    block, and the op is a 1x1 convolution to ``C_out*kH*kW`` channels followed by a
    rearrangement of those channels into the blocks ("pixel shuffle")::

        z = conv2d(x, W1),  W1[o*kH*kW + i*kW + j, c, 0, 0] = W[c, o, i, j]
        y[n, o, p*kH + i, q*kW + j] = z[n, o*kH*kW + i*kW + j, p, q]

    The gradients are then those of the 1x1 convolution on the un-shuffled ``g``. Same
    numbers, one dense matrix product instead of a scatter.
    """
    bk, stride, padding = _check_common(x, weight, bias, stride, padding, "conv_transpose2d")
    N, C, H, W = x.shape
    Cw, O, kH, kW = weight.shape
    if C != Cw:
        raise ValueError(f"conv_transpose2d: input has {C} channels but weight "
                         f"{weight.shape} expects {Cw}")
    _check_bias(bias, O, "conv_transpose2d")
    Ho = (H - 1) * stride[0] - 2 * padding[0] + kH
    Wo = (W - 1) * stride[1] - 2 * padding[1] + kW
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv_transpose2d: output size {Ho}x{Wo} is empty for input "
                         f"{x.shape}, kernel {kH}x{kW}, stride {stride}, padding {padding}")
    y = _transpose_forward(bk, x.data, weight.data, stride, padding, (N, O, Ho, Wo))
    if bias is not None:
        y = y + bias.data.reshape(1, O, 1, 1)

    def backward(g):
        gx, gw = _transpose_backward(bk, x.data, weight.data, g, stride, padding,
                                     x.requires_grad, weight.requires_grad)
        gb = g.sum(axis=(0, 2, 3)) if bias is not None and bias.requires_grad else None
        return gx, gw, gb
    parents = (x, weight) if bias is None else (x, weight, bias)
    return make_result(y, parents, backward)


# The array computations of conv_transpose2d (the benchmarks time these, so that they measure
# what the op runs). With stride = kernel and no padding, the 1x1-convolution + pixel-shuffle
# form of the docstring: W1 = W as (C, O*kH*kW), transposed, is the 1x1 kernel, and z / gz are
# y / g with each kH x kW block gathered into channels.
def _tiles(w_shape, stride, padding):
    return stride == tuple(w_shape[2:]) and padding == (0, 0)


def _transpose_forward(bk, x, w, stride, padding, out_shape):
    """``conv_transpose2d`` without bias, on arrays."""
    if not _tiles(w.shape, stride, padding):
        return bk.conv2d_backward_input(x, w, out_shape, stride, padding)
    (N, C, H, W), (_, O, kH, kW) = x.shape, w.shape
    w1 = w.reshape(C, -1).T.reshape(-1, C, 1, 1)
    z = bk.conv2d_forward(x, w1, None, (1, 1), (0, 0))                   # (N, O*kH*kW, H, W)
    return z.reshape(N, O, kH, kW, H, W).transpose(0, 1, 4, 2, 5, 3).reshape(out_shape)


def _transpose_backward(bk, x, w, g, stride, padding, need_x=True, need_w=True):
    """``(dL/dx, dL/dW)`` of ``conv_transpose2d`` for the output gradient ``g``, on arrays
    (None where not needed)."""
    if not _tiles(w.shape, stride, padding):
        gx = bk.conv2d_forward(g, w, None, stride, padding) if need_x else None
        gw = bk.conv2d_backward_weight(x, g, w.shape, stride, padding) if need_w else None
        return gx, gw
    (N, C, H, W), (_, O, kH, kW) = x.shape, w.shape
    w1 = w.reshape(C, -1).T.reshape(-1, C, 1, 1)
    gz = g.reshape(N, O, H, kH, W, kW).transpose(0, 1, 3, 5, 2, 4).reshape(N, -1, H, W)
    gx = bk.conv2d_backward_input(gz, w1, x.shape, (1, 1), (0, 0)) if need_x else None
    gw = None
    if need_w:
        gw1 = bk.conv2d_backward_weight(gz, x, w1.shape, (1, 1), (0, 0))     # (O*kH*kW, C, 1, 1)
        gw = gw1.reshape(-1, C).T.reshape(w.shape)
    return gx, gw
