"""Differentiable operations, one module per family.

Each op computes its forward pass through the backend primitives (or plain ``xp`` glue) and
records its own backward rule next to it; the docstrings state the maths: forward formula,
each gradient, shapes. Names, argument order and layouts follow PyTorch (NCHW).
"""
from .arithmetic import add, sub, mul, div, neg, pow, exp, log, sum, mean
from .shape import reshape, cat, getitem
from .activation import relu, softmax, log_softmax
from .conv import conv2d, conv2d_relu, conv_transpose2d
from .pooling import max_pool2d
from .loss import cross_entropy, dice_loss, focal_loss
from .normalization import group_norm

__all__ = ["add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sum", "mean",
           "reshape", "cat", "getitem", "relu", "softmax", "log_softmax",
           "conv2d", "conv2d_relu", "conv_transpose2d", "max_pool2d",
           "cross_entropy", "dice_loss", "focal_loss", "group_norm"]
