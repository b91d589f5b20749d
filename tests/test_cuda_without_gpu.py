"""What can be checked of the CUDA backend without a GPU: the kernel sources run on the CPU
(``tests/kernel_emu``), the launch planning, the build configuration, and the backends'
common contract.

``tests/kernel_emu/cuda_emu.h`` compiles a ``kernels/*.cu`` file as C++ and runs each launch
block by block, every CUDA thread a fiber that yields at ``__syncthreads()``; the check
programs compare the kernels with plain loops (see the header for what this can and cannot
catch). The same emulator, built as shared libraries and called through ctypes, also runs the
backend's primitives end to end on NumPy arrays (``emulator.use_the_emulator``): launchers,
plans and kernels together, against numpy_backend. Rung 5 of the ladder (Winograd) has its
own file, test_winograd_rung.py. The GPU self-check in ``benchmarks/gpu_check.sh`` remains
the test on real hardware.
"""
import dataclasses
import inspect
import os
import re

import numpy as np
import pytest

import emulator as emu
from minicnn import backend
from minicnn.backend import cuda as cb, numpy_backend as nb
from minicnn.backend.cuda import config, ops, planner, runtime
from minicnn.backend.cuda.config import CudaConfig

CXX = emu.CXX
ROOT = emu.ROOT
DEFAULT = CudaConfig().variant
NO_CXX = "no C++ compiler (g++ or $CXX) to build the emulator"


@pytest.mark.skipif(CXX is None, reason=NO_CXX)
@pytest.mark.parametrize("variant", config.VARIANTS)
def test_kernels_in_the_emulator(variant, tmp_path):
    """Each build of the kernel file that the benchmarks time (``config.VARIANTS``: no
    feature, each feature alone, the default of entry 11, the shipped default)."""
    emu.run_check("conv_check", variant, tmp_path)


@pytest.mark.skipif(CXX is None, reason=NO_CXX)
def test_shipped_build_in_the_emulator_under_asan(tmp_path):
    """The shipped build under AddressSanitizer (the GPU's memcheck runs only where a GPU is
    lent: on the H200, 2026-11-27, it passed for the builds of entry 15), with every buffer's
    guard zone poisoned: an out-of-bounds *read*, which the plain emulator run cannot see
    (rows read past M are never stored), stops the program. Dropping the ``gm < M`` test of
    the prefetched A loads is caught at once (checked by hand, 2026-11-27)."""
    if not emu.asan_works(tmp_path):
        pytest.skip(f"{CXX} cannot build with -fsanitize=address (no libasan)")
    env = dict(os.environ, ASAN_OPTIONS="detect_stack_use_after_return=0:detect_leaks=0")
    _, stderr = emu.run_check("conv_check", DEFAULT, tmp_path,
                              ("-O1", "-fsanitize=address,undefined",
                               "-fno-sanitize-recover=undefined"), env)
    assert "ERROR: AddressSanitizer" not in stderr and "runtime error" not in stderr


@pytest.mark.parametrize("M, Ncols, K, suffix, split_k, tile", [
    (16, 230400, 9, "f32", False, "m32n128"),         # first U-Net layer: few output channels
    (128, 57600, 1152, "f32", False, "m128n128"),     # 128 -> 128 @48px: a large grid
    (512, 3600, 4608, "f32", False, "m64n64"),        # 512 @12px: too few 128x128 tiles
    (512, 3600, 4608, "f64", False, "m64n64"),        # no 128x128 tile in float64
    (64, 576, 230400, "f32", True, "m64n64"),         # a weight gradient: split K
])
def test_plan_gemm(M, Ncols, K, suffix, split_k, tile):
    got, grid, k_chunk = planner.plan_gemm(M, Ncols, K, suffix, sm_count=132, split_k=split_k)
    assert got == tile
    BM, BN, BK = planner.TILES[tile][:3]
    assert grid[:2] == (-(-Ncols // BN), -(-M // BM))
    if split_k:
        assert grid[2] > 1 and k_chunk % BK == 0
        assert (grid[2] - 1) * k_chunk < K <= grid[2] * k_chunk      # no empty slice
    else:
        assert grid[2] == 1 and k_chunk == K


# U-Net layers at batch 25 on 132 SMs, (M, Ncols, K, split_k) -> the "tiles" planner's tile
UNET_GEMMS = [
    ((64, 230400, 576, False), "m64n128"),     # down0.conv2 forward: M = 64
    ((256, 14400, 2304, False), "m128n128"),   # down2.conv2 forward
    ((1024, 900, 9216, False), "m64n64"),      # bottleneck forward: few columns, keep blocks
    ((128, 57600, 1152, False), "m128n64"),    # down1.conv2 forward
    ((256, 2304, 14400, True), "m128n128"),    # down2.conv2 weight gradient: split-K fills
    ((64, 576, 230400, True), "m64n128"),      # down0.conv2 weight gradient
]


@pytest.mark.parametrize("problem, tile", UNET_GEMMS)
def test_plan_gemm_with_tiles(problem, tile):
    M, Ncols, K, split_k = problem
    got, grid, k_chunk = planner.plan_gemm(M, Ncols, K, "f32", 132, split_k=split_k, tiles=True)
    assert got == tile
    costs = {t: planner.tile_cost(t, M, Ncols, K, 132, split_k)
             for t in ("m128n128", "m128n64", "m64n128", "m64n64")}
    assert costs[got] == min(costs.values())
    BM, BN, BK = planner.TILES[got][:3]
    assert grid[:2] == (-(-Ncols // BN), -(-M // BM))
    assert (grid[2] - 1) * k_chunk < K <= grid[2] * k_chunk and k_chunk % BK == 0
    # without the feature the planner never picks the new tiles; float64 ignores the feature
    assert planner.plan_gemm(M, Ncols, K, "f32", 132, split_k)[0] in ("m64n64", "m128n128")
    assert planner.plan_gemm(M, Ncols, K, "f64", 132, split_k, tiles=True) == \
        planner.plan_gemm(M, Ncols, K, "f64", 132, split_k)


def test_plan_gemm_with_tiles_covers_any_problem():
    rng = np.random.default_rng(0)
    for _ in range(500):
        M, Ncols, K = (int(v) for v in rng.integers(1, [2048, 300000, 300000]))
        split_k = bool(rng.integers(2))
        tile, grid, k_chunk = planner.plan_gemm(M, Ncols, K, "f32", 132, split_k, tiles=True)
        BM, BN, BK = planner.TILES[tile][:3]
        assert grid[0] * BN >= Ncols > (grid[0] - 1) * BN
        assert grid[1] * BM >= M > (grid[1] - 1) * BM
        assert (grid[2] - 1) * k_chunk < K <= grid[2] * k_chunk
        assert grid[2] == 1 or (split_k and k_chunk % BK == 0)
        assert (tile == "m32n128") == (M <= 32)


@pytest.mark.parametrize("M, Ncols, K, split_k, grid, k_chunk", [
    (64, 55296, 576, False, (864, 1, 1), 576),          # a forward: whole K, one slice
    (4, 230400, 64, False, (3600, 1, 1), 64),
    (64, 576, 230400, True, (9, 1, 59), 3912),          # the first layer's weight gradient
    (16, 27, 84, True, (1, 1, 1), 88),                  # too short to split
    (1024, 4608, 900, True, (72, 16, 1), 904)])         # enough blocks: no split
def test_plan_tf32(M, Ncols, K, split_k, grid, k_chunk):
    """The tensor cores' one tile, 64 x 64 with K steps of 8: K split as plan_gemm splits it,
    in whole steps, no slice empty."""
    assert planner.plan_tf32(M, Ncols, K, 132, split_k=split_k) == (grid, k_chunk)
    assert k_chunk % 8 == 0 or not split_k and k_chunk == K
    assert (grid[2] - 1) * k_chunk < K <= grid[2] * k_chunk


def test_tile_cost_model():
    # the same blocks per SM: the tile with less overhead per FMA is cheaper
    assert planner.tile_cost("m128n128", 256, 256 * 132, 64, 132) < \
        planner.tile_cost("m64n64", 256, 256 * 132, 64, 132)
    # one 4-warp block per SM runs at half rate: it costs as much as two (8 warps, full rate)
    one = planner.tile_cost("m128n64", 128, 64 * 132, 64, 132)
    two = planner.tile_cost("m128n64", 128, 2 * 64 * 132, 64, 132)
    assert one == two
    assert {planner.tile_threads(t) for t in planner.TILES} == {128, 256}
    assert set(planner.TILE_OVERHEAD) == set(planner.TILE_BLOCKS_PER_SM) == set(planner.TILES)


def test_tiles_feature_reaches_the_planner(monkeypatch):
    """The planner takes the 8x8 tiles only in builds with ``tiles``, and the build's NVRTC
    options say so."""
    seen = []
    monkeypatch.setattr(planner, "plan_gemm", lambda *a, **kw: seen.append(kw["tiles"]) or
                        ("m64n64", (1, 1, 1), a[2]))
    monkeypatch.setattr(runtime, "cupy", emu.EmuCupy)
    monkeypatch.setattr(runtime, "kernel", lambda module, name: lambda *args: None)
    monkeypatch.setattr(runtime, "num_sms", lambda: 132)
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((40, 2, 3, 3), np.float32)
    for variant, tiles in ((DEFAULT, True), ("fastdiv+prefetch+vec4", False)):
        with config.configured(CudaConfig.from_variant(variant)):
            cb.conv2d_forward(x, w, None, (1, 1), (1, 1))
            assert ("-DMINICNN_CONV_TILES=1" in runtime.module_options("conv")) == tiles
        assert seen.pop() == tiles


def _run_conv_launchers(variant, untimed, monkeypatch, precision="fp32"):
    """Run the conv launchers of build ``variant`` (``untimed`` changes on, ``precision``) at
    U-Net sizes on NumPy arrays with a stand-in for CuPy, checking each launch's arguments
    against its kernel's parameter types without running it. Returns the kinds of kernel
    launched (names without tile and dtype suffixes; the tensor cores' keep ``_tf32``)."""
    sigs = {m: emu.kernel_signatures(m, variant) for m in ("conv", "conv_tf32")}
    launched = []

    def fake_kernel(module, name):
        def launch(grid, block, args):
            emu.check_arguments(sigs[module], name, grid, block, args)
            if name.startswith("conv1x1_backward_weight"):
                assert block == (planner.NARROW_THREADS,)
            launched.append(name)
        return launch

    monkeypatch.setattr(config, "_current", CudaConfig(
        features=CudaConfig.from_variant(variant).features, untimed=untimed,
        precision=precision))
    monkeypatch.setattr(runtime, "cupy", emu.EmuCupy)
    monkeypatch.setattr(runtime, "kernel", fake_kernel)
    monkeypatch.setattr(ops, "relu_forward", lambda y: launched.append("relu_forward") or y)
    monkeypatch.setattr(runtime, "num_sms", lambda: 132)
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for (N, C, H, W, O, k, s, p) in [(2, 64, 12, 12, 128, 3, 1, 1), (2, 8, 9, 9, 16, 3, 2, 1),
                                         (2, 16, 6, 6, 8, 2, 2, 0), (4, 8, 24, 24, 16, 3, 1, 1),
                                         (1, 1024, 6, 6, 512, 3, 1, 1),   # split along K
                                         (3, 17, 5, 5, 3, 1, 1, 0)]:      # narrow 1x1
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            w = rng.standard_normal((O, C, k, k)).astype(dtype)
            s2, p2 = (s, s), (p, p)
            y = cb.conv2d_forward(x, w, np.zeros(O, dtype), s2, p2, relu=True)
            cb.conv2d_backward_input(y, w, x.shape, s2, p2, bias=np.zeros(C, dtype))
            cb.conv2d_backward_weight(y, x, w.shape, s2, p2)
    return {re.sub(r"_m\d+n\d+_f\d+$", "", n) for n in launched}


# (conv build, untimed changes on): the shipped path, the same with every untimed change, and
# the build without features with them
LAUNCH_CONFIGS = [(DEFAULT, ()), (DEFAULT, config.UNTIMED), ("plain", config.UNTIMED)]
NARROW = {"conv1x1_forward_f32", "conv1x1_backward_input_f64", "conv1x1_backward_weight_f32"}


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to read the signatures")
@pytest.mark.filterwarnings("ignore:invalid value encountered")   # kernels not run: empty arrays
@pytest.mark.parametrize("variant, untimed", LAUNCH_CONFIGS)
def test_conv_launchers_match_the_kernel_signatures(variant, untimed, monkeypatch):
    """Every argument the conv launchers pass has the type of its kernel parameter (CuPy
    passes a RawKernel's arguments by position, unchecked), for every kernel kind of the
    build; what the kernels compute is the GPU's and the emulator's business. The narrow 1x1
    kernels and the fused ReLU only with their untimed changes on."""
    kinds = _run_conv_launchers(variant, untimed, monkeypatch)
    assert {"conv2d_forward", "conv2d_backward_input", "conv2d_backward_input_partition",
            "conv2d_backward_weight", "splitk_reduce_f32", "splitk_reduce_f64"} <= kinds
    assert (NARROW <= kinds) == ("narrow_1x1" in untimed)
    assert not (NARROW & kinds) or "narrow_1x1" in untimed
    assert ("relu_forward" in kinds) == ("conv_relu" not in untimed)
    assert not any(k.endswith("_tf32") for k in kinds)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to read the signatures")
@pytest.mark.filterwarnings("ignore:invalid value encountered")   # kernels not run: empty arrays
@pytest.mark.parametrize("untimed", [(), config.UNTIMED])
def test_tf32_launchers_match_the_kernel_signatures(untimed, monkeypatch):
    """With precision "tf32" every float32 GEMM takes kernels/conv_tf32.cu's kernel of the
    same name (same arguments, its own block) and float64 stays on conv.cu's tiles; the
    narrow 1x1 kernels (fp32 FMAs) serve float64 only, even with narrow_1x1 on."""
    kinds = _run_conv_launchers(DEFAULT, untimed, monkeypatch, precision="tf32")
    gemms = {"conv2d_forward", "conv2d_backward_input", "conv2d_backward_input_partition",
             "conv2d_backward_weight"}
    assert {f"{g}_tf32" for g in gemms} | gemms | {"splitk_reduce_f32"} <= kinds
    assert not {n for n in NARROW if n.endswith("f32")} & kinds
    assert ("conv1x1_backward_input_f64" in kinds) == ("narrow_1x1" in untimed)


@pytest.mark.skipif(CXX is None, reason=NO_CXX)
@pytest.mark.parametrize("variant, untimed", LAUNCH_CONFIGS)
def test_conv_launchers_compute_the_convolution_in_the_emulator(variant, untimed, monkeypatch,
                                                               tmp_path_factory):
    """The conv primitives of the CUDA backend, launchers and kernels together, run on the
    CPU: CuPy replaced by NumPy and each launch by the emulator running the kernel the launcher
    names, with the grid, block and arguments it passes. Against numpy_backend, forward and
    both gradients, on shapes that take each path (split K, stride 2, the up-convolution's
    partition, 1x1), with the untimed changes off (the shipped path) and on. This is what
    catches a launcher that passes arguments in the wrong order or plans a grid its kernel
    does not expect."""
    emu.use_the_emulator(monkeypatch, variant, str(tmp_path_factory.getbasetemp()), untimed)
    rng = np.random.default_rng(1)
    for dtype, tol in ((np.float32, 2e-5), (np.float64, 1e-12)):
        for (N, C, H, W, O, k, s, p) in [(2, 16, 6, 8, 17, 3, 1, 1),
                                         (1, 1100, 2, 2, 16, 3, 1, 1),    # split K
                                         (1, 3, 7, 6, 5, 3, 1, 1),        # odd, few channels
                                         (2, 5, 9, 9, 6, 3, 2, 1),        # stride 2
                                         (2, 6, 4, 6, 7, 2, 2, 0),        # up-convolution
                                         (3, 17, 5, 5, 3, 1, 1, 0)]:      # 1x1
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            w = rng.standard_normal((O, C, k, k)).astype(dtype)
            b = rng.standard_normal(O).astype(dtype)
            bc = rng.standard_normal(C).astype(dtype)   # a bias of the transposed convolution
            s2, p2 = (s, s), (p, p)
            y = nb.conv2d_forward(x, w, b, s2, p2)
            gy = rng.standard_normal(y.shape).astype(dtype)
            for what, got, ref in [
                    ("forward", cb.conv2d_forward(x, w, b, s2, p2), y),
                    ("forward + ReLU", cb.conv2d_forward(x, w, b, s2, p2, relu=True),
                     nb.conv2d_forward(x, w, b, s2, p2, relu=True)),
                    ("input gradient", cb.conv2d_backward_input(gy, w, x.shape, s2, p2),
                     nb.conv2d_backward_input(gy, w, x.shape, s2, p2)),
                    ("input gradient + bias",
                     cb.conv2d_backward_input(gy, w, x.shape, s2, p2, bias=bc),
                     nb.conv2d_backward_input(gy, w, x.shape, s2, p2, bias=bc)),
                    ("weight gradient", cb.conv2d_backward_weight(gy, x, w.shape, s2, p2),
                     nb.conv2d_backward_weight(gy, x, w.shape, s2, p2))]:
                scale = max(1.0, float(np.abs(ref).max()))
                assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape)
                err = float(np.abs(got - ref).max()) / scale
                assert err <= tol, (what, dtype.__name__, (N, C, H, W, O, k, s, p), err)


GUARD = 256          # elements of guard zone each side of an array in the TF32 test below


class GuardedCupy(emu.EmuCupy):
    """EmuCupy whose new arrays start as NaN (an element never written is caught) between
    zones of a sentinel (a write out of bounds is caught); ``guarded`` puts an input between
    NaN zones (a read out of bounds poisons the result)."""
    buffers = []

    @staticmethod
    def _between(shape, dtype, fill, guard):
        n = int(np.prod(shape))
        buf = np.full(n + 2 * GUARD, guard, dtype)
        buf[GUARD:GUARD + n] = fill
        return buf, buf[GUARD:GUARD + n].reshape(shape).view(emu.EmuArray)

    @classmethod
    def empty(cls, shape, dtype=np.float64):
        buf, view = cls._between(shape, dtype, np.nan, 12345.0)
        cls.buffers.append(buf)
        return view

    @classmethod
    def guarded(cls, a):
        return cls._between(a.shape, a.dtype, a.ravel(), np.nan)[1]

    @classmethod
    def guards_intact(cls):
        return all((b[:GUARD] == 12345.0).all() and (b[-GUARD:] == 12345.0).all()
                   for b in cls.buffers)


TF32_SHAPES = [(2, 16, 6, 8, 17, 3, 1, 1),
               (2, 70, 5, 5, 66, 3, 1, 1),      # two blocks of rows, K not a multiple of 8
               (1, 1100, 2, 2, 16, 3, 1, 1),    # long K
               (4, 3, 24, 24, 5, 3, 1, 1),      # the weight gradient's K split in 5
               (2, 5, 9, 9, 6, 3, 2, 1),        # stride 2
               (2, 6, 4, 6, 7, 2, 2, 0),        # up-convolution (partition)
               (3, 17, 5, 5, 3, 1, 1, 0)]       # 1x1 head


@pytest.mark.skipif(CXX is None, reason=NO_CXX)
def test_tf32_launchers_compute_the_rounded_convolution_in_the_emulator(monkeypatch,
                                                                       tmp_path_factory):
    """With CudaConfig(precision="tf32") the conv primitives, launchers and kernels
    (kernels/conv_tf32.cu, its mma.sync by tests/kernel_emu/mma_emu.h) together, against
    numpy_backend with set_precision("tf32"), which rounds the same operands the same way: a
    product of two TF32 values is exact in fp32, so only the order of the fp32 sums differs
    (2e-5 of the scale, as for fp32). Against numpy_backend in fp32 they differ by more than
    5e-5 (measured: 2.4e-4 to 4.8e-4; TF32's unit roundoff is 2^-11 = 4.9e-4): the rounding
    is there. float64 is not rounded. Outputs start as NaN between sentinel zones, inputs sit
    between NaN zones."""
    emu.use_the_emulator(monkeypatch, DEFAULT, str(tmp_path_factory.getbasetemp()),
                         precision="tf32")
    monkeypatch.setattr(runtime, "cupy", GuardedCupy)
    monkeypatch.setattr(GuardedCupy, "buffers", [])
    rng = np.random.default_rng(32)
    for dtype in (np.float32, np.float64):
        for (N, C, H, W, O, k, s, p) in TF32_SHAPES if dtype == np.float32 else TF32_SHAPES[:1]:
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            w = rng.standard_normal((O, C, k, k)).astype(dtype)
            b, bc = rng.standard_normal(O).astype(dtype), rng.standard_normal(C).astype(dtype)
            s2, p2 = (s, s), (p, p)
            gy = rng.standard_normal(nb.conv2d_forward(x, w, b, s2, p2).shape).astype(dtype)
            xg, wg, gyg = (GuardedCupy.guarded(a) for a in (x, w, gy))
            got = {"forward": cb.conv2d_forward(xg, wg, b, s2, p2),
                   "forward + ReLU": cb.conv2d_forward(xg, wg, b, s2, p2, relu=True),
                   "input gradient + bias": cb.conv2d_backward_input(gyg, wg, x.shape, s2, p2,
                                                                     bias=bc),
                   "weight gradient": cb.conv2d_backward_weight(gyg, xg, w.shape, s2, p2)}
            refs = {}
            for precision in ("tf32", "fp32"):
                previous = nb.set_precision(precision)
                try:
                    refs[precision] = {
                        "forward": nb.conv2d_forward(x, w, b, s2, p2),
                        "forward + ReLU": nb.conv2d_forward(x, w, b, s2, p2, relu=True),
                        "input gradient + bias": nb.conv2d_backward_input(gy, w, x.shape, s2,
                                                                          p2, bias=bc),
                        "weight gradient": nb.conv2d_backward_weight(gy, x, w.shape, s2, p2)}
                finally:
                    nb.set_precision(previous)
            for what, out in got.items():
                ref, fp32 = refs["tf32"][what], refs["fp32"][what]
                case = (what, dtype.__name__, (N, C, H, W, O, k, s, p))
                assert out.shape == ref.shape and out.dtype == ref.dtype, case
                assert not np.isnan(out).any(), case + ("NaN: unwritten, or a bad read",)
                scale = max(1.0, float(np.abs(ref).max()))
                err = float(np.abs(out - ref).max()) / scale
                off = float(np.abs(out - fp32).max()) / scale
                if dtype == np.float32:
                    assert err <= 2e-5 and off > 5e-5, case + (err, off)
                else:
                    assert err <= 1e-12, case + (err,)
    assert GuardedCupy.guards_intact(), "a kernel wrote out of bounds"


def _two_training_steps(device):
    """Two Adam steps of a small U-Net-like model (3x3 convolutions, max-pool, up-convolution,
    concatenation, 1x1 head, cross-entropy) on ``device``: the losses and the parameters."""
    import minicnn
    from minicnn import functional as F, nn, optim
    minicnn.manual_seed(0)
    enc, mid = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
    up, head, pool = nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Conv2d(8, 3, 1), nn.MaxPool2d(2)
    params = []
    for m in (enc, mid, up, head):
        m.to(device)
        params += list(m.parameters())
    opt = optim.Adam(params, lr=1e-2)
    rng = np.random.default_rng(0)
    x = minicnn.Tensor(rng.standard_normal((2, 1, 8, 8)).astype(np.float32)).to(device)
    t = minicnn.Tensor(rng.integers(0, 3, (2, 8, 8))).to(device)
    losses = []
    for _ in range(2):
        a = F.relu(enc(x))
        y = head(F.cat([a, up(F.relu(mid(pool(a))))], 1))
        loss = F.cross_entropy(y, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert loss.device == device
        losses.append(float(loss.numpy()))
    return losses, [p.numpy() for p in params]


@pytest.mark.skipif(CXX is None, reason=NO_CXX)
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_training_steps_in_the_emulator_match_the_numpy_backend(precision, monkeypatch,
                                                              tmp_path_factory):
    """Model, autograd and optimizer on the CUDA backend, every kernel run by the emulator
    (``emulator.use_the_emulated_gpu``), against the NumPy backend in the same precision:
    the losses and the parameters after two steps agree to fp32 rounding (1e-6); in TF32
    they differ from the NumPy backend's fp32 by more than 1e-6 (measured: 6e-5)."""
    emu.use_the_emulated_gpu(monkeypatch, str(tmp_path_factory.getbasetemp()), precision)
    losses, params = _two_training_steps("cuda")
    runs = {}
    for p in ("fp32", "tf32"):
        previous = nb.set_precision(p)
        try:
            runs[p] = _two_training_steps("cpu")
        finally:
            nb.set_precision(previous)
    same, fp32 = runs[precision], runs["fp32"]
    np.testing.assert_allclose(losses, same[0], rtol=1e-6)
    assert max(float(np.abs(a - b).max()) for a, b in zip(params, same[1])) <= 1e-6
    if precision == "tf32":
        assert max(float(np.abs(a - b).max()) for a, b in zip(params, fp32[1])) > 1e-6


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
@pytest.mark.parametrize("untimed", [(), config.UNTIMED])
def test_other_launchers_compute_their_primitives_in_the_emulator(untimed, monkeypatch,
                                                                  tmp_path_factory):
    """As above for the other primitives: ReLU (an aligned array, which takes the 16-byte
    kernels when ``relu_vec16`` is on, and a view one element in, which does not), max-pool
    (ties, NaN, overlapping and partitioning windows), the cross-entropy (class weights or
    none, a dense and a broadcast upstream gradient) and the three optimizers, against
    numpy_backend, bit for bit as gpu_check.sh's self-check on a GPU (the forward loss to
    rounding); with the untimed changes off (the shipped path) and on."""
    emu.use_the_emulator(monkeypatch, DEFAULT, str(tmp_path_factory.getbasetemp()), untimed)
    launched, kernel = set(), runtime.kernel
    monkeypatch.setattr(runtime, "kernel", lambda module, name: launched.add(name) or
                        kernel(module, name))
    rng = np.random.default_rng(2)
    E = emu.EmuCupy.asarray

    def same(got, ref, what):
        assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape, got.dtype)
        assert np.array_equal(np.asarray(got), ref, equal_nan=True), what

    for dtype in (np.float32, np.float64):
        big = rng.standard_normal(1003).astype(dtype)
        big[::97], big[5::89], big[7::83] = np.nan, -0.0, np.inf
        gbig = rng.standard_normal(big.shape).astype(dtype)
        for tag, sl in (("aligned", slice(None)), ("offset view", slice(1, None))):
            y = cb.relu_forward(E(big)[sl])
            same(y, nb.relu_forward(big[sl]), f"relu forward {tag}")
            same(cb.relu_backward(E(gbig)[sl], y),
                 nb.relu_backward(gbig[sl], nb.relu_forward(big[sl])), f"relu backward {tag}")
        for (N, C, H, W), k, st in [((2, 3, 13, 11), (3, 3), (2, 2)),
                                     ((2, 3, 12, 10), (2, 2), (2, 2)),
                                     ((1, 2, 9, 12), (4, 3), (1, 2))]:
            x = rng.integers(-2, 3, size=(N, C, H, W)).astype(dtype)   # many ties
            x[0, 0, 0, :2] = np.nan
            y, idx = cb.maxpool2d_forward(E(x), k, st)
            yr, ir = nb.maxpool2d_forward(x, k, st)
            same(y, yr, f"maxpool forward {x.shape} {k} {st}")
            same(idx, ir, f"maxpool argmax {x.shape} {k} {st}")
            gy = rng.standard_normal(yr.shape).astype(dtype)
            same(cb.maxpool2d_backward(E(gy), idx, x.shape, k, st),
                 nb.maxpool2d_backward(gy, ir, x.shape, k, st), f"maxpool backward {x.shape}")
        for shape in [(5, 4), (2, 4, 7, 9)]:
            x = (rng.standard_normal(shape) * 3).astype(dtype)
            t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
            for w in (None, rng.random(shape[1]).astype(dtype)):
                out = cb.softmax_cross_entropy_forward(E(x), E(t), None if w is None else E(w))
                ref = nb.softmax_cross_entropy_forward(x, t, w)
                for name, o, r in zip(("loss", "wt", "p"), out, ref):
                    np.testing.assert_allclose(o, r, rtol=1e-6 if dtype == np.float32 else 1e-14,
                                               err_msg=f"cross-entropy {name} {shape}")
                for g in (rng.standard_normal(t.shape).astype(dtype),
                          np.broadcast_to(np.asarray(0.25, dtype), t.shape)):
                    same(cb.softmax_cross_entropy_backward(E(ref[2]), E(t),
                                                           None if w is None else E(w), E(g)),
                         nb.softmax_cross_entropy_backward(ref[2], t, w, g),
                         f"cross-entropy backward {shape}")
        for shape in [(5, 4), (3, 4, 40, 50)]:       # the sums: 1 block, and 24 blocks
            x = (rng.standard_normal(shape) * 3).astype(dtype)
            t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
            for w in (None, rng.random(shape[1]).astype(dtype)):
                for red in ("sum", "mean"):
                    out = cb.softmax_cross_entropy_forward(E(x), E(t), None if w is None else E(w),
                                                           reduction=red)
                    ref = nb.softmax_cross_entropy_forward(x, t, w, reduction=red)
                    for name, o, r in zip(("loss", "wt", "p"), out, ref):
                        assert o.shape == r.shape and o.dtype == r.dtype, (name, red, o.shape)
                        np.testing.assert_allclose(
                            o, r, rtol=1e-5 if dtype == np.float32 else 1e-13,
                            err_msg=f"cross-entropy {red} {name} {shape}")
        for red in ("none", "mean"):
            with pytest.raises(ValueError, match="target values must be in"):
                cb.softmax_cross_entropy_forward(E(np.zeros((2, 3), dtype)), E(np.array([0, 3])),
                                                 None, reduction=red)
        p0, g0 = (rng.standard_normal(1000).astype(dtype) for _ in range(2))
        for wd in (0.0, 0.01):
            P, M, V = E(p0.copy()), E(p0 * 0.1), E(np.abs(p0))
            Pr, Mr, Vr = p0.copy(), p0 * 0.1, np.abs(p0)
            kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd, step=7)
            cb.adam_update(P, E(g0), M, V, **kw)
            nb.adam_update(Pr, g0, Mr, Vr, **kw)
            for name, a, r in (("p", P, Pr), ("m", M, Mr), ("v", V, Vr)):
                same(a, r, f"adam {name} wd {wd}")
            for mom, nest, first in ((0.0, False, False), (0.9, False, True), (0.9, True, False)):
                P, B, Pr, Br = E(p0.copy()), E(p0 * 0.5), p0.copy(), p0 * 0.5
                kw = dict(lr=0.01, momentum=mom, dampening=0.1, nesterov=nest, weight_decay=wd,
                          first=first)
                cb.sgd_update(P, E(g0), B if mom else None, **kw)
                nb.sgd_update(Pr, g0, Br if mom else None, **kw)
                same(P, Pr, f"sgd p {mom} {nest} {first}")
                same(B, Br, f"sgd buffer {mom} {nest} {first}")
            P, S, Pr, Sr = E(p0.copy()), E(np.abs(g0)), p0.copy(), np.abs(g0)
            cb.adagrad_update(P, E(g0), S, clr=0.01, eps=1e-10, weight_decay=wd)
            nb.adagrad_update(Pr, g0, Sr, clr=0.01, eps=1e-10, weight_decay=wd)
            same(P, Pr, "adagrad p")
            same(S, Sr, "adagrad s")
    on = set(untimed)
    vec = {f"relu_{d}_vec_{t}" for d in ("forward", "backward") for t in ("f32", "f64")}
    assert {f"relu_{d}_{t}" for d in ("forward", "backward") for t in ("f32", "f64")} <= launched
    assert (vec <= launched) == ("relu_vec16" in on)
    assert not (vec & launched) or "relu_vec16" in on
    pool = "_div32" if "pool_div32" in on else ""
    assert {f"maxpool2d_forward_u8_f32{pool}", f"maxpool2d_backward_u8_f64{pool}"} <= launched
    assert not any(n.startswith("maxpool2d") and n.endswith("_div32") != bool(pool)
                   for n in launched)
    assert ("softmax_xent_reduce_f32" in launched) == ("xent_sums" in on)
    assert {"softmax_xent_forward_f32", "softmax_xent_backward_f64", "adam_update_f32",
            "sgd_update_f64", "adagrad_update_f32"} <= launched


def test_new_primitive_arguments_are_refused_clearly(monkeypatch):
    """The primitives' keyword arguments: a reduction outside none/sum/mean and (CUDA) a bias
    of the wrong length raise ValueError naming the primitive, before any launch."""
    x, t = np.zeros((2, 3), np.float32), np.array([0, 1])
    monkeypatch.setattr(runtime, "cupy", emu.EmuCupy)
    monkeypatch.setattr(runtime, "kernel", lambda module, name: pytest.fail("launched"))
    for bk in (nb, cb):
        with pytest.raises(ValueError, match="softmax_cross_entropy_forward: reduction must"):
            bk.softmax_cross_entropy_forward(x, t, None, reduction="avg")
    gy, w = np.zeros((1, 4, 3, 3), np.float32), np.zeros((4, 2, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"conv2d_backward_input: bias must have shape \(2,\)"):
        cb.conv2d_backward_input(gy, w, (1, 2, 3, 3), (1, 1), (0, 0),
                                 bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"conv2d_forward: bias must have shape \(4,\)"):
        cb.conv2d_forward(np.zeros((1, 2, 3, 3), np.float32), w, np.zeros(2, np.float32),
                          (1, 1), (0, 0))


def test_narrow_1x1_rule_and_the_kernels_constants():
    """The narrow 1x1 kernels take 1x1 / stride 1 / unpadded convolutions of at most
    NARROW_MAX channels (the U-Net's head); the launchers' constants are the kernels'."""
    one = dict(kH=1, kW=1, sH=1, sW=1, pH=0, pW=0)
    assert planner.narrow_1x1(**one, channels=4)
    assert planner.narrow_1x1(**one, channels=planner.NARROW_MAX)
    assert not planner.narrow_1x1(**one, channels=planner.NARROW_MAX + 1)
    for change in (dict(kH=3), dict(sW=2), dict(pH=1)):
        assert not planner.narrow_1x1(**{**one, **change}, channels=4)
    with open(os.path.join(ROOT, "kernels", "conv.cu")) as f:
        src = f.read()
    assert f"constexpr int NARROW_MAX = {planner.NARROW_MAX};" in src
    assert f"constexpr int NARROW_THREADS = {planner.NARROW_THREADS};" in src
    # the weight gradient's pixel chunks: every pixel in exactly one, about four waves
    for pixels, groups, sms in [(230400, 8, 132), (75, 3, 132), (2048 * 7 + 1, 1, 2),
                                (10**6, 1, 1000)]:
        chunks, length = planner.narrow_weight_chunks(pixels, groups, sms)
        assert (chunks - 1) * length < pixels <= chunks * length
        assert length >= min(pixels, planner.NARROW_MIN_CHUNK) and chunks <= max(1, 4 * sms)
    assert planner.narrow_weight_chunks(230400, 8, 132) == (66, 3491)
    with open(os.path.join(ROOT, "kernels", "loss.cu")) as f:
        assert f"constexpr int SCE_THREADS = {ops.SCE_THREADS};" in f.read()


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator")
@pytest.mark.parametrize("check, count", [("activation_check", 120), ("pool_check", 64)])
def test_elementwise_kernels_in_the_emulator(check, count, tmp_path):
    """activation_check.cpp: kernels/activation.cu's 16-byte ReLU kernels give what the
    element-wise ones and a separate reference give, bit for bit, for lengths 0-40 and 1003
    (every tail), with NaN, +-inf, -0.0 and denormals, and write nothing past the end
    (dropping the tail or reading a vector past it is caught). pool_check.cpp: kernels/pool.cu
    against plain loops, bit for bit, with ties, NaNs and overlapping windows (a wrong index
    decomposition or a changed summation order is caught). Both in tests/kernel_emu/."""
    assert emu.run_check(check, "plain", tmp_path, minimum=count)[0] == count


def test_relu_launcher_takes_the_vector_kernel_only_when_aligned(monkeypatch):
    """With ``relu_vec16``: 16-byte kernels for arrays that start on a 16-byte boundary, with
    one grid item per whole vector (or per tail element, if more); the element-wise kernel
    otherwise, and always on the shipped path."""
    monkeypatch.setattr(runtime, "kernel", lambda module, name: (module, name))
    monkeypatch.setattr(config, "_current", CudaConfig())
    aligned = (type("A", (), {"data": type("Mem", (), {"ptr": 4096})(),
                              "dtype": np.dtype(np.float32)})(),)
    assert ops._elementwise_kernel("relu_forward", "f32", 1003, aligned) == \
        (("activation", "relu_forward_f32"), 1003)
    monkeypatch.setattr(config, "_current", CudaConfig(untimed=("relu_vec16",)))

    class Arr:
        def __init__(self, ptr, dtype):
            self.data, self.dtype = type("Mem", (), {"ptr": ptr})(), np.dtype(dtype)
    f32, f64 = (Arr(4096, np.float32), Arr(8192, np.float32)), (Arr(4096, np.float64),)
    assert ops._elementwise_kernel("relu_forward", "f32", 1003, f32) == \
        (("activation", "relu_forward_vec_f32"), 250)
    assert ops._elementwise_kernel("relu_forward", "f32", 3, f32) == \
        (("activation", "relu_forward_vec_f32"), 3)
    assert ops._elementwise_kernel("relu_backward", "f64", 9, f64) == \
        (("activation", "relu_backward_vec_f64"), 4)
    assert ops._elementwise_kernel("relu_forward", "f32", 1003, (Arr(4100, np.float32),)) == \
        (("activation", "relu_forward_f32"), 1003)
    assert ops._elementwise_kernel("relu_backward", "f32", 8, f32 + (Arr(8, np.float32),)) == \
        (("activation", "relu_backward_f32"), 8)


def test_window_partition():
    assert planner.window_partition(2, 2, 2, 2, 0, 0, 12, 12, 6, 6)      # the up-convolution
    assert planner.window_partition(3, 1, 3, 1, 0, 0, 9, 5, 3, 5)
    assert not planner.window_partition(2, 2, 2, 2, 0, 0, 13, 12, 6, 6)  # row 12 is in no window
    assert not planner.window_partition(2, 2, 2, 2, 1, 1, 12, 12, 7, 7)  # padding
    assert not planner.window_partition(3, 3, 2, 2, 0, 0, 13, 13, 6, 6)  # overlapping windows


@pytest.mark.parametrize("name", backend.PRIMITIVES)
def test_backends_share_each_primitive_signature(name):
    assert inspect.signature(getattr(nb, name)) == inspect.signature(getattr(cb, name))


def test_cuda_backend_has_the_backend_contract():
    """What minicnn.backend asks of a backend module (the tensor reads ``device``)."""
    assert (cb.name, cb.device) == ("cuda", "cuda")
    assert backend.DEVICES["cuda"] == "minicnn.backend.cuda"
    for attr in ("xp", "asarray", "to_host", "check_available") + backend.PRIMITIVES:
        assert hasattr(cb, attr), attr


def test_primitive_cross_entropy_refuses_targets_unless_told_they_are_checked():
    x = np.zeros((2, 3), np.float32)
    for t in (np.array([0, 3]), np.array([-1, 0])):
        with pytest.raises(ValueError, match=r"target values must be in \[0, 3\)"):
            nb.softmax_cross_entropy_forward(x, t, None)
    loss, wt, p = nb.softmax_cross_entropy_forward(x, np.array([0, 2]), None, check_target=False)
    np.testing.assert_allclose(loss, np.log(3), rtol=1e-6)


# ------------------------------------------------------------------ the configuration
def test_config_default_is_the_shipped_build_and_its_options():
    c = CudaConfig()
    assert c.features == ("fastdiv", "prefetch", "tiles", "vec4") == config.DEFAULT_FEATURES
    assert c.variant == DEFAULT == "fastdiv+prefetch+tiles+vec4"
    assert c.conv_options() == ("-DMINICNN_CONV_FASTDIV=1", "-DMINICNN_CONV_PREFETCH=1",
                                "-DMINICNN_CONV_TILES=1", "-DMINICNN_CONV_VEC4=1")
    plain = CudaConfig(features=())
    assert plain.variant == "plain" and CudaConfig.from_variant("plain") == plain
    assert plain.conv_options() == ("-DMINICNN_CONV_FASTDIV=0", "-DMINICNN_CONV_PREFETCH=0",
                                    "-DMINICNN_CONV_TILES=0", "-DMINICNN_CONV_VEC4=0")
    two = CudaConfig.from_variant("vec4+fastdiv")                # any order, one build
    assert two == CudaConfig(features=("fastdiv", "vec4")) and two.variant == "fastdiv+vec4"
    assert two.has("vec4") and not two.has("tiles")
    with pytest.raises(dataclasses.FrozenInstanceError):
        two.features = ()
    assert hash(two) == hash(CudaConfig(features=["vec4", "fastdiv"]))


@pytest.mark.parametrize("bad", ["fast", "prefetch+prefetch", "plain+vec4", "vec4+", "",
                                 " vec4", "ktable", "kmajor", "winograd", "fastdiv+winograd"])
def test_config_refuses_a_bad_variant_in_one_line(bad):
    """Unknown or repeated features, and the features that left the library, are refused by
    name, in one line."""
    with pytest.raises(ValueError, match=re.escape(f"MINICNN_CONV_VARIANT={bad!r}")) as err:
        CudaConfig.from_variant(bad)
    assert "\n" not in str(err.value)
    assert "fastdiv" in str(err.value) and "vec4" in str(err.value)   # what it takes


@pytest.mark.parametrize("bad, match", [
    (("vec4", "vec4"), "a name repeats"), (("ktable",), r"unknown: \['ktable'\]"),
    ("vec4", "must be a sequence"), ((4,), "must be a sequence")])
def test_config_refuses_bad_features_in_one_line(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        CudaConfig(features=bad)
    assert "\n" not in str(err.value) and str(err.value).startswith("CudaConfig: features")
    with pytest.raises(ValueError, match="unknown feature 'ktable'"):
        CudaConfig().has("ktable")
    with pytest.raises(TypeError, match="expected a CudaConfig, got str"):
        config.configure("fastdiv")


def test_untimed_changes_are_off_by_default_and_named_once():
    """The shipped path holds only measured wins: no untimed change is on by default; each
    names its NOTES entry; MINICNN_CUDA_UNTIMED takes none, all or a '+'-joined set, and
    refuses anything else in one line."""
    assert CudaConfig().untimed == () and CudaConfig().untimed_name == "none"
    assert set(config.UNTIMED_ENTRIES) == set(config.UNTIMED)
    assert tuple(sorted(config.UNTIMED)) == config.UNTIMED
    assert all(16 <= entry <= 23 for entry, _ in config.UNTIMED_ENTRIES.values())
    on = CudaConfig(untimed=("xent_sums", "conv_relu"))
    assert on.untimed == ("conv_relu", "xent_sums") and on.untimed_name == "conv_relu+xent_sums"
    assert on.tries("conv_relu") and not on.tries("narrow_1x1") and on.variant == DEFAULT
    assert CudaConfig(untimed=config.UNTIMED).untimed_name == "all"
    env = {"MINICNN_CUDA_UNTIMED": "all", "MINICNN_CONV_VARIANT": "plain"}
    assert CudaConfig.from_env(env) == CudaConfig(features=(), untimed=config.UNTIMED)
    assert CudaConfig.from_env({"MINICNN_CUDA_UNTIMED": "none"}) == CudaConfig()
    assert CudaConfig.from_env({"MINICNN_CUDA_UNTIMED": "xent_sums+pool_div32"}).untimed == \
        ("pool_div32", "xent_sums")
    for bad in ("", "ALL", "xent_sums+", "winograd", "relu_vec16+relu_vec16"):
        with pytest.raises(ValueError, match=re.escape(f"MINICNN_CUDA_UNTIMED={bad!r}")) as err:
            CudaConfig.from_env({"MINICNN_CUDA_UNTIMED": bad})
        assert "\n" not in str(err.value) and "narrow_1x1" in str(err.value)
    for bad, match in ((("tf32",), r"unknown: \['tf32'\]"), ("all", "must be a sequence"),
                       (("conv_relu", "conv_relu"), "a name repeats")):
        with pytest.raises(ValueError, match=match):
            CudaConfig(untimed=bad)
    with pytest.raises(ValueError, match="unknown change 'vec4'"):
        CudaConfig().tries("vec4")


def test_precision_is_fp32_unless_asked_and_refused_in_one_line():
    assert CudaConfig().precision == "fp32" and not CudaConfig().tensor_cores
    assert config.PRECISIONS == ("fp32", "tf32")
    t = CudaConfig(precision="tf32")
    assert t.tensor_cores and t.variant == DEFAULT and t.untimed == ()
    assert t.conv_options() == CudaConfig().conv_options()     # conv_tf32.cu shares them
    assert CudaConfig.from_env({"MINICNN_CUDA_UNTIMED": "all"}).precision == "fp32"
    assert CudaConfig.from_env({"MINICNN_CUDA_PRECISION": "tf32"}) == t
    with pytest.raises(ValueError, match=re.escape(
            "MINICNN_CUDA_PRECISION='fp16': expected one of ['fp32', 'tf32']")):
        CudaConfig.from_env({"MINICNN_CUDA_PRECISION": "fp16"})
    for bad in ("TF32", "fp16", None):
        with pytest.raises(ValueError, match=re.escape(
                f"CudaConfig: precision must be one of ['fp32', 'tf32'], got {bad!r}")) as err:
            CudaConfig(precision=bad)
        assert "\n" not in str(err.value)


def test_config_is_read_from_the_environment_once(monkeypatch):
    """MINICNN_CONV_VARIANT is a start-up default: read on the first use, kept after; a
    launch never reads it again (a bad value set later changes nothing)."""
    monkeypatch.setattr(config, "_current", None)
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "prefetch+fastdiv")
    first = config.current()
    assert first == CudaConfig.from_variant("fastdiv+prefetch")
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "nonsense")
    assert config.current() is first
    assert runtime.module_options("conv") == first.conv_options()
    monkeypatch.setattr(runtime, "cupy", emu.EmuCupy)
    monkeypatch.setattr(runtime, "kernel", lambda module, name: lambda *args: None)
    monkeypatch.setattr(runtime, "num_sms", lambda: 132)
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    cb.conv2d_forward(x, w, None, (1, 1), (1, 1))                  # no error: not read again
    monkeypatch.setattr(config, "_current", None)                   # a new process, in effect
    with pytest.raises(ValueError, match="MINICNN_CONV_VARIANT='nonsense'"):
        config.current()
    monkeypatch.delenv("MINICNN_CONV_VARIANT")
    assert config.current() == CudaConfig()
    assert CudaConfig.from_env({"MINICNN_CONV_VARIANT": "plain"}) == CudaConfig(features=())


def test_configure_and_configured_set_the_build(monkeypatch):
    monkeypatch.setattr(config, "_current", CudaConfig())
    plain = CudaConfig(features=())
    previous = cb.configure(plain)
    assert previous == CudaConfig() and cb.current_config() is plain
    assert runtime.module_options("conv") == plain.conv_options()
    with cb.configured(CudaConfig.from_variant("vec4")) as c:
        assert cb.current_config() is c and c.variant == "vec4"
    assert cb.current_config() is plain                             # restored after the block
    with pytest.raises(RuntimeError):
        with cb.configured(CudaConfig()):
            raise RuntimeError("inside")
    assert cb.current_config() is plain                             # restored after an error
