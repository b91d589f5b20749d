"""Finite-difference gradient checks in float64 along a random direction, one per op."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minicnn.functional as F
from helpers import (conv_case, finite_difference_check, pool_case, rand, rand_away_from_zero,
                     rand_distinct, seeds)


@given(case=conv_case(), seed=seeds)
def test_conv2d(case, seed):
    N, C, O, H, W, kH, kW, stride, padding = case
    rng = np.random.default_rng(seed)
    finite_difference_check(lambda x, w, b: F.conv2d(x, w, b, stride, padding),
                            [rand(rng, (N, C, H, W), np.float64),
                             rand(rng, (O, C, kH, kW), np.float64), rand(rng, (O,), np.float64)],
                            seed)


@given(case=conv_case(transposed=True), seed=seeds)
def test_conv_transpose2d(case, seed):
    N, C, O, H, W, kH, kW, stride, padding = case
    rng = np.random.default_rng(seed)
    finite_difference_check(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding),
                            [rand(rng, (N, C, H, W), np.float64),
                             rand(rng, (C, O, kH, kW), np.float64), rand(rng, (O,), np.float64)],
                            seed)


@given(case=pool_case(), seed=seeds)
def test_max_pool2d(case, seed):
    N, C, H, W, kernel, stride = case
    x = rand_distinct(np.random.default_rng(seed), (N, C, H, W), np.float64)
    finite_difference_check(lambda t: F.max_pool2d(t, kernel, stride), [x], seed)


LOSSES = {
    "cross_entropy": lambda x, t, w: F.cross_entropy(x, t, w),
    "dice_loss": lambda x, t, w: F.dice_loss(x, t, 1.0, (1, 2)),
    "focal_loss": lambda x, t, w: F.focal_loss(x, t, 2.0, w),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@given(seed=seeds)
def test_losses(name, seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, size=(2, 5, 6))
    w = np.array([0.1, 0.3, 0.3, 0.3])
    finite_difference_check(lambda x: LOSSES[name](x, t, w), [rand(rng, (2, 4, 5, 6), np.float64)],
                            seed)


@given(seed=seeds)
def test_elementwise_and_shape_ops(seed):
    rng = np.random.default_rng(seed)
    a = rand_away_from_zero(rng, (2, 3, 4, 5), np.float64)
    b = rand(rng, (3, 1, 5), np.float64)
    finite_difference_check(lambda x: F.relu(x), [a], seed)
    finite_difference_check(lambda x, y: (x * y - x / (y * y + 1.0) + y) ** 2, [a, b], seed)
    finite_difference_check(lambda x: F.log_softmax(x, 1) + F.softmax(x, 2), [a], seed)
    finite_difference_check(lambda x: F.cat([x, F.exp(x)], 1).mean((0, 2)), [a], seed)


@given(seed=seeds, groups=st.sampled_from([1, 2, 6]))
def test_group_norm(seed, groups):
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, (2, 6, 3, 4), np.float64), rand(rng, (6,), np.float64), \
        rand(rng, (6,), np.float64)
    finite_difference_check(lambda x, w, b: F.group_norm(x, groups, w, b), [x, w, b], seed)
