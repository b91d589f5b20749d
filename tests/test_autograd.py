"""Properties of the Tensor and the backward walk itself."""
import numpy as np
import pytest

import minicnn
from minicnn import Tensor
import minicnn.functional as F


def test_dtype_rules():
    assert Tensor(np.zeros(3, np.float32)).dtype == np.float32
    assert Tensor(np.zeros(3, np.float64)).dtype == np.float64
    assert Tensor(np.zeros(3, np.float16)).dtype == np.float32
    assert Tensor(1.5).dtype == np.float32
    assert Tensor([[1, 2], [3, 4]]).dtype == np.float32
    assert Tensor(np.array([1, 2], np.int64)).dtype == np.int64
    with pytest.raises(ValueError, match="floating"):
        Tensor(np.array([1, 2]), requires_grad=True)


def test_basic_attributes():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert x.shape == (2, 3) and x.grad is None and x.requires_grad and x.device == "cpu"
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    n = x.numpy()
    n[0, 0] = 100
    assert x.data[0, 0] == 0, "numpy() must return a copy"


def test_scalar_backward_defaults_to_one():
    x = Tensor(np.array([2.0, 3.0]), requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [4.0, 6.0])


def test_backward_needs_grad_for_non_scalar():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    y = x * 2
    with pytest.raises(ValueError, match=r"needs `grad`.*\(2, 2\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\).*\(2, 2\)"):
        y.backward(np.ones(3))


def test_backward_without_requires_grad_is_an_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (Tensor([1.0]) * 2).sum().backward()


def test_gradients_accumulate_across_calls():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0])


def test_tensor_used_twice_gets_the_sum():
    x = Tensor(np.array([1.5, -2.0]), requires_grad=True)
    y = x * x + x          # dy/dx = 2x + 1
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)


def test_diamond_graph():
    x = Tensor(np.array([0.5]), requires_grad=True)
    a, b = x * 2, x * 3
    (a * b).sum().backward()        # 6 x^2 -> 12 x
    np.testing.assert_allclose(x.grad, [6.0])


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with minicnn.no_grad():
        y = F.relu(x * 2)
    assert not y.requires_grad and y.is_leaf
    assert minicnn.is_grad_enabled()


def test_deep_chain_does_not_recurse():
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 10_000], rtol=1e-9)


def test_graph_is_freed_after_backward():
    x = Tensor(np.ones(3), requires_grad=True)
    y = (x * 2).sum()
    y.backward()
    assert y._parents == () and y._backward is None
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()


def test_only_leaves_keep_grad_and_constants_get_none():
    x = Tensor(np.ones(3), requires_grad=True)
    c = Tensor(np.ones(3))
    h = x * c
    h.sum().backward()
    assert h.grad is None and c.grad is None and x.grad is not None


def test_grad_keeps_parameter_dtype():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    (x * 2.0).sum().backward()
    assert x.grad.dtype == np.float32
