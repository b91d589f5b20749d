"""Bad input gets a ValueError naming the shapes or values, never a wrong result or a deep
NumPy IndexError."""
import numpy as np
import pytest

from minicnn import Tensor
import minicnn.functional as F


def t(*shape, dtype=np.float32):
    return Tensor(np.ones(shape, dtype))


@pytest.mark.parametrize("call, message", [
    (lambda: F.conv2d(t(3, 8, 8), t(4, 3, 3, 3)), r"conv2d input must be 4-D .*\(3, 8, 8\)"),
    (lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3)), r"conv2d weight must be 4-D .*\(4, 3, 3\)"),
    (lambda: F.conv2d(t(1, 3, 8, 8), t(4, 2, 3, 3)), r"input has 3 channels but weight \(4, 2, 3, 3\) expects 2"),
    (lambda: F.conv2d(t(1, 3, 4, 4), t(4, 3, 7, 7), padding=1), r"kernel 7x7 is larger than the padded input 6x6"),
    (lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), t(5)), r"bias must have shape \(4,\), got \(5,\)"),
    (lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), stride=0), r"stride must be >= 1"),
    (lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), padding=-1), r"padding must be >= 0"),
    (lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), stride=(1, 2, 3)), r"stride must be an int or a pair"),
    (lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3, dtype=np.float64)), r"weight has dtype float64 but input has float32"),
    (lambda: F.conv2d(Tensor(np.ones((1, 1, 3, 3), np.int64)), t(1, 1, 1, 1)), r"must be a floating tensor"),
    (lambda: F.conv_transpose2d(t(1, 3, 4, 4), t(2, 3, 2, 2)), r"input has 3 channels but weight \(2, 3, 2, 2\) expects 2"),
    (lambda: F.conv_transpose2d(t(1, 3, 1, 1), t(3, 2, 1, 1), padding=1), r"output size -1x-1 is empty"),
    (lambda: F.max_pool2d(t(1, 1, 3, 3), 4), r"kernel \(4, 4\) is larger than the input \(1, 1, 3, 3\)"),
    (lambda: F.max_pool2d(t(3, 3), 2), r"max_pool2d input must be 4-D"),
    (lambda: F.max_pool2d(t(1, 1, 4, 4), 0), r"must be >= 1"),
    (lambda: F.add(t(2, 3), t(4, 5)), r"shapes \(2,3\) \(4,5\)"),
    (lambda: F.cat([t(1, 2, 3), t(1, 2, 4)], 1), r"shapes must match except along dim 1"),
    (lambda: F.cat([t(1, 2), t(1, 2)], 2), r"dim 2 out of range"),
    (lambda: F.reshape(t(2, 3), (4, 2)), r"cannot reshape a tensor of shape \(2, 3\) into \(4, 2\)"),
    (lambda: F.sum(t(2, 3), 2), r"dim 2 out of range"),
])
def test_bad_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


LOSSES = [F.cross_entropy, F.dice_loss, F.focal_loss]


@pytest.mark.parametrize("loss", LOSSES)
def test_target_out_of_range(loss):
    target = np.array([[0, 1], [4, 2]])[None]
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\), found values in \[0, 4\]"):
        loss(t(1, 4, 2, 2), target)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        loss(t(1, 4, 2, 2), np.array([[[0, -1], [1, 1]]]))


@pytest.mark.parametrize("loss", LOSSES)
def test_target_float_or_wrong_shape(loss):
    with pytest.raises(ValueError, match="integer class indices, got dtype float32"):
        loss(t(1, 4, 2, 2), np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"target shape \(1, 3, 2\) does not match logits \(1, 4, 2, 2\)"):
        loss(t(1, 4, 2, 2), np.zeros((1, 3, 2), np.int64))
    with pytest.raises(ValueError, match=r"logits must be \(N, C\)"):
        loss(t(4), np.zeros(4, np.int64))


def test_loss_argument_errors():
    x, tg = t(2, 4), np.array([0, 3])
    with pytest.raises(ValueError, match=r"weight must have one value per class, shape \(4,\), got \(3,\)"):
        F.cross_entropy(x, tg, np.ones(3))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.cross_entropy(x, tg, reduction="avg")
    with pytest.raises(ValueError, match=r"classes must be a non-empty subset of 0..3"):
        F.dice_loss(x, tg, classes=(1, 5))
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        F.focal_loss(x, tg, gamma=-1)
    with pytest.raises(ValueError, match="integer array or Tensor"):
        F.cross_entropy(x, [0, 3])


def test_integer_tensor_target_is_accepted():
    x = Tensor(np.zeros((2, 4), np.float32))
    loss = F.cross_entropy(x, Tensor(np.array([0, 3])))
    assert abs(loss.item() - np.log(4)) < 1e-6


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        t(2).to("tpu")


def test_backend_relu_backward_refuses_mismatched_shapes():
    """The primitive refuses, as the CUDA backend does, rather than broadcast a gradient."""
    from minicnn.backend import numpy_backend
    with pytest.raises(ValueError, match=r"output gradient \(2, 3\) and output \(3,\) differ"):
        numpy_backend.relu_backward(np.ones((2, 3), np.float32), np.ones(3, np.float32))
