"""Rung 5 of the ladder, Winograd (``dev/cuda/conv_5_winograd.cu`` and its launcher
``dev/cuda/winograd.py``), without a GPU: the kernels in the CPU emulator against the direct
double sums (``tests/kernel_emu/winograd_check.cpp``), and the launcher with its kernels in
the emulator against numpy_backend, forward and both gradients, both tile sizes, with split K.
Not in the library until a GPU run times it faster (benchmarks/NOTES.md entries 18-25)."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import emulator as emu
from minicnn.backend import numpy_backend as nb
from minicnn.backend.cuda import config, runtime
from minicnn.backend.cuda.config import CudaConfig

DEFAULT = CudaConfig().variant
NO_CXX = "no C++ compiler (g++ or $CXX) to build the emulator"


def _load_winograd():
    """dev/cuda/winograd.py, loaded by path (dev/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "winograd_rung", os.path.join(emu.LADDER, "winograd.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wg = _load_winograd()


@pytest.mark.skipif(emu.CXX is None, reason=NO_CXX)
@pytest.mark.parametrize("variant", [DEFAULT, "plain"])
def test_winograd_kernels_in_the_emulator(variant, tmp_path):
    """winograd_check.cpp: every tile of the GEMM, both dtypes, F(2x2, 3x3) and F(4x4, 3x3)
    (forward with bias and ReLU, input gradient) and F(3x3, 2x2), F(3x3, 4x4) (weight
    gradient), 1 and 2-3 K slices (entries 18, 19, 24: a sign in B^T, a constant of G, the
    last term of A^T, a dropped slice were each caught)."""
    count, _ = emu.run_check("winograd_check", variant, tmp_path, minimum=250)
    assert count == (392 if variant == DEFAULT else 280)


@pytest.mark.skipif(emu.CXX is None, reason=NO_CXX)
def test_winograd_kernels_under_asan(tmp_path):
    """The same under AddressSanitizer, every buffer's guard zone poisoned (a read past the
    end of a transformed operand or workspace stops the program)."""
    if not emu.asan_works(tmp_path):
        pytest.skip(f"{emu.CXX} cannot build with -fsanitize=address (no libasan)")
    env = dict(os.environ, ASAN_OPTIONS="detect_stack_use_after_return=0:detect_leaks=0")
    _, stderr = emu.run_check("winograd_check", DEFAULT, tmp_path,
                              ("-O1", "-fsanitize=address,undefined",
                               "-fno-sanitize-recover=undefined"), env, minimum=300)
    assert "ERROR: AddressSanitizer" not in stderr and "runtime error" not in stderr


def _use_the_emulator(monkeypatch, tmp_path_factory, launched):
    """winograd.py with CuPy replaced by NumPy and each kernel by the emulator's (the shipped
    build's options); the kernels' names go into ``launched``."""
    build_dir = str(tmp_path_factory.getbasetemp())
    emu.use_the_emulator(monkeypatch, DEFAULT, build_dir)
    monkeypatch.setattr(wg, "_kernel", lambda name: launched.add(name) or emu.emulated_kernel(
        "conv_5_winograd", DEFAULT, build_dir, name))


@pytest.mark.skipif(emu.CXX is None, reason=NO_CXX)
def test_winograd_launcher_computes_the_convolution_in_the_emulator(monkeypatch,
                                                                    tmp_path_factory):
    """forward (bias, ReLU), input_grad and weight_grad of winograd.py, launcher and kernels
    together, against numpy_backend's 3x3 / stride 1 / padding 1 convolution: 2x2 tiles (6 px
    sides), 4x4 tiles (sides 4 divides) and tile=2 on those, K split into slices (1100
    channels summed), both dtypes. Each launch's arguments are checked against the kernel's
    parameter types."""
    launched = set()
    _use_the_emulator(monkeypatch, tmp_path_factory, launched)
    rng = np.random.default_rng(1)
    for dtype, tol in ((np.float32, 2e-5), (np.float64, 1e-12)):
        for (N, C, H, W, O), tile in [((2, 16, 6, 10, 17), 4), ((2, 16, 8, 12, 17), 4),
                                      ((2, 16, 8, 12, 17), 2), ((1, 1100, 2, 2, 16), 4),
                                      ((1, 1100, 4, 4, 16), 4), ((1, 16, 4, 4, 1100), 4)]:
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            w = rng.standard_normal((O, C, 3, 3)).astype(dtype)
            b = rng.standard_normal(O).astype(dtype)
            y = nb.conv2d_forward(x, w, b, (1, 1), (1, 1))
            gy = rng.standard_normal(y.shape).astype(dtype)
            for what, got, ref in [
                    ("forward", wg.forward(x, w, b, tile=tile), y),
                    ("forward + ReLU", wg.forward(x, w, b, relu=True, tile=tile),
                     nb.conv2d_forward(x, w, b, (1, 1), (1, 1), relu=True)),
                    ("forward, no bias", wg.forward(x, w, tile=tile),
                     nb.conv2d_forward(x, w, None, (1, 1), (1, 1))),
                    ("input gradient", wg.input_grad(gy, w, tile=tile),
                     nb.conv2d_backward_input(gy, w, x.shape, (1, 1), (1, 1))),
                    ("weight gradient", wg.weight_grad(x, gy, tile=tile),
                     nb.conv2d_backward_weight(gy, x, w.shape, (1, 1), (1, 1)))]:
                scale = max(1.0, float(np.abs(ref).max()))
                assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape)
                err = float(np.abs(got - ref).max()) / scale
                assert err <= tol, (what, dtype.__name__, (N, C, H, W, O), tile, err)
    kinds = {n.rsplit("_", 1)[0] for n in launched}
    assert {f"{m}_{k}" for m in ("winograd", "winograd4")
            for k in ("in", "filter", "conv_out", "x", "dy", "out")} <= kinds
    assert {"winograd_gemm_m32n128", "winograd_gemm_m64n64"} <= kinds


def test_winograd_tile_rule_and_refusals(monkeypatch):
    """tile=4 takes 4x4 tiles where 4 divides H and W, else 2x2; tile=2 always 2x2; odd sizes,
    other tiles and shapes that are not a 3x3 convolution are refused in one line, before any
    launch."""
    assert [wg.tile_of(H, W) for H, W in ((96, 96), (6, 6), (8, 12), (8, 6), (12, 10))] == \
        [4, 2, 4, 2, 2]
    assert [wg.tile_of(H, W, tile=2) for H, W in ((96, 96), (8, 12))] == [2, 2]
    assert wg.applies(96, 96) and not wg.applies(95, 96) and not wg.applies(96, 7)
    monkeypatch.setattr(runtime, "cupy", emu.EmuCupy)
    monkeypatch.setattr(wg, "_kernel", lambda name: pytest.fail("launched"))
    monkeypatch.setattr(config, "_current", CudaConfig())
    x, w = np.zeros((1, 16, 6, 6), np.float32), np.zeros((8, 16, 3, 3), np.float32)
    for call, match in [
            (lambda: wg.forward(x, w, tile=3), r"tile must be one of \(2, 4\), got 3"),
            (lambda: wg.forward(x[:, :, :5], w), r"need even H and W, got \(5, 6\)"),
            (lambda: wg.forward(x, w[:, :8]), "do not match a 3x3 convolution"),
            (lambda: wg.forward(x, w[..., :2]), "do not match a 3x3 convolution"),
            (lambda: wg.forward(x, w.astype(np.float64)), "weight has dtype float64"),
            (lambda: wg.forward(x, w, np.zeros(3, np.float32)), r"bias must have shape \(8,\)"),
            (lambda: wg.input_grad(x, w), "do not match a 3x3 convolution"),
            (lambda: wg.weight_grad(x, np.zeros((1, 8, 6, 4), np.float32)),
             "does not match input")]:
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert "\n" not in str(err.value) and str(err.value).startswith("winograd")


def test_importing_the_launcher_needs_no_cupy():
    """dev/cuda/winograd.py imports without CuPy (it is imported by the benchmarks on the GPU
    machine and by these tests everywhere); CuPy is imported when a kernel is first built."""
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('w', {os.path.join(emu.LADDER, 'winograd.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "assert m.tile_of(8, 8) == 4 and callable(m.forward)\n")
    env = dict(os.environ, PYTHONPATH=emu.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=emu.ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
