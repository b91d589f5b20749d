"""The U-Net against the same network in PyTorch with copied weights: logits, loss, every
parameter's gradient and one Adam step."""
import math

import numpy as np
import pytest
import torch
import torch.nn as tnn

import minicnn
from minicnn import Tensor, functional as F, optim
from cmr.unet import UNet


class TorchDouble(tnn.Module):
    def __init__(self, cin, cout, norm="none"):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = tnn.Conv2d(cout, cout, 3, padding=1)
        groups = {"none": 0, "instance": cout, "group": math.gcd(8, cout)}[norm]
        self.norm1 = tnn.GroupNorm(groups, cout) if groups else tnn.Identity()
        self.norm2 = tnn.GroupNorm(groups, cout) if groups else tnn.Identity()

    def forward(self, x):
        return torch.relu(self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x))))))


class TorchUNet(tnn.Module):
    """An independent PyTorch implementation with the same parameter names."""

    def __init__(self, base, depth, norm="none"):
        super().__init__()
        self.depth = depth
        w = [base * 2 ** i for i in range(depth + 1)]
        for i in range(depth):
            setattr(self, f"down{i}", TorchDouble(1 if i == 0 else w[i - 1], w[i], norm))
        self.bottleneck = TorchDouble(w[depth - 1], w[depth], norm)
        for i in reversed(range(depth)):
            setattr(self, f"upconv{i}", tnn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2))
            setattr(self, f"up{i}", TorchDouble(2 * w[i], w[i], norm))
        self.head = tnn.Conv2d(base, 4, 1)

    def forward(self, x):
        skips = []
        for i in range(self.depth):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
            x = torch.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for i in reversed(range(self.depth)):
            x = getattr(self, f"up{i}")(torch.cat([skips[i], getattr(self, f"upconv{i}")(x)], 1))
        return self.head(x)


def test_parameter_count_of_the_original_network():
    assert UNet().num_parameters() == 31_030_788
    assert sum(p.numel() for p in TorchUNet(64, 4).parameters()) == 31_030_788


@pytest.mark.parametrize("base, depth, size, norm", [(4, 4, 32, "none"), (6, 2, 24, "none"),
                                                     (4, 3, 16, "instance"), (6, 2, 16, "group")])
def test_matches_pytorch(device, base, depth, size, norm):
    minicnn.manual_seed(0)
    ours = UNet(base=base, depth=depth, norm=norm)
    ref = TorchUNet(base, depth, norm).double()
    theirs = dict(ref.named_parameters())
    assert set(theirs) == {n for n, _ in ours.named_parameters()}
    # float64 on both sides: the comparison then tests the maths, not rounding
    for name, p in ours.named_parameters():
        p.data = p.data.astype(np.float64)
        with torch.no_grad():
            theirs[name].copy_(torch.tensor(p.data))
    ours.to(device)
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, size, size))
    t = rng.integers(0, 4, (2, size, size))
    w = np.array([0.1, 0.3, 0.3, 0.3])

    logits = ours(Tensor(x).to(device))
    ref_logits = ref(torch.tensor(x))
    np.testing.assert_allclose(logits.numpy(), ref_logits.detach().numpy(), rtol=1e-9, atol=1e-11)
    loss = F.cross_entropy(logits, t, w)
    ref_loss = tnn.functional.cross_entropy(ref_logits, torch.tensor(t), torch.tensor(w))
    assert abs(loss.item() - ref_loss.item()) < 1e-12
    loss.backward()
    ref_loss.backward()
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(Tensor(p.grad).numpy(), theirs[name].grad.numpy(),
                                   rtol=1e-8, atol=1e-12, err_msg=name)
    opt = optim.Adam(ours.parameters(), lr=2e-4, betas=(0.9, 0.99))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=2e-4, betas=(0.9, 0.99))
    opt.step()
    ref_opt.step()
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.numpy(), theirs[name].detach().numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=name)


def test_float32_forward_matches_pytorch():
    minicnn.manual_seed(1)
    ours = UNet(base=4, depth=3)
    ref = TorchUNet(4, 3)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            dict(ref.named_parameters())[name].copy_(torch.tensor(p.data))
    x = np.random.default_rng(1).random((3, 1, 16, 16)).astype(np.float32)
    out = ours(Tensor(x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), ref(torch.tensor(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)


def test_bad_input_sizes():
    m = UNet(base=2, depth=3)
    with pytest.raises(ValueError, match=r"must divide by 8, got 20x24"):
        m(Tensor(np.zeros((1, 1, 20, 24), np.float32)))
    with pytest.raises(ValueError, match=r"expects input \(N, 1, H, W\)"):
        m(Tensor(np.zeros((1, 3, 16, 16), np.float32)))
