"""CNN layers. Default initialisation matches PyTorch's in distribution:
``W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (kaiming-uniform with a = sqrt(5)), where
``fan_in = weight.shape[1] * kH * kW`` (for a transposed convolution that is C_out*kH*kW,
as in PyTorch).
"""
import math

import numpy as np

from .. import functional as F
from ..functional._util import pair
from ..random import generator
from .module import Module, Parameter


def _uniform(shape, bound, dtype):
    return Parameter(generator().uniform(-bound, bound, size=shape).astype(dtype))


class _ConvBase(Module):
    def __init__(self, in_channels, out_channels, weight_shape, bias, stride, padding, dtype):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"{type(self).__name__}: in_channels ({in_channels}) and "
                             f"out_channels ({out_channels}) must be >= 1")
        self.stride, self.padding = pair(stride, "stride"), pair(padding, "padding")
        bound = 1 / math.sqrt(weight_shape[1] * weight_shape[2] * weight_shape[3])
        self.weight = _uniform(weight_shape, bound, dtype)
        self.bias = _uniform((out_channels,), bound, dtype) if bias else None

    def extra_repr(self):
        return (f"weight={self.weight.shape}, stride={self.stride}, padding={self.padding}, "
                f"bias={self.bias is not None}")


class Conv2d(_ConvBase):
    """``y = conv2d(x, W, b)`` with W of shape ``(C_out, C_in, kH, kW)``; called as
    ``conv(x, relu=True)``, ``y = relu(conv2d(x, W, b))`` in one op (``F.conv2d_relu``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=np.float32):
        kH, kW = pair(kernel_size, "kernel_size")
        super().__init__(in_channels, out_channels, (out_channels, in_channels, kH, kW), bias,
                         stride, padding, dtype)

    def forward(self, x, relu=False):
        fn = F.conv2d_relu if relu else F.conv2d
        return fn(x, self.weight, self.bias, self.stride, self.padding)


class ConvTranspose2d(_ConvBase):
    """``y = conv_transpose2d(x, W, b)`` with W of shape ``(C_in, C_out, kH, kW)``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=np.float32):
        kH, kW = pair(kernel_size, "kernel_size")
        super().__init__(in_channels, out_channels, (in_channels, out_channels, kH, kW), bias,
                         stride, padding, dtype)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class GroupNorm(Module):
    """``y = group_norm(x, num_groups, gamma, beta, eps)`` over ``num_channels`` channels;
    ``GroupNorm(C, C)`` is instance normalisation. ``affine`` adds the per-channel scale
    ``weight`` (gamma, initialised to 1) and shift ``bias`` (beta, initialised to 0), as in
    PyTorch."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32):
        super().__init__()
        if num_groups < 1 or num_channels < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_groups ({num_groups}) must be >= 1 and divide "
                             f"num_channels ({num_channels})")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = Parameter(np.ones(num_channels, dtype=dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_channels, dtype=dtype)) if affine else None

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"num_groups={self.num_groups}, num_channels={self.num_channels}, "
                f"eps={self.eps}, affine={self.weight is not None}")
