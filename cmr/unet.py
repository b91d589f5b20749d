"""The original work's padded U-Net, built from minicnn layers.

For a 96x96 input and ``base=64, depth=4``::

    96x96   1 -> 64 -> 64  ──────────────────────────────────────────── cat -> 128 -> 64 -> 64 -> 4 (1x1)
      pool                                                           up-conv 128 -> 64
    48x48   64 -> 128 -> 128 ──────────────────────────────── cat -> 256 -> 128 -> 128
      pool                                                  up-conv 256 -> 128
    24x24   128 -> 256 -> 256 ─────────────────────── cat -> 512 -> 256 -> 256
      pool                                          up-conv 512 -> 256
    12x12   256 -> 512 -> 512 ────────────── cat -> 1024 -> 512 -> 512
      pool                                up-conv 1024 -> 512
    6x6     512 -> 1024 -> 1024 (bottleneck)

Every arrow inside a level is a 3x3 convolution with padding 1 followed by ReLU, so sizes are
kept ("padded" U-Net); pools are 2x2 with stride 2; up-convolutions are 2x2 transposed
convolutions with stride 2. With base 64 the network has 31,030,788 parameters.

``deep_supervision=True`` adds a 1x1 head to each decoder level but the last (48x48, 24x24 and
12x12 above), whose logits ``forward(x, aux=True)`` returns beside the output's, for the
training loss to score against the labels at that scale (``cmr.train --deep-supervision``;
Lee et al. 2015, as nnU-Net uses it). The heads are for training only: the prediction is the
last level's, as without them.
"""
import math

import numpy as np

from minicnn import functional as F, nn
from minicnn.random import generator


NORMS = ("none", "instance", "group")
#: Settings added to ``UNet.config`` since checkpoints were first written, with the value that
#: a checkpoint without them means.
ADDED_SETTINGS = {"deep_supervision": False}


def _norm_layer(norm, channels):
    """The normalisation after a 3x3 convolution: none, instance (``GroupNorm(C, C)``: each
    channel of each image by its own statistics) or group (``GroupNorm(gcd(8, C), C)``: 8
    groups of channels when C divides by 8)."""
    return nn.GroupNorm(channels if norm == "instance" else math.gcd(8, channels), channels)


class DoubleConv(nn.Module):
    """(3x3 conv, padding 1, [normalisation], ReLU) twice."""

    def __init__(self, in_channels, out_channels, norm="none"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm = norm
        if norm != "none":
            self.norm1 = _norm_layer(norm, out_channels)
            self.norm2 = _norm_layer(norm, out_channels)

    def forward(self, x):
        if self.norm == "none":      # each ReLU fused into its convolution (same values)
            return self.conv2(self.conv1(x, relu=True), relu=True)
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class UNet(nn.Module):
    """``UNet(in_channels=1, num_classes=4, base=64, depth=4, init="torch", norm="none")``: logits
    ``(N, classes, H, W)`` for an input ``(N, in_channels, H, W)`` whose H and W divide by
    ``2**depth``.

    ``init="torch"`` keeps PyTorch's default initialisation (as the original work did);
    ``init="he"`` draws every weight from N(0, 2/fan_in) (He et al. 2015; 1/fan_in for the final
    1x1 layer, which has no ReLU after it) and zeroes the biases, which keeps the activations'
    scale through the 23 layers and lets training start much faster.

    ``norm`` puts a normalisation between each 3x3 convolution and its ReLU: ``"none"`` (the
    original network), ``"instance"`` or ``"group"`` (see ``_norm_layer``; both normalise each
    image on its own, so training and evaluation compute the same function).

    ``deep_supervision=True`` adds the heads ``aux1`` ... ``aux{depth-1}`` (1x1, decoder level
    i's ``base * 2**i`` channels to the classes; initialised like ``head``) that
    ``forward(x, aux=True)`` evaluates.
    """

    def __init__(self, in_channels=1, num_classes=4, base=64, depth=4, init="torch",
                 norm="none", deep_supervision=False):
        super().__init__()
        if depth < 1 or base < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError(f"UNet: depth ({depth}), base ({base}), in_channels and "
                             "num_classes must be >= 1")
        if init not in ("torch", "he"):
            raise ValueError(f"UNet: init must be 'torch' or 'he', got {init!r}")
        if norm not in NORMS:
            raise ValueError(f"UNet: norm must be one of {NORMS}, got {norm!r}")
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "base": base,
                       "depth": depth, "init": init, "norm": norm,
                       "deep_supervision": bool(deep_supervision)}
        self.depth = depth
        widths = [base * 2 ** i for i in range(depth + 1)]
        for i in range(depth):
            setattr(self, f"down{i}", DoubleConv(in_channels if i == 0 else widths[i - 1],
                                                 widths[i], norm))
        self.bottleneck = DoubleConv(widths[depth - 1], widths[depth], norm)
        for i in reversed(range(depth)):
            setattr(self, f"upconv{i}", nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            setattr(self, f"up{i}", DoubleConv(2 * widths[i], widths[i], norm))
        self.head = nn.Conv2d(base, num_classes, 1)
        if deep_supervision:
            for i in range(1, depth):
                setattr(self, f"aux{i}", nn.Conv2d(widths[i], num_classes, 1))
        if init == "he":
            self._he_init()

    def _he_init(self):
        for name, module in self.named_modules():
            if isinstance(module, nn.ConvTranspose2d):
                fan_in = module.weight.shape[0]          # a 2x2/2 up-conv: one tap per output
            elif isinstance(module, nn.Conv2d):
                fan_in = int(np.prod(module.weight.shape[1:]))
            else:
                continue
            gain = 1.0 if name == "head" or name.startswith("aux") else 2.0
            w = module.weight
            w.data = (generator().standard_normal(w.shape) * np.sqrt(gain / fan_in)).astype(w.dtype)
            module.bias.data = np.zeros_like(module.bias.data)

    def forward(self, x, aux=False):
        """The logits ``(N, classes, H, W)``; with ``aux=True`` (a model built with
        ``deep_supervision``) also the list of the auxiliary heads' logits, level 1 first:
        level i's are ``(N, classes, H / 2**i, W / 2**i)``."""
        if aux and not self.config["deep_supervision"]:
            raise ValueError("UNet.forward(aux=True) needs a model built with "
                             "deep_supervision=True")
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"UNet expects input (N, {self.config['in_channels']}, H, W), "
                             f"got {x.shape}")
        f = 2 ** self.depth
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"UNet with depth {self.depth}: height and width must divide by "
                             f"{f}, got {x.shape[2]}x{x.shape[3]}")
        skips = []
        for i in range(self.depth):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        levels = {}
        for i in reversed(range(self.depth)):
            x = getattr(self, f"upconv{i}")(x)
            x = getattr(self, f"up{i}")(F.cat([skips[i], x], dim=1))
            if aux and i > 0:
                levels[i] = getattr(self, f"aux{i}")(x)
        if aux:
            return self.head(x), [levels[i] for i in range(1, self.depth)]
        return self.head(x)
