"""Optimizers: several steps on the same parameters and gradients as torch.optim, to 1e-6."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import minicnn
from minicnn import optim
from helpers import seeds

CASES = {
    "adam": (optim.Adam, torch.optim.Adam,
             st.fixed_dictionaries({"lr": st.sampled_from([1e-3, 2e-4, 0.05]),
                                    "betas": st.sampled_from([(0.9, 0.999), (0.9, 0.99), (0.5, 0.9)]),
                                    "eps": st.sampled_from([1e-8, 1e-6]),
                                    "weight_decay": st.sampled_from([0.0, 0.01])})),
    "sgd": (optim.SGD, torch.optim.SGD,
            st.fixed_dictionaries({"lr": st.sampled_from([0.1, 0.01]),
                                   "momentum": st.sampled_from([0.0, 0.9]),
                                   "dampening": st.sampled_from([0.0, 0.1]),
                                   "weight_decay": st.sampled_from([0.0, 1e-3])})),
    "adagrad": (optim.Adagrad, torch.optim.Adagrad,
                st.fixed_dictionaries({"lr": st.sampled_from([0.1, 0.01]),
                                       "lr_decay": st.sampled_from([0.0, 0.01]),
                                       "weight_decay": st.sampled_from([0.0, 1e-3]),
                                       "eps": st.sampled_from([1e-10, 1e-6])})),
}


def run_both(name, hyper, seed, device="cpu", steps=6, dtype=np.float32,
             shapes=((4, 3, 3, 3), (4,), (7,))):
    ours_cls, theirs_cls, _ = CASES[name]
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    mine = [minicnn.Tensor(a.copy(), requires_grad=True).to(device) for a in init]
    ref = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt, topt = ours_cls(mine, **hyper), theirs_cls(ref, **hyper)
    for _ in range(steps):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt.zero_grad()
        topt.zero_grad()
        for p, q, g in zip(mine, ref, grads):
            p.grad = minicnn.Tensor(g).to(device).data
            q.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, q in zip(mine, ref):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-6, atol=1e-6)
    return opt


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data(), seed=seeds)
def test_matches_torch(device, name, data, seed):
    hyper = data.draw(CASES[name][2])
    if name == "sgd" and data.draw(st.booleans()) and hyper["momentum"]:
        hyper.update(nesterov=True, dampening=0.0)
    run_both(name, hyper, seed, device)


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_resumes_exactly(name):
    hyper = {"adam": {"lr": 0.01}, "sgd": {"lr": 0.1, "momentum": 0.9}, "adagrad": {"lr": 0.1}}[name]
    rng = np.random.default_rng(0)
    init = rng.standard_normal(5).astype(np.float32)
    grads = [rng.standard_normal(5).astype(np.float32) for _ in range(4)]

    def steps(opt, p, gs):
        for g in gs:
            p.grad = g
            opt.step()
    p1 = minicnn.Tensor(init.copy(), requires_grad=True)
    o1 = CASES[name][0]([p1], **hyper)
    steps(o1, p1, grads)
    p2 = minicnn.Tensor(init.copy(), requires_grad=True)
    o2 = CASES[name][0]([p2], **hyper)
    steps(o2, p2, grads[:2])
    state = o2.state_dict()
    p3 = minicnn.Tensor(p2.numpy(), requires_grad=True)
    o3 = CASES[name][0]([p3], lr=123.0)
    o3.load_state_dict(state)
    steps(o3, p3, grads[2:])
    np.testing.assert_array_equal(p1.data, p3.data)


def test_bad_arguments():
    p = minicnn.Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="lr must be"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="does not require grad"):
        optim.SGD([minicnn.Tensor(np.ones(2))])
    o = optim.Adam([p])
    with pytest.raises(ValueError, match="parameters"):
        o.load_state_dict({"hyper": {}, "steps": [], "state": []})


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_adam_on_a_large_tensor_split_over_threads(monkeypatch, threads):
    """A parameter large enough for the NumPy backend to split Adam's update over threads."""
    from minicnn.backend import numpy_backend
    monkeypatch.setattr(numpy_backend, "_THREADS", threads)
    monkeypatch.setattr(numpy_backend, "_pool", None)
    shapes = ((64, 32, 17, 17), (64,))
    assert np.prod(shapes[0]) >= numpy_backend._PARALLEL_MIN_ELEMENTS
    run_both("adam", {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.01},
             threads, steps=3, shapes=shapes)
