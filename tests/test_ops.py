"""Every op of minicnn.functional against PyTorch: forward and the gradient of every input,
over hypothesis-drawn shapes, in float32 and float64, on every available backend."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, strategies as st

import minicnn
import minicnn.functional as F
from helpers import (check_op, conv_case, dtypes, pool_case, rand, rand_away_from_zero,
                     rand_distinct, seeds, shapes_4d)


# ---------------------------------------------------------------- convolution
@given(case=conv_case(), bias=st.booleans(), dtype=dtypes, seed=seeds)
def test_conv2d(device, case, bias, dtype, seed):
    N, C, O, H, W, kH, kW, stride, padding = case
    rng = np.random.default_rng(seed)
    inputs = [rand(rng, (N, C, H, W), dtype), rand(rng, (O, C, kH, kW), dtype)]
    if bias:
        inputs.append(rand(rng, (O,), dtype))
    check_op(lambda *t: F.conv2d(*t, stride=stride, padding=padding),
             lambda *t: TF.conv2d(*t, stride=stride, padding=padding), inputs, device, seed)


@given(case=conv_case(), bias=st.booleans(), dtype=dtypes, seed=seeds)
def test_conv2d_relu(device, case, bias, dtype, seed):
    """The convolution with its ReLU fused (the U-Net's 3x3 layers) against PyTorch's two ops,
    and bit for bit against minicnn's own two ops, forward and every gradient."""
    N, C, O, H, W, kH, kW, stride, padding = case
    rng = np.random.default_rng(seed)
    inputs = [rand(rng, (N, C, H, W), dtype), rand(rng, (O, C, kH, kW), dtype)]
    if bias:
        inputs.append(rand(rng, (O,), dtype))
    fused = check_op(lambda *t: F.conv2d_relu(*t, stride=stride, padding=padding),
                     lambda *t: torch.relu(TF.conv2d(*t, stride=stride, padding=padding)),
                     inputs, device, seed)
    outs = []
    for op in (lambda *t: F.conv2d_relu(*t, stride=stride, padding=padding),
               lambda *t: F.relu(F.conv2d(*t, stride=stride, padding=padding))):
        ts = [minicnn.Tensor(a, requires_grad=True).to(device) for a in inputs]
        y = op(*ts)
        y.backward(np.random.default_rng(seed).standard_normal(y.shape).astype(dtype))
        outs.append([y.numpy()] + [minicnn.Tensor(t.grad).numpy() for t in ts])
    assert np.array_equal(outs[0][0], fused.numpy())
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@given(case=conv_case(transposed=True), bias=st.booleans(), dtype=dtypes, seed=seeds)
def test_conv_transpose2d(device, case, bias, dtype, seed):
    N, C, O, H, W, kH, kW, stride, padding = case
    rng = np.random.default_rng(seed)
    inputs = [rand(rng, (N, C, H, W), dtype), rand(rng, (C, O, kH, kW), dtype)]
    if bias:
        inputs.append(rand(rng, (O,), dtype))
    check_op(lambda *t: F.conv_transpose2d(*t, stride=stride, padding=padding),
             lambda *t: TF.conv_transpose2d(*t, stride=stride, padding=padding),
             inputs, device, seed)


@given(N=st.integers(1, 3), C=st.integers(1, 6), O=st.integers(1, 6), H=st.integers(1, 5),
       W=st.integers(1, 5), k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       bias=st.booleans(), dtype=dtypes, seed=seeds)
def test_conv_transpose2d_non_overlapping(device, N, C, O, H, W, k, bias, dtype, seed):
    """stride = kernel size, no padding: the U-Net's up-convolution, windows that tile the
    output (drawn more often here than by ``conv_case``)."""
    rng = np.random.default_rng(seed)
    inputs = [rand(rng, (N, C, H, W), dtype), rand(rng, (C, O) + k, dtype)]
    if bias:
        inputs.append(rand(rng, (O,), dtype))
    check_op(lambda *t: F.conv_transpose2d(*t, stride=k),
             lambda *t: TF.conv_transpose2d(*t, stride=k), inputs, device, seed)


@given(N=st.integers(1, 3), C=st.integers(1, 6), O=st.integers(1, 6), H=st.integers(1, 6),
       W=st.integers(1, 6), step=st.sampled_from([2, 4]), wide=st.booleans(),
       bias=st.booleans(), dtype=dtypes, seed=seeds)
def test_conv2d_3x3_same_on_even_sizes(device, N, C, O, H, W, step, wide, bias, dtype, seed):
    """3x3, stride 1, padding 1 on sizes that 2 (``step`` 2) or 4 divide: every 3x3 layer of
    the U-Net, drawn more often here than by ``conv_case``. With ``wide`` (16-21 channels on
    both sides) the GEMMs run many K tiles (K = 9 C), as in the U-Net; these are also the
    shapes that rung 5 of the ladder (Winograd, dev/cuda/winograd.py) takes."""
    C, O = (C + 15, O + 15) if wide else (C, O)
    rng = np.random.default_rng(seed)
    inputs = [rand(rng, (N, C, step * H, step * W), dtype), rand(rng, (O, C, 3, 3), dtype)]
    if bias:
        inputs.append(rand(rng, (O,), dtype))
    check_op(lambda *t: F.conv2d(*t, padding=1), lambda *t: TF.conv2d(*t, padding=1),
             inputs, device, seed)


@given(N=st.integers(1, 3), C=st.integers(1, 20), O=st.integers(1, 10), H=st.integers(1, 48),
       W=st.integers(1, 48), bias=st.booleans(), relu=st.booleans(), dtype=dtypes, seed=seeds)
def test_conv2d_1x1(device, N, C, O, H, W, bias, relu, dtype, seed):
    """1x1, stride 1, unpadded (the U-Net's head), drawn more often here than by ``conv_case``:
    with at most 8 output channels the CUDA backend runs its narrow per-pixel kernels
    (``minicnn.backend.cuda.planner.narrow_1x1``; the weight gradient over several pixel chunks from 4096
    pixels on), with more the GEMMs; with and without the fused ReLU."""
    rng = np.random.default_rng(seed)
    inputs = [rand(rng, (N, C, H, W), dtype), rand(rng, (O, C, 1, 1), dtype)]
    if bias:
        inputs.append(rand(rng, (O,), dtype))
    if relu:
        check_op(F.conv2d_relu, lambda *t: torch.relu(TF.conv2d(*t)), inputs, device, seed)
    else:
        check_op(F.conv2d, TF.conv2d, inputs, device, seed)


def test_conv2d_unet_shapes(device):
    """The U-Net's own layer kinds: 3x3 pad 1, 1x1, and the 2x2 stride-2 up-convolution."""
    rng = np.random.default_rng(0)
    x = rand(rng, (2, 8, 12, 12), np.float32)
    check_op(lambda a, w, b: F.conv2d(a, w, b, padding=1),
             lambda a, w, b: TF.conv2d(a, w, b, padding=1),
             [x, rand(rng, (16, 8, 3, 3), np.float32), rand(rng, (16,), np.float32)], device)
    check_op(F.conv2d, TF.conv2d,
             [x, rand(rng, (4, 8, 1, 1), np.float32), rand(rng, (4,), np.float32)], device)
    check_op(lambda a, w, b: F.conv_transpose2d(a, w, b, stride=2),
             lambda a, w, b: TF.conv_transpose2d(a, w, b, stride=2),
             [x, rand(rng, (8, 4, 2, 2), np.float32), rand(rng, (4,), np.float32)], device)


# ---------------------------------------------------------------- pooling and activations
@given(case=pool_case(), dtype=dtypes, seed=seeds)
def test_max_pool2d(device, case, dtype, seed):
    N, C, H, W, kernel, stride = case
    x = rand_distinct(np.random.default_rng(seed), (N, C, H, W), dtype)
    check_op(lambda t: F.max_pool2d(t, kernel, stride),
             lambda t: TF.max_pool2d(t, kernel, stride), [x], device, seed)


@given(shape=shapes_4d, dtype=dtypes, seed=seeds)
def test_relu(device, shape, dtype, seed):
    x = rand_away_from_zero(np.random.default_rng(seed), shape, dtype)
    check_op(F.relu, torch.relu, [x], device, seed)


@given(shape=shapes_4d, dim=st.integers(-4, 3), dtype=dtypes, seed=seeds)
def test_softmax_and_log_softmax(device, shape, dim, dtype, seed):
    x = rand(np.random.default_rng(seed), shape, dtype) * 3
    check_op(lambda t: F.softmax(t, dim), lambda t: torch.softmax(t, dim), [x], device, seed)
    check_op(lambda t: F.log_softmax(t, dim), lambda t: torch.log_softmax(t, dim), [x],
             device, seed)


@given(n=st.integers(1, 4), dim=st.integers(0, 3), dtype=dtypes, seed=seeds,
       base=shapes_4d, sizes=st.lists(st.integers(1, 4), min_size=4, max_size=4))
def test_cat(device, n, dim, dtype, seed, base, sizes):
    rng = np.random.default_rng(seed)
    shapes = [tuple(sizes[i] if d == dim else s for d, s in enumerate(base)) for i in range(n)]
    inputs = [rand(rng, s, dtype) for s in shapes]
    check_op(lambda *t: F.cat(t, dim), lambda *t: torch.cat(t, dim), inputs, device, seed)


# ---------------------------------------------------------------- arithmetic and reductions
BINARY = {"add": (F.add, torch.add), "sub": (F.sub, torch.sub), "mul": (F.mul, torch.mul),
          "div": (F.div, torch.div)}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(shape=shapes_4d, bshape=st.integers(0, 15), dtype=dtypes, seed=seeds)
def test_binary_broadcasting(device, name, shape, bshape, dtype, seed):
    rng = np.random.default_rng(seed)
    other = tuple(1 if bshape >> i & 1 else s for i, s in enumerate(shape))[1:]  # drop a dim too
    ours, theirs = BINARY[name]
    y = rand(rng, other, dtype)
    if name == "div":
        y = np.sign(y) * (np.abs(y) + 0.5)
    check_op(ours, theirs, [rand(rng, shape, dtype), y.astype(dtype)], device, seed)


@given(shape=shapes_4d, dim=st.one_of(st.none(), st.integers(-4, 3),
                                      st.sampled_from([(0, 2), (1, 3), (0, 2, 3)])),
       keepdim=st.booleans(), dtype=dtypes, seed=seeds)
def test_sum_mean(device, shape, dim, keepdim, dtype, seed):
    x = rand(np.random.default_rng(seed), shape, dtype)
    if dim is None:
        check_op(F.sum, torch.sum, [x], device, seed)
        check_op(F.mean, torch.mean, [x], device, seed)
    else:
        check_op(lambda t: F.sum(t, dim, keepdim), lambda t: torch.sum(t, dim, keepdim), [x],
                 device, seed)
        check_op(lambda t: F.mean(t, dim, keepdim), lambda t: torch.mean(t, dim, keepdim), [x],
                 device, seed)


@given(shape=shapes_4d, dtype=dtypes, seed=seeds, p=st.sampled_from([2, 3, 0.5, -1.0]))
def test_unary(device, shape, dtype, seed, p):
    rng = np.random.default_rng(seed)
    x = rand(rng, shape, dtype)
    pos = (np.abs(x) + 0.5).astype(dtype)
    check_op(F.exp, torch.exp, [x], device, seed)
    check_op(F.log, torch.log, [pos], device, seed)
    check_op(F.neg, torch.neg, [x], device, seed)
    check_op(lambda t: F.pow(t, p), lambda t: torch.pow(t, p), [pos], device, seed)
    check_op(lambda t: F.reshape(t, (shape[0], -1)), lambda t: t.reshape(shape[0], -1), [x],
             device, seed)
    check_op(lambda t: t[:, 1:, ::2], lambda t: t[:, 1:, ::2], [x], device, seed)


# ---------------------------------------------------------------- losses
@st.composite
def loss_case(draw):
    # (24, 40): up to 3840 positions, more than one block of the CUDA loss kernels' sums
    spatial = draw(st.sampled_from([(), (1, 1), (3, 5), (7, 4), (24, 40)]))
    return draw(st.integers(1, 4)), draw(st.integers(2, 6)), spatial


def _targets(rng, N, C, spatial):
    return rng.integers(0, C, size=(N,) + spatial)


@given(case=loss_case(), weighted=st.booleans(), reduction=st.sampled_from(["mean", "sum", "none"]),
       dtype=dtypes, seed=seeds)
def test_cross_entropy(device, case, weighted, reduction, dtype, seed):
    N, C, spatial = case
    rng = np.random.default_rng(seed)
    x = rand(rng, (N, C) + spatial, dtype) * 3
    t = _targets(rng, N, C, spatial)
    w = (rng.random(C) + 0.1).astype(dtype) if weighted else None
    check_op(lambda a: F.cross_entropy(a, t, w, reduction),
             lambda a: TF.cross_entropy(a, torch.tensor(t),
                                        None if w is None else torch.tensor(w),
                                        reduction=reduction), [x], device, seed)


def torch_dice(x, t, smooth, classes, per_image):
    p = torch.softmax(x, 1)
    y = TF.one_hot(torch.tensor(t), x.shape[1]).movedim(-1, 1).to(x.dtype)
    axes = tuple(range(2, x.ndim)) if per_image else (0,) + tuple(range(2, x.ndim))
    def total(a):   # torch's sum(()) would reduce every axis
        return a.sum(axes) if axes else a
    dice = (2 * total(p * y) + smooth) / (total(p) + total(y) + smooth)
    return 1 - dice[..., classes].mean()


@given(case=loss_case(), smooth=st.sampled_from([0.0, 1e-5, 1.0]), per_image=st.booleans(),
       dtype=dtypes, seed=seeds, data=st.data())
def test_dice_loss(device, case, smooth, per_image, dtype, seed, data):
    N, C, spatial = case
    classes = data.draw(st.lists(st.integers(0, C - 1), min_size=1, max_size=C, unique=True))
    rng = np.random.default_rng(seed)
    x = rand(rng, (N, C) + spatial, dtype)
    t = _targets(rng, N, C, spatial)
    if smooth == 0:   # an absent class would divide 0 by 0: make every class present somewhere
        t.reshape(-1)[:C] = np.arange(C)[: t.size]
        if t.size < C:
            smooth = 1.0
    check_op(lambda a: F.dice_loss(a, t, smooth, classes, per_image),
             lambda a: torch_dice(a, t, smooth, classes, per_image), [x], device, seed)


def torch_focal(x, t, gamma, w, reduction):
    tt = torch.tensor(t)
    logp_t = torch.log_softmax(x, 1).gather(1, tt.unsqueeze(1)).squeeze(1)
    wt = torch.ones_like(logp_t) if w is None else torch.tensor(w)[tt]
    loss = -wt * (1 - logp_t.exp()) ** gamma * logp_t
    return {"mean": loss.sum() / wt.sum(), "sum": loss.sum(), "none": loss}[reduction]


@given(case=loss_case(), gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), weighted=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), dtype=dtypes, seed=seeds)
def test_focal_loss(device, case, gamma, weighted, reduction, dtype, seed):
    N, C, spatial = case
    rng = np.random.default_rng(seed)
    x = rand(rng, (N, C) + spatial, dtype)
    t = _targets(rng, N, C, spatial)
    w = (rng.random(C) + 0.1).astype(dtype) if weighted else None
    check_op(lambda a: F.focal_loss(a, t, gamma, w, reduction),
             lambda a: torch_focal(a, t, gamma, w, reduction), [x], device, seed)


def test_focal_with_gamma_zero_is_cross_entropy():
    rng = np.random.default_rng(1)
    x = rand(rng, (3, 4, 5, 5), np.float64)
    t = _targets(rng, 3, 4, (5, 5))
    w = np.array([0.1, 0.3, 0.3, 0.3])
    import minicnn
    a = F.focal_loss(minicnn.Tensor(x), t, 0.0, w).item()
    b = F.cross_entropy(minicnn.Tensor(x), t, w).item()
    assert abs(a - b) < 1e-12


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_loss_saturated_logits_have_finite_zero_gradient(gamma):
    """p_t rounding to 1: (1-p_t)^(gamma-1) is infinite, but the gradient's limit is 0."""
    import minicnn
    x = minicnn.Tensor(np.array([[50.0, 0.0, 0.0]]), requires_grad=True)
    loss = F.focal_loss(x, np.array([0]), gamma)
    loss.backward()
    assert np.isfinite(loss.item()) and np.all(np.isfinite(x.grad))
    np.testing.assert_allclose(x.grad, 0.0, atol=1e-20)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_batches_split_over_threads(monkeypatch, threads):
    """ReLU, max-pool and cross-entropy on tensors large enough for the NumPy backend to split
    the batch over threads (``_over_batch``): same results as PyTorch, forward and gradients."""
    from minicnn.backend import numpy_backend
    monkeypatch.setattr(numpy_backend, "_THREADS", threads)
    monkeypatch.setattr(numpy_backend, "_pool", None)
    rng = np.random.default_rng(threads)
    shape = (5, 8, 120, 120)
    assert np.prod(shape) >= numpy_backend._PARALLEL_MIN_ELEMENTS
    check_op(F.relu, TF.relu, [rand_away_from_zero(rng, shape, np.float32)])
    x = rand_distinct(rng, shape, np.float32)
    for k in (2, 3):
        check_op(lambda t: F.max_pool2d(t, k), lambda t: TF.max_pool2d(t, k), [x])
    logits = rand(rng, (5, 4, 180, 180), np.float32)
    target = rng.integers(0, 4, (5, 180, 180))
    w = np.array([0.1, 0.3, 0.3, 0.3], np.float32)
    check_op(lambda a: F.cross_entropy(a, target, w),
             lambda a: TF.cross_entropy(a, torch.from_numpy(target), torch.from_numpy(w)), [logits])


@pytest.mark.parametrize("threads", [2, 3])
def test_convolutions_split_over_threads(monkeypatch, threads):
    """The NumPy backend's convolutions split into tasks over its threads (``_over_parts``:
    images for the forward and input gradient, input channels for the weight gradient, BLAS on
    one thread meanwhile): against PyTorch, and against the plain path (one call, BLAS's own
    threads), forward and every gradient, on the U-Net's layer kinds. BLAS's thread count is
    the same afterwards."""
    from minicnn.backend import blas_threads, numpy_backend
    rng = np.random.default_rng(threads)
    x = rand(rng, (7, 6, 10, 10), np.float32)
    cases = [(lambda a, w, b: F.conv2d_relu(a, w, b, padding=1),
              lambda a, w, b: torch.relu(TF.conv2d(a, w, b, padding=1)), (9, 6, 3, 3), 9),
             (F.conv2d, TF.conv2d, (4, 6, 1, 1), 4),
             (lambda a, w, b: F.conv_transpose2d(a, w, b, stride=2),
              lambda a, w, b: TF.conv_transpose2d(a, w, b, stride=2), (6, 5, 2, 2), 5)]
    blas_before = blas_threads.get()
    original = numpy_backend._over_parts
    for ours, theirs, w_shape, outputs in cases:
        inputs = [x, rand(rng, w_shape, np.float32), rand(rng, (outputs,), np.float32)]
        results = {}
        for split in (False, True):
            monkeypatch.setattr(numpy_backend, "_THREADS", threads if split else 1)
            monkeypatch.setattr(numpy_backend, "_pool", None)
            if split:
                calls = []
                monkeypatch.setattr(numpy_backend, "_over_parts",
                                    lambda fn, n: (calls.append(n), original(fn, n))[1])
            ts = [minicnn.Tensor(a, requires_grad=True) for a in inputs]
            y = ours(*ts)
            y.backward(np.random.default_rng(0).standard_normal(y.shape).astype(np.float32))
            results[split] = [y.numpy()] + [t.grad for t in ts]
            if split:
                assert calls, "the convolution did not go through _over_parts"
                check_op(ours, theirs, inputs)
        for plain, fast in zip(results[False], results[True]):
            np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())
    assert blas_threads.get() == blas_before


def test_blas_threads_limit_restores_the_count():
    from minicnn.backend import blas_threads
    if not blas_threads.available():
        pytest.skip("NumPy's BLAS is not an OpenBLAS found by minicnn.backend.blas_threads")
    before = blas_threads.get()
    with blas_threads.limit(1):
        assert blas_threads.get() == 1
    assert blas_threads.get() == before
    assert blas_threads.corename() and "OpenBLAS" in blas_threads.config()


def test_max_pool_offsets_on_ties_and_nan_match_argmax():
    """The non-overlapping fast path keeps argmax's rules: the first max in row-major order
    wins a tie, and a NaN counts as the max (the first NaN wins)."""
    from minicnn.backend import numpy_backend

    def windows(x, k):     # (N, C, Ho, Wo, kH*kW), each window's values in row-major order
        N, C, H, W = x.shape
        w = x.reshape(N, C, H // k[0], k[0], W // k[1], k[1]).transpose(0, 1, 2, 4, 3, 5)
        return w.reshape(N, C, H // k[0], W // k[1], k[0] * k[1])
    rng = np.random.default_rng(0)
    for k in ((2, 2), (3, 2), (1, 4)):
        x = rng.integers(-1, 2, size=(2, 3, 12, 12)).astype(np.float32)   # many ties
        for nan in (False, True):
            if nan:
                x[0, 0, 0, :2] = np.nan
                x[1, 2, 5, 5] = np.nan
            y, idx = numpy_backend.maxpool2d_forward(x, k, k)
            np.testing.assert_array_equal(idx, windows(x, k).argmax(-1))
            np.testing.assert_array_equal(y, windows(x, k).max(-1))    # NaN where a NaN is


# ---------------------------------------------------------------- normalisation
@given(N=st.integers(1, 3), G=st.integers(1, 3), per_group=st.integers(1, 3),
       H=st.integers(2, 7), W=st.integers(2, 7), affine=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-3]), dtype=dtypes, seed=seeds)
def test_group_norm(device, N, G, per_group, H, W, affine, eps, dtype, seed):
    """Groups of >= 4 elements (H, W >= 2): a group's variance is not ~0, where float32
    rounding would be amplified by 1/sigma in both libraries differently."""
    rng = np.random.default_rng(seed)
    C = G * per_group
    x = (rand(rng, (N, C, H, W), dtype) * 3 + 1).astype(dtype)   # mean and scale not 0 / 1
    if affine:
        w, b = rand(rng, (C,), dtype), rand(rng, (C,), dtype)
        check_op(lambda x, w, b: F.group_norm(x, G, w, b, eps),
                 lambda x, w, b: TF.group_norm(x, G, w, b, eps), [x, w, b], device, seed)
    else:
        check_op(lambda x: F.group_norm(x, G, eps=eps),
                 lambda x: TF.group_norm(x, G, eps=eps), [x], device, seed)


def test_group_norm_rejects_bad_arguments():
    x = minicnn.Tensor(np.zeros((2, 6, 3, 3), np.float32))
    with pytest.raises(ValueError, match="positive divisor of the 6 channels"):
        F.group_norm(x, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        F.group_norm(x, 3, minicnn.Tensor(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match="4-D"):
        F.group_norm(minicnn.Tensor(np.zeros((6, 3), np.float32)), 3)


# ---------------------------------------------------------------- TF32 (emulated on the CPU)
def _tf32_oracle(a):
    """``a`` rounded to TF32 (10 mantissa bits, to nearest, ties away from zero), computed
    independently of the backend: from the float's exponent, in float64."""
    a = np.asarray(a, np.float64)
    ulp = np.ldexp(1.0, np.frexp(a)[1] - 11)          # the last kept bit's value, per element
    return np.sign(a) * np.floor(np.abs(a) / ulp + 0.5) * ulp


def test_to_tf32_rounds_as_tensor_cores_do():
    from minicnn.backend import numpy_backend as nb
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(10000) * 10.0 ** rng.integers(-30, 30, 10000)).astype(np.float32)
    ties = np.array([1 + 2**-11, -(1 + 2**-11), 1 + 3 * 2**-11, 2 - 2**-12, 1 + 2**-10],
                    np.float32)
    for a in (x, ties):
        got = nb.to_tf32(a)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.astype(np.float64), _tf32_oracle(a))
    assert list(nb.to_tf32(ties)) == [1 + 2**-10, -(1 + 2**-10), 1 + 2 * 2**-10, 2.0, 1 + 2**-10]
    assert np.all(np.abs(nb.to_tf32(x) - x) <= np.abs(x) * 2.0**-11)
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    np.testing.assert_array_equal(nb.to_tf32(special), special)
    np.testing.assert_array_equal(nb.to_tf32(x.astype(np.float64)), x.astype(np.float64))


def _conv_and_grads(x, w, b, stride, padding, seed):
    """minicnn's conv2d of float arrays: the output and the gradients of x, W and b for a
    random output gradient (returned too)."""
    ts = [minicnn.Tensor(a, requires_grad=True) for a in (x, w, b)]
    y = F.conv2d(*ts, stride=stride, padding=padding)
    gy = np.random.default_rng(seed).standard_normal(y.shape).astype(x.dtype)
    y.backward(gy)
    return [y.numpy()] + [t.grad for t in ts], gy


@given(case=conv_case(), seed=seeds)
def test_tf32_precision_rounds_every_convolution_pass(case, seed):
    """With ``set_precision("tf32")`` the NumPy backend's convolution, forward and every
    gradient, is PyTorch's (float64) on operands rounded to TF32 by an independent oracle:
    x and W, then the output gradient with W (input gradient) and with x (weight gradient);
    its sums are fp32, so within float32 rounding. The bias gradient, a plain sum of the
    output gradient and no convolution, is not rounded."""
    from minicnn.backend import numpy_backend as nb
    N, C, O, H, W, kH, kW, stride, padding = case
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(s).astype(np.float32)
               for s in ((N, C, H, W), (O, C, kH, kW), (O,)))
    previous = nb.set_precision("tf32")
    try:
        got, gy = _conv_and_grads(x, w, b, stride, padding, seed)
    finally:
        nb.set_precision(previous)
    xt, wt = (torch.tensor(_tf32_oracle(a), requires_grad=True) for a in (x, w))
    yt = TF.conv2d(xt, wt, torch.tensor(b, dtype=torch.float64), stride, padding)
    refs = (yt,) + torch.autograd.grad(yt, (xt, wt), torch.tensor(_tf32_oracle(gy))) \
        + (torch.tensor(gy.astype(np.float64).sum(axis=(0, 2, 3))),)   # a sum: not rounded
    for name, a, ref in zip(("y", "dx", "dW", "db"), got, refs):
        ref = ref.detach().numpy()
        assert a.shape == ref.shape and a.dtype == np.float32, name
        assert np.abs(a - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1.0), name


def test_tf32_precision_changes_float32_only():
    """The rounding is there (fp32 results differ from TF32 ones by more than float32
    rounding), float64 is never rounded, and another precision is refused by name."""
    from minicnn.backend import numpy_backend as nb
    rng = np.random.default_rng(1)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 9, 9), (6, 5, 3, 3)))
    b = rng.standard_normal(6).astype(np.float32)
    args = ((1, 1), (1, 1), 2)
    fp32, _ = _conv_and_grads(x, w, b, *args)
    f64_exact, _ = _conv_and_grads(*(a.astype(np.float64) for a in (x, w, b)), *args)
    previous = nb.set_precision("tf32")
    try:
        tf32, _ = _conv_and_grads(x, w, b, *args)
        f64, _ = _conv_and_grads(*(a.astype(np.float64) for a in (x, w, b)), *args)
    finally:
        nb.set_precision(previous)
    for name, a, e in zip(("y", "dx", "dW"), tf32, fp32):
        assert np.abs(a - e).max() > 1e-5 * np.abs(e).max(), name     # the rounding is there
    for a, e in zip(f64, f64_exact):
        np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match=r"set_precision: expected one of \['fp32', 'tf32'\]"):
        nb.set_precision("bf16")


# TF32 on a GPU against cuDNN in TF32: each side rounds the operands of every product to
# TF32 and sums in fp32; against the exact convolution of the unrounded operands each is
# within TF32_TOL of the largest output (dev/cuda/ladder.py derives it: the rounding errors
# are independent, a random walk of about 2^-11 of an output's size, and the largest of many
# outputs reaches a few times that). cuDNN may transform the operands first (Winograd, FFT)
# and round those, so the two sides' errors are not the same numbers: twice the bound.
TF32_TOL = 2e-3
TF32_VS_CUDNN_TOL = 2 * TF32_TOL


def _conv_and_grads_on(device, x, w, b, stride, padding, gy):
    """minicnn's conv2d on ``device``: the output and the gradients of x and W for the output
    gradient ``gy``, as host arrays."""
    ts = [minicnn.Tensor(a).to(device) for a in (x, w, b)]
    for t in ts:
        t.requires_grad = True
    y = F.conv2d(*ts, stride=stride, padding=padding)
    y.backward(minicnn.Tensor(gy).to(device).data)
    return [y.numpy()] + [t.backend.to_host(t.grad) for t in ts[:2]]


@pytest.mark.parametrize("device", ["cuda"], indirect=True)
@given(case=conv_case(), seed=seeds)
def test_tf32_convolutions_on_the_gpu(device, case, seed):
    """With ``CudaConfig(precision="tf32")`` the CUDA backend's convolution, forward and both
    gradients, is (1) PyTorch's float64 convolution of operands rounded to TF32 by the
    independent oracle, to fp32 rounding (1e-5 of the scale: the tensor cores' products of
    TF32 values are exact, their sums fp32), and (2) cuDNN's with TF32 on, within
    TF32_VS_CUDNN_TOL of the scale."""
    import dataclasses
    from minicnn.backend.cuda import config
    N, C, O, H, W, kH, kW, stride, padding = case
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(s).astype(np.float32)
               for s in ((N, C, H, W), (O, C, kH, kW), (O,)))
    Ho, Wo = ((n + 2 * p - k) // s + 1 for n, k, s, p in zip((H, W), (kH, kW), stride, padding))
    gy = rng.standard_normal((N, O, Ho, Wo)).astype(np.float32)
    with config.configured(dataclasses.replace(config.current(), precision="tf32")):
        got = _conv_and_grads_on(device, x, w, b, stride, padding, gy)
    xt, wt = (torch.tensor(_tf32_oracle(a), requires_grad=True) for a in (x, w))
    yt = TF.conv2d(xt, wt, torch.tensor(b, dtype=torch.float64), stride, padding)
    exact = (yt,) + torch.autograd.grad(yt, (xt, wt), torch.tensor(_tf32_oracle(gy)))
    flags = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        xc, wc = (torch.tensor(a, device="cuda", requires_grad=True) for a in (x, w))
        yc = TF.conv2d(xc, wc, torch.tensor(b, device="cuda"), stride, padding)
        cudnn = (yc,) + torch.autograd.grad(yc, (xc, wc), torch.tensor(gy, device="cuda"))
    finally:
        torch.backends.cudnn.allow_tf32 = flags
    for name, a, e, c in zip(("y", "dx", "dW"), got, exact, cudnn):
        e, c = e.detach().cpu().numpy(), c.detach().cpu().numpy()
        scale = max(np.abs(e).max(), 1.0)
        assert a.shape == e.shape and a.dtype == np.float32, name
        assert np.abs(a - e).max() <= 1e-5 * scale, name
        assert np.abs(a - c).max() <= TF32_VS_CUDNN_TOL * scale, name
