"""Max pooling."""
from ..tensor import make_result
from ._util import check_float, check_rank, pair


def max_pool2d(x, kernel_size, stride=None):
    """``y[n,c,p,q] = max_{i<kH, j<kW} x[n, c, p*sH + i, q*sW + j]`` (no padding);
    ``Ho = (H - kH) // sH + 1``. ``stride`` defaults to ``kernel_size``; windows may overlap.

    The forward pass keeps, for each output, which window position held the max (argmax).
    Gradient: each ``g[n,c,p,q]`` goes to that one input position; positions that were the
    max of several windows receive the sum, the others receive 0.
    """
    check_rank(x, 4, "max_pool2d input", "(N, C, H, W)")
    check_float(x, "max_pool2d input")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    if min(kernel) < 1 or min(stride) < 1:
        raise ValueError(f"max_pool2d: kernel_size {kernel} and stride {stride} must be >= 1")
    if x.shape[2] < kernel[0] or x.shape[3] < kernel[1]:
        raise ValueError(f"max_pool2d: kernel {kernel} is larger than the input {x.shape}")
    bk = x.backend
    y, argmax = bk.maxpool2d_forward(x.data, kernel, stride)
    return make_result(y, (x,),
                       lambda g: (bk.maxpool2d_backward(g, argmax, x.shape, kernel, stride),))
