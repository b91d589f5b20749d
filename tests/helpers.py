"""Test helpers: hypothesis strategies for shapes and tensors, and ``check_op``.

``check_op`` (after tinygrad's ``helper_test_op``) runs the same seeded inputs through minicnn
and PyTorch, compares the outputs, then back-propagates the same random upstream gradient
through both and compares the gradient of every input. Every op test is then a few lines.
"""
import numpy as np
import torch
from hypothesis import strategies as st

import minicnn

DTYPES = (np.float32, np.float64)
TOL = {np.float32: 2e-4, np.float64: 1e-9}

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from(DTYPES)


def rand(rng, shape, dtype):
    """Standard-normal values."""
    return rng.standard_normal(shape).astype(dtype)


def rand_distinct(rng, shape, dtype):
    """Values that are all different by at least 0.1 (no ties in a max-pool window)."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * 0.1 - 0.05 * n).astype(dtype)


def rand_away_from_zero(rng, shape, dtype, gap=0.1):
    """Values with |x| >= gap (no ReLU kink at 0 within finite-difference reach)."""
    mag = gap + rng.random(shape)
    return (mag * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)


def assert_close(ours, theirs, dtype, what):
    ours = np.asarray(ours)
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch {theirs.shape}"
    tol = TOL[np.dtype(dtype).type]
    scale = max(1.0, float(np.abs(theirs).max())) if theirs.size else 1.0
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * scale, err_msg=what)


def check_op(ours, theirs, inputs, device="cpu", seed=0, grad=True):
    """Compare ``ours(*tensors)`` (minicnn) with ``theirs(*tensors)`` (torch).

    ``inputs``: float NumPy arrays, each becomes a leaf that requires grad in both libraries.
    Returns the minicnn output tensor.
    """
    dtype = inputs[0].dtype.type
    mc = [minicnn.Tensor(a, requires_grad=grad).to(device) for a in inputs]
    th = [torch.tensor(a, requires_grad=grad) for a in inputs]
    out, ref = ours(*mc), theirs(*th)
    assert out.dtype == inputs[0].dtype, f"output dtype {out.dtype}, inputs {inputs[0].dtype}"
    assert_close(out.numpy(), ref.detach().numpy(), dtype, "forward")
    if grad:
        upstream = np.random.default_rng(seed).standard_normal(ref.shape).astype(dtype)
        out.backward(upstream)
        ref.backward(torch.tensor(upstream))
        for i, (m, t) in enumerate(zip(mc, th)):
            assert m.grad is not None, f"input {i}: no gradient"
            assert_close(minicnn.Tensor(m.grad).numpy(), t.grad.numpy(), dtype, f"grad of input {i}")
    return out


def finite_difference_check(fn, inputs, seed=0, eps=1e-6, rtol=1e-6):
    """Directional gradient check in float64: ``<grad f, d>`` against the central difference
    ``(f(x + eps d) - f(x - eps d)) / (2 eps)``, with ``f = sum(fn(x) * u)`` for a random u."""
    rng = np.random.default_rng(seed)
    inputs = [np.asarray(a, dtype=np.float64) for a in inputs]
    dirs = [rng.standard_normal(a.shape) for a in inputs]
    tensors = [minicnn.Tensor(a, requires_grad=True) for a in inputs]
    out = fn(*tensors)
    u = rng.standard_normal(out.shape)
    out.backward(u)
    analytic = sum(float((t.grad * d).sum()) for t, d in zip(tensors, dirs))

    def f(step):
        with minicnn.no_grad():
            ts = [minicnn.Tensor(a + step * d) for a, d in zip(inputs, dirs)]
            return float((fn(*ts).data * u).sum())
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    assert abs(analytic - numeric) <= rtol * max(1.0, abs(numeric)) + 1e-7, \
        f"analytic {analytic} vs numeric {numeric}"


@st.composite
def conv_case(draw, transposed=False):
    """(N, C_in, C_out, H, W, kH, kW, stride, padding), only valid combinations."""
    N, C, O = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    H, W = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    kH, kW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pH, pW = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    if transposed:
        # output (H-1)s - 2p + k must be >= 1
        pH = min(pH, ((H - 1) * stride[0] + kH - 1) // 2)
        pW = min(pW, ((W - 1) * stride[1] + kW - 1) // 2)
    else:
        kH, kW = min(kH, H + 2 * pH), min(kW, W + 2 * pW)
    return N, C, O, H, W, kH, kW, stride, (pH, pW)


@st.composite
def pool_case(draw):
    """(N, C, H, W, kernel, stride) with the kernel fitting the input; windows may overlap."""
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    H, W = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    kernel = (draw(st.integers(1, min(5, H))), draw(st.integers(1, min(5, W))))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    return N, C, H, W, kernel, stride


shapes_4d = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 13), st.integers(1, 13))
