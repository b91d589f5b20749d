"""Layers: ``Module`` and its parameters, and the building blocks of a CNN."""
from .module import Module, Parameter, Sequential
from .layers import Conv2d, ConvTranspose2d, GroupNorm, MaxPool2d, ReLU

__all__ = ["Module", "Parameter", "Sequential", "Conv2d", "ConvTranspose2d", "GroupNorm",
           "MaxPool2d", "ReLU"]
