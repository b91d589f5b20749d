"""Modules: registration, state dicts, initialisation, and layers against torch.nn."""
import numpy as np
import pytest
import torch
from scipy import stats

import minicnn
from minicnn import nn, Tensor


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.ConvTranspose2d(4, 3, 2, stride=2))

    def forward(self, x):
        return self.body(self.conv(x))


def test_registration_and_names():
    m = Tiny()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["conv.weight", "conv.bias", "body.2.weight", "body.2.bias"]
    assert m.num_parameters() == 4 * 2 * 9 + 4 + 4 * 3 * 4 + 3
    assert len(list(m.children())) == 2
    m.eval()
    assert not m.training and not m.body[2].training
    m.train()
    assert m.body[0].training


def test_layers_match_torch_with_copied_weights():
    m = Tiny()
    ref = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.ConvTranspose2d(4, 3, 2, stride=2))
    with torch.no_grad():
        for (name, p), tp in zip(m.named_parameters(), ref.parameters()):
            tp.copy_(torch.tensor(p.data))
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(m(Tensor(x)).numpy(), ref(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_and_errors():
    a, b = Tiny(), Tiny()
    b.load_state_dict(a.state_dict())
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    state = a.state_dict()
    state["extra"] = np.zeros(1)
    del state["conv.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['conv.bias'\].*unexpected keys \['extra'\]"):
        b.load_state_dict(state)
    state = a.state_dict()
    state["conv.weight"] = np.zeros((4, 2, 5, 5))
    with pytest.raises(ValueError, match=r"conv.weight: checkpoint \(4, 2, 5, 5\) vs model \(4, 2, 3, 3\)"):
        b.load_state_dict(state)


def test_zero_grad():
    m = Tiny()
    m(Tensor(np.ones((1, 2, 4, 4), np.float32))).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("layer, fan_in", [(lambda: nn.Conv2d(16, 32, 3), 16 * 9),
                                           (lambda: nn.ConvTranspose2d(16, 32, 2), 32 * 4)])
def test_default_init_matches_torch_distribution(layer, fan_in):
    """PyTorch: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); a KS test against that law."""
    minicnn.manual_seed(0)
    m = layer()
    bound = 1 / np.sqrt(fan_in)
    w = m.weight.data.ravel()
    assert np.abs(w).max() <= bound and m.weight.dtype == np.float32
    assert stats.kstest(w, stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3
    assert np.abs(m.bias.data).max() <= bound
    # and torch's own layer draws from the same law: compare bounds empirically
    tl = (torch.nn.Conv2d(16, 32, 3) if isinstance(m, nn.Conv2d) else torch.nn.ConvTranspose2d(16, 32, 2))
    assert abs(tl.weight.detach().abs().max().item() - bound) < 0.02 * bound


def test_manual_seed_is_reproducible():
    minicnn.manual_seed(3)
    a = nn.Conv2d(3, 3, 3).weight.data
    minicnn.manual_seed(3)
    np.testing.assert_array_equal(a, nn.Conv2d(3, 3, 3).weight.data)


def test_module_needs_super_init():
    class Bad(nn.Module):
        def __init__(self):
            self.x = 1
    with pytest.raises(RuntimeError, match="super"):
        Bad()


def test_group_norm_layer_matches_torch():
    ours = nn.GroupNorm(2, 6)
    ref = torch.nn.GroupNorm(2, 6)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for p, tp in zip(ours.parameters(), ref.parameters()):
        np.testing.assert_array_equal(p.data, tp.detach().numpy())   # ones and zeros
    x = np.random.default_rng(0).standard_normal((3, 6, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(ours(Tensor(x)).numpy(), ref(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    assert nn.GroupNorm(3, 6, affine=False).num_parameters() == 0
    with pytest.raises(ValueError, match="must be >= 1 and divide"):
        nn.GroupNorm(4, 6)
