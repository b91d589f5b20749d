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


def test_a_module_takes_a_numpy_array_as_a_tensor_without_grad():
    """issue 27, item 10: ``model(array)`` is ``model(Tensor(array))`` (no AttributeError),
    for a layer and for a model of modules, and the array records no gradient."""
    m = Tiny()
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32)
    for module in (m, m.conv, m.body):
        arg = x if module is not m.body else m.conv(x).numpy()
        out = module(arg)
        assert isinstance(out, Tensor)
        np.testing.assert_array_equal(out.numpy(), module(Tensor(arg)).numpy())
    seen = []
    m.conv.forward = lambda t: seen.append(t) or nn.Conv2d.forward(m.conv, t)
    m(x).sum().backward()
    assert isinstance(seen[0], Tensor) and not seen[0].requires_grad and seen[0].grad is None
    assert m.conv.weight.grad is not None                 # the parameters still learn


def test_state_dict_errors_name_a_few_and_count():
    """issue 27, item 6: a width mismatch names two tensors and the count, not all of them."""
    wide = nn.Sequential(*[nn.Conv2d(4, 4, 3) for _ in range(10)])
    narrow = nn.Sequential(*[nn.Conv2d(2, 2, 3) for _ in range(10)])
    with pytest.raises(ValueError) as err:
        narrow.load_state_dict(wide.state_dict())
    message = str(err.value)
    assert message.startswith("load_state_dict: 20 of 20 shapes differ: 0.weight: checkpoint "
                              "(4, 4, 3, 3) vs model (2, 2, 3, 3); 0.bias") and \
        message.endswith("and 18 more") and len(message) < 200
    with pytest.raises(ValueError, match=r"10 missing keys \['0.weight', '1.weight', '2.weight' "
                       r"and 7 more\]"):
        narrow.load_state_dict({k: v for k, v in narrow.state_dict().items() if "bias" in k})


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
