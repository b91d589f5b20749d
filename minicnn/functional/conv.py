"""2-D convolution and transposed convolution (NCHW, PyTorch's weight layouts).

Notation: x ``(N, C, H, W)``, weight ``(O, C, kH, kW)``, stride ``(sH, sW)``, padding
``(pH, pW)``, x_pad the input with pH/pW zeros on each side.
"""
from ..tensor import make_result
from ._util import check_float, check_rank, pair, same_device


def _check_common(x, weight, bias, stride, padding, op):
    check_rank(x, 4, f"{op} input", "(N, C, H, W)")
    check_rank(weight, 4, f"{op} weight", "(C_out, C_in, kH, kW)" if op.startswith("conv2d")
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
    return _conv2d(x, weight, bias, stride, padding, relu=False, op="conv2d")


def conv2d_relu(x, weight, bias=None, stride=1, padding=0):
    """``relu(conv2d(x, weight, bias, stride, padding))`` in one op: the backends apply the
    ReLU as they store the convolution's output (the CUDA kernels in their epilogue), so the
    pre-activation is neither written nor kept for the backward pass, which needs only
    ``y = max(z, 0)``: ``dL/dz = g [y > 0]`` (relu's rule), then conv2d's three gradients of
    ``dL/dz``. Same values, bit for bit, as the two ops one after the other.
    """
    return _conv2d(x, weight, bias, stride, padding, relu=True, op="conv2d_relu")


def _conv2d(x, weight, bias, stride, padding, relu, op):
    bk, stride, padding = _check_common(x, weight, bias, stride, padding, op)
    N, C, H, W = x.shape
    O, Cw, kH, kW = weight.shape
    if C != Cw:
        raise ValueError(f"{op}: input has {C} channels but weight {weight.shape} expects {Cw}")
    _check_bias(bias, O, op)
    if H + 2 * padding[0] < kH or W + 2 * padding[1] < kW:
        raise ValueError(f"{op}: kernel {kH}x{kW} is larger than the padded input "
                         f"{H + 2 * padding[0]}x{W + 2 * padding[1]} (input {x.shape}, "
                         f"padding {padding})")
    y = bk.conv2d_forward(x.data, weight.data, None if bias is None else bias.data,
                          stride, padding, relu=relu)

    def backward(g):
        if relu:
            g = bk.relu_backward(g, y)
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
    y = bk.conv2d_backward_input(x.data, weight.data, (N, O, Ho, Wo), stride, padding,
                                 bias=None if bias is None else bias.data)   # bias fused

    def backward(g):
        gx = bk.conv2d_forward(g, weight.data, None, stride, padding) \
            if x.requires_grad else None
        gw = bk.conv2d_backward_weight(x.data, g, weight.shape, stride, padding) \
            if weight.requires_grad else None
        gb = g.sum(axis=(0, 2, 3)) if bias is not None and bias.requires_grad else None
        return gx, gw, gb
    parents = (x, weight) if bias is None else (x, weight, bias)
    return make_result(y, parents, backward)
