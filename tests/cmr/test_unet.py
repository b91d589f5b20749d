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

    def __init__(self, base, depth, norm="none", deep_supervision=False):
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
        if deep_supervision:
            for i in range(1, depth):
                setattr(self, f"aux{i}", tnn.Conv2d(w[i], 4, 1))

    def forward(self, x, aux=False):
        skips, heads = [], []
        for i in range(self.depth):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
            x = torch.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for i in reversed(range(self.depth)):
            x = getattr(self, f"up{i}")(torch.cat([skips[i], getattr(self, f"upconv{i}")(x)], 1))
            if aux and i > 0:
                heads.insert(0, getattr(self, f"aux{i}")(x))
        return (self.head(x), heads) if aux else self.head(x)


def assert_same_loss_and_gradients(loss, ref_loss, ours, theirs):
    """Our loss and PyTorch's (float64) agree, and after both backward passes so does every
    parameter's gradient (``theirs``: PyTorch's parameters by our names)."""
    assert abs(loss.item() - ref_loss.item()) < 1e-12
    loss.backward()
    ref_loss.backward()
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(Tensor(p.grad).numpy(), theirs[name].grad.numpy(),
                                   rtol=1e-8, atol=1e-12, err_msg=name)


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
    assert_same_loss_and_gradients(loss, ref_loss, ours, theirs)
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


def test_deep_supervision_loss_and_gradients_match_pytorch():
    """The auxiliary heads' logits, the weighted loss of cmr.train --deep-supervision (labels
    taken at each block's centre pixel) and every gradient, heads included, against PyTorch."""
    from cmr import train
    minicnn.manual_seed(2)
    base, depth, size = 3, 3, 16
    ours = UNet(base=base, depth=depth, deep_supervision=True)
    ref = TorchUNet(base, depth, deep_supervision=True).double()
    theirs = dict(ref.named_parameters())
    assert {n for n in theirs if n.startswith("aux")} == {
        "aux1.weight", "aux1.bias", "aux2.weight", "aux2.bias"}
    for name, p in ours.named_parameters():
        p.data = p.data.astype(np.float64)
        with torch.no_grad():
            theirs[name].copy_(torch.tensor(p.data))
    rng = np.random.default_rng(2)
    x = rng.random((2, 1, size, size))
    t = rng.integers(0, 4, (2, size, size))
    w = np.array([0.1, 0.3, 0.3, 0.3])

    logits, aux = ours(Tensor(x), aux=True)
    np.testing.assert_allclose(logits.numpy(), ours(Tensor(x)).numpy(), rtol=0, atol=0)
    assert [a.shape for a in aux] == [(2, 4, 8, 8), (2, 4, 4, 4)]
    ce = train.make_loss("ce", w)
    loss = train.deep_supervision_loss(lambda z, m, _: ce(z, m), logits, aux, t, t)
    w = w.astype(np.float32).astype(np.float64)        # make_loss keeps float32 weights

    ref_logits, ref_aux = ref(torch.tensor(x), aux=True)
    tt = torch.tensor(t)
    ref_loss = tnn.functional.cross_entropy(ref_logits, tt, torch.tensor(w))
    for level, head in enumerate(ref_aux, start=1):
        s = 2 ** level        # the label at (s/2, s/2) of each s x s block
        block = tt.reshape(2, size // s, s, size // s, s)[:, :, s // 2, :, s // 2]
        ref_loss = ref_loss + 0.5 ** level * tnn.functional.cross_entropy(
            head, block, torch.tensor(w))
    ref_loss = ref_loss / (1 + 0.5 + 0.25)
    for a, b in zip(aux, ref_aux):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-9, atol=1e-11)
    assert_same_loss_and_gradients(loss, ref_loss, ours, theirs)


def test_aux_outputs_need_a_deep_supervision_model():
    with pytest.raises(ValueError, match="deep_supervision=True"):
        UNet(base=2, depth=2)(Tensor(np.zeros((1, 1, 8, 8), np.float32)), aux=True)
    assert UNet(base=2, depth=2).config["deep_supervision"] is False
