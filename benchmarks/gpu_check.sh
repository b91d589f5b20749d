#!/usr/bin/env bash
# gpu_check.sh -- the one prepared call for a machine with an NVIDIA GPU: every check and
# benchmark of HEAD in one go, sized for about 5 minutes on an H100/H200 (entry 15's run of
# the same steps took 387 s with more builds) and cut to BUDGET_S (default 460 s) in any case.
# Each step has its own time limit, cut to what is left of the budget, so a hanging step
# cannot eat the session, and a failing step does not stop the others.
#
#   bash benchmarks/gpu_check.sh                  (from the repository root: everything)
#   bash benchmarks/gpu_check.sh --checks-only    (steps 1-5, the ladder check and 9: no benchmarks)
#   CMR_DATA=.devdata OUT=$OUT BUDGET_S=460 timeout -k 5 480 bash benchmarks/gpu_check.sh
#
# Steps, in order of value (what the budget cuts first comes last):
#   1. versions: nvidia-smi, python, numpy, cupy (+ its CUDA runtime), torch, nvcc
#   2. a direct self-check of every shipped kernel against numpy_backend (all conv tile
#      shapes, split-K, U-Net-sized layers, pool / relu / loss / optimizers bit for bit);
#      2b. the same with every untimed change on (MINICNN_CUDA_UNTIMED=all: NOTES 16-23)
#      2c. the same with our convolutions on the tensor cores (MINICNN_CUDA_PRECISION=tf32,
#      kernels/conv_tf32.cu), against numpy_backend's TF32 emulation (NOTES 31)
#   3. the CUDA tests against PyTorch (ops, optimizers, the U-Net, the first training steps
#      against the NumPy backend):  MINICNN_TEST_CUDA=1 pytest -q tests -k "cuda and not emulator"
#      (the CPU emulator of the kernels is for machines without a GPU)
#   4. the op tests under compute-sanitizer memcheck (CuPy's memory pool switched off, so that
#      an out-of-bounds access is outside any allocation and gets reported), with the bounded
#      hypothesis profile HYPOTHESIS_PROFILE=ci
#   5. rung 5 of the ladder (dev/cuda/winograd.py, Winograd) against numpy_backend on the GPU,
#      also under memcheck when the sanitizer runs here
#   6. bench_train.py --tf32: the U-Net's training step against PyTorch/cuDNN fp32 (the
#      target) and PyTorch with TF32 (informational rows)                    ($OUT/train)
#   6a. bench_train.py with every untimed change on (MINICNN_CUDA_UNTIMED=all), against
#      PyTorch fp32 in the same run: step 6's ratio against this one decides NOTES 30
#                                                                     ($OUT/train_untimed)
#   6b. bench_train.py --tf32 with our convolutions in TF32 (MINICNN_CUDA_PRECISION=tf32):
#      the step against PyTorch's default (cuDNN TF32), side by side (NOTES 31's target:
#      <= 1.0x), and the first-step loss                                ($OUT/train_tf32)
#   6c. dev/cuda/ladder.py --check --bench: every rung of the ladder checked, then timed
#      against the rung below and cuDNN fp32 / TF32 (--checks-only: checked only)  ($OUT/ladder)
#   7. bench_ops.py --tf32: every op of a step against cuDNN fp32, the 3x3 convolutions also
#      against cuDNN with TF32                                               ($OUT/ops)
#   7a. bench_ops.py with every untimed change on: the rows each change touches (ReLU, pool,
#      CE, up-convolution, head) against step 7's                      ($OUT/ops_untimed)
#   8. bench_winograd.py: rung 5 against the shipped kernels and cuDNN fp32 / TF32, at the
#      U-Net's 3x3 layers, all three passes                                  ($OUT/winograd)
#   9. a short training on real data with --backend cuda (3 epochs of the cpu16 preset),
#      scored on cmr/val by cmr.evaluate, then cmr.predict on the test images (skipped when
#      the data is not there)                                                 ($OUT/eval_val.json)
#  10. CONV_BENCH_VARIANTS (default: none): bench_train for other builds of kernels/conv.cu
#      ("plain" or features joined by "+": minicnn.backend.cuda.CudaConfig), each in its own
#      processes (MINICNN_CONV_VARIANT, read once at start-up)      ($OUT/train_<variant>)
# A summary with each step's status ends the output. Everything is also written to
# $OUT/gpu_check.log when $OUT is set, and the reports are then packed into
# $OUT/reports.tar.gz. Exit status: 0 if no step failed, else 1.
#
# Environment: PYTHON (default: python3, else python), CMR_DATA (folder holding cmr/;
# default: shared/data), OUT (optional), BUDGET_S (seconds for the whole script, default 460;
# a step with less than 10 s left is skipped, so that the script still writes its summary and
# its archive inside an outer time limit: set it some 20 s below that limit),
# CONV_BENCH_VARIANTS (step 10).
set -u
# shellcheck disable=SC2329  # the step functions run in a child bash (bash -c, export -f)

BENCH=1
case "${1:-}" in
    --checks-only) BENCH=0 ;;
    ""|--bench) ;;                      # --bench: the old spelling of the default
    *) echo "usage: bash benchmarks/gpu_check.sh [--checks-only]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 1

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_check.log") 2>&1
fi

PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
CMR_DATA="${CMR_DATA:-shared/data}"
BUDGET_S="${BUDGET_S:-460}"
CONV_BENCH_VARIANTS="${CONV_BENCH_VARIANTS:-}"
export PYTHON
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

STEPS=()
STATUS=()
START=$SECONDS

# step NAME TIMEOUT_S CMD...: run CMD with a time limit (cut to what is left of BUDGET_S),
# record PASS / FAIL (rc) / TIMEOUT, SKIP when less than 10 s of BUDGET_S are left, or SKIP
# when CMD exits with 77 (a tool that refuses this machine, e.g. compute-sanitizer on gVisor).
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    if [ "$left" -lt 10 ]; then
        skip "$name" "BUDGET_S=${BUDGET_S}s spent"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo
    echo "=================================================================== $name"
    echo "+ $*"
    local t0=$SECONDS rc
    timeout -k 10 "$limit" "$@"
    rc=$?
    local took=$((SECONDS - t0))
    STEPS+=("$name")
    if [ $rc -eq 0 ]; then
        STATUS+=("PASS (${took}s)")
    elif [ $rc -eq 77 ]; then
        STATUS+=("SKIP (refused on this machine, ${took}s)")
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        STATUS+=("TIMEOUT after ${limit}s")
    else
        STATUS+=("FAIL rc=$rc (${took}s)")
    fi
}

skip() {
    echo
    echo "=================================================================== $1"
    echo "skipped: $2"
    STEPS+=("$1")
    STATUS+=("SKIP ($2)")
}

versions() {
    nvidia-smi || echo "nvidia-smi failed"
    echo "python: $PYTHON"
    local rc
    "$PYTHON" - <<'EOF'
import sys
print("python", sys.version.split()[0])
import numpy; print("numpy", numpy.__version__)
try:
    import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)
except Exception as e:
    print("torch: not importable:", e)
import cupy
print("cupy", cupy.__version__, "runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "driver", cupy.cuda.runtime.driverGetVersion())
d = cupy.cuda.Device()
print("device", d.id, cupy.cuda.runtime.getDeviceProperties(d.id)["name"].decode(),
      "SMs", d.attributes["MultiProcessorCount"], "cc", d.compute_capability)
from minicnn import backend
backend.get("cuda")
print("minicnn cuda backend: available")
EOF
    rc=$?
    command -v nvcc >/dev/null && nvcc --version | tail -2
    command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -2
    return "$rc"    # fails when CuPy or the GPU is not usable
}

selfcheck() {
    # Our kernels against numpy_backend, directly: every conv tile configuration (forced),
    # split-K, U-Net-sized layers with the default plan, pool / relu / loss / optimizers, the
    # refusals; then a few timings. (The op tests use small shapes: one tile, rarely split-K.)
    "$PYTHON" - <<'EOF'
import sys, time
import numpy as np
import cupy
from minicnn import backend
from minicnn.backend import numpy_backend as nb
from minicnn.backend.cuda import planner, runtime
cb = backend.get("cuda")
print("conv build:", cb.current_config().variant, "untimed changes:",
      cb.current_config().untimed_name, "precision:", cb.current_config().precision, flush=True)
nb.set_precision(cb.current_config().precision)   # TF32: the same operands, rounded the same
FAKE = cupy.__version__ == "fake"     # a CPU stand-in used to test this script itself
TOL = {np.float32: 3e-4, np.float64: 1e-10}
fails, checks = [], [0]

def close(name, got, ref, dtype, exact=False):
    checks[0] += 1
    got = cb.to_host(got)
    ok = got.shape == ref.shape and got.dtype == ref.dtype
    if ok and exact:
        ok = np.array_equal(got, ref, equal_nan=True)
    elif ok:
        scale = max(1.0, float(np.abs(ref).max(initial=0)))
        ok = np.allclose(got, ref, rtol=TOL[dtype], atol=TOL[dtype] * scale)
    if not ok:
        err = (np.nanmax(np.abs(got.astype(np.float64) - ref)) if got.shape == ref.shape
               else "shapes differ")
        fails.append(f"{name}: got {got.shape} {got.dtype}, want {ref.shape} {ref.dtype}, "
                     f"max abs err {err}")
        print("FAIL", fails[-1], flush=True)

def conv_all(tag, rng, dtype, N, C, O, H, W, k, s, p, bias):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((O, C) + k) / np.sqrt(C * k[0] * k[1])).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if bias else None
    xd, wd = cb.asarray(x), cb.asarray(w)
    bd = None if b is None else cb.asarray(b)
    yr = nb.conv2d_forward(x, w, b, s, p)
    close(f"{tag} forward", cb.conv2d_forward(xd, wd, bd, s, p), yr, dtype)
    close(f"{tag} forward + ReLU", cb.conv2d_forward(xd, wd, bd, s, p, relu=True),
          nb.conv2d_forward(x, w, b, s, p, relu=True), dtype)
    gy = rng.standard_normal(yr.shape).astype(dtype)
    gyd = cb.asarray(gy)
    close(f"{tag} backward_input", cb.conv2d_backward_input(gyd, wd, x.shape, s, p),
          nb.conv2d_backward_input(gy, w, x.shape, s, p), dtype)
    bc = rng.standard_normal(C).astype(dtype)      # the transposed convolution's bias
    close(f"{tag} backward_input + bias",
          cb.conv2d_backward_input(gyd, wd, x.shape, s, p, bias=cb.asarray(bc)),
          nb.conv2d_backward_input(gy, w, x.shape, s, p, bias=bc), dtype)
    close(f"{tag} backward_weight", cb.conv2d_backward_weight(gyd, xd, w.shape, s, p),
          nb.conv2d_backward_weight(gy, x, w.shape, s, p), dtype)

orig_plan = planner.plan_gemm
def cdiv(a, b):
    return -(-a // b)
def forced(tile, max_splits):
    def plan(M, Ncols, K, suffix, sm_count, split_k=False, tiles=False):
        BM, BN, BK = planner.TILES[tile][:3]
        k_chunk, splits = K, 1
        if split_k and K > 0:
            splits = max(1, min(max_splits, cdiv(K, BK)))
            k_chunk = cdiv(cdiv(K, splits), BK) * BK
            splits = cdiv(K, k_chunk)
        return tile, (cdiv(Ncols, BN), cdiv(M, BM), splits), k_chunk
    return plan

t0 = time.time()
rng = np.random.default_rng(0)
cases = 0
for dtype in (np.float32, np.float64):
    for tile in planner.TILES:
        if dtype == np.float64 and tile not in ("m32n128", "m64n64"):
            continue                           # the 8x8 register blocks are float32 only
        if tile in ("m128n64", "m64n128") and not cb.current_config().has("tiles"):
            continue                           # built with the "tiles" feature only
        for i in range(2 if FAKE else 8):
            planner.plan_gemm = forced(tile, int(rng.integers(1, 8)))
            N, C, O = int(rng.integers(1, 4)), int(rng.integers(1, 41)), int(rng.integers(1, 141))
            H, W = int(rng.integers(1, 21)), int(rng.integers(1, 21))
            k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
            s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            p = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
            k = (min(k[0], H + 2 * p[0]), min(k[1], W + 2 * p[1]))
            conv_all(f"{tile} {np.dtype(dtype).name} N{N} C{C} O{O} {H}x{W} k{k} s{s} p{p}",
                     rng, dtype, N, C, O, H, W, k, s, p, bias=bool(i % 2))
            cases += 1
        for i in range(1 if FAKE else 3):      # windows that partition the input (up-convolution)
            planner.plan_gemm = forced(tile, 1)
            N, C, O = int(rng.integers(1, 4)), int(rng.integers(1, 41)), int(rng.integers(1, 141))
            k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            H, W = k[0] * int(rng.integers(1, 9)), k[1] * int(rng.integers(1, 9))
            conv_all(f"{tile} {np.dtype(dtype).name} N{N} C{C} O{O} {H}x{W} k{k} s{k} p(0, 0)",
                     rng, dtype, N, C, O, H, W, k, k, (0, 0), bias=False)
            cases += 1
planner.plan_gemm = orig_plan
for dtype in (np.float32, np.float64):   # the U-Net's up-convolutions, default plan
    for N, C, O, H, W in ([(4, 512, 1024, 12, 12), (4, 64, 128, 96, 96)] if not FAKE
                          else [(1, 3, 5, 4, 6)]):
        conv_all(f"default plan {np.dtype(dtype).name} N{N} C{C} O{O} {H}x{W} k2 s2", rng,
                 dtype, N, C, O, H, W, (2, 2), (2, 2), (0, 0), bias=False)
        cases += 1
unet = [(4, 1, 16, 96, 96), (4, 16, 16, 96, 96), (4, 32, 64, 48, 48), (4, 64, 256, 72, 72),
        (4, 256, 128, 12, 12), (4, 128, 64, 6, 6)] if not FAKE else [(1, 3, 20, 9, 9)]
for dtype in (np.float32, np.float64):
    for N, C, O, H, W in unet:
        conv_all(f"default plan {np.dtype(dtype).name} N{N} C{C} O{O} {H}x{W} k3 p1", rng, dtype,
                 N, C, O, H, W, (3, 3), (1, 1), (1, 1), bias=True)
        cases += 1
for dtype in (np.float32, np.float64):   # the head: 1x1 to 4 classes, the narrow kernels
    for N, C, O, H in ([(4, 64, 4, 96), (2, 9, 8, 13)] if not FAKE else [(1, 3, 2, 4)]):
        conv_all(f"narrow 1x1 {np.dtype(dtype).name} N{N} C{C} O{O} {H}x{H}", rng, dtype,
                 N, C, O, H, H, (1, 1), (1, 1), (0, 0), bias=True)
        cases += 1
print(f"conv: {cases} shapes x 3 ops in {time.time() - t0:.1f}s", flush=True)

for dtype in (np.float32, np.float64):
    for (N, C, H, W), k, s in [((2, 3, 13, 11), (3, 3), (2, 2)), ((2, 3, 13, 11), (2, 2), (2, 2)),
                               ((1, 2, 9, 12), (4, 3), (1, 2)), ((1, 1, 20, 20), (17, 16), (2, 3))]:
        x = rng.integers(-2, 3, size=(N, C, H, W)).astype(dtype)   # many ties
        x[0, 0, 0, :2] = np.nan
        y, idx = cb.maxpool2d_forward(cb.asarray(x), k, s)
        yr, ir = nb.maxpool2d_forward(x, k, s)
        close(f"maxpool fwd {x.shape} k{k} s{s}", y, yr, dtype, exact=True)
        checks[0] += 1
        if cb.to_host(idx).dtype != ir.dtype or not (cb.to_host(idx) == ir).all():
            fails.append(f"maxpool argmax {x.shape} k{k} s{s}")
        gy = rng.standard_normal(yr.shape).astype(dtype)
        close(f"maxpool bwd {x.shape} k{k} s{s}",
              cb.maxpool2d_backward(cb.asarray(gy), idx, x.shape, k, s),
              nb.maxpool2d_backward(gy, ir, x.shape, k, s), dtype, exact=True)
    x = np.array([[-0.0, 0.0, np.nan], [-1, 2, np.inf]], dtype)
    close("relu fwd", cb.relu_forward(cb.asarray(x)), nb.relu_forward(x), dtype, exact=True)
    gy = rng.standard_normal(x.shape).astype(dtype)
    close("relu bwd", cb.relu_backward(cb.asarray(gy), cb.relu_forward(cb.asarray(x))),
          nb.relu_backward(gy, nb.relu_forward(x)), dtype, exact=True)
    # long arrays: the 16-byte kernels (aligned, with relu_vec16 on) and, on a view that
    # starts 1 element in, the element-wise ones; NaN, inf and -0.0 scattered through, gy inf
    # where y == 0
    big = rng.standard_normal(100003).astype(dtype)
    big[::97], big[5::89], big[7::83] = np.nan, -0.0, np.inf
    gbig = rng.standard_normal(big.shape).astype(dtype)
    gbig[::101] = np.inf
    for tag, sl in (("aligned", slice(None)), ("offset view", slice(1, None))):
        xd, gd = cb.asarray(big)[sl], cb.asarray(gbig)[sl]
        yd = cb.relu_forward(xd)
        close(f"relu fwd {tag}", yd, nb.relu_forward(big[sl]), dtype, exact=True)
        close(f"relu bwd {tag}", cb.relu_backward(gd, yd),
              nb.relu_backward(gbig[sl], nb.relu_forward(big[sl])), dtype, exact=True)
    for shape in [(5, 4), (2, 4, 7, 9)]:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
        for w in (None, rng.random(shape[1]).astype(dtype)):
            out = cb.softmax_cross_entropy_forward(cb.asarray(x), cb.asarray(t),
                                                   None if w is None else cb.asarray(w))
            ref = nb.softmax_cross_entropy_forward(x, t, w)
            for name, o, r in zip(("loss", "wt", "p"), out, ref):
                close(f"xent fwd {name} {shape}", o, r, dtype)
            for red in ("sum", "mean"):             # the sums in the kernels (two launches)
                out = cb.softmax_cross_entropy_forward(
                    cb.asarray(x), cb.asarray(t), None if w is None else cb.asarray(w),
                    reduction=red)
                ref = nb.softmax_cross_entropy_forward(x, t, w, reduction=red)
                for name, o, r in zip(("loss", "wt", "p"), out, ref):
                    close(f"xent fwd {red} {name} {shape}", o, r, dtype)
            for g in (rng.standard_normal(t.shape).astype(dtype),
                      np.broadcast_to(np.asarray(0.25, dtype), t.shape)):
                gd = cupy.broadcast_to(cb.asarray(g[(0,) * g.ndim]), t.shape) \
                    if g.strides == (0,) * g.ndim else cb.asarray(g)
                close(f"xent bwd {shape}", cb.softmax_cross_entropy_backward(
                          cb.asarray(ref[2]), cb.asarray(t), None if w is None else cb.asarray(w), gd),
                      nb.softmax_cross_entropy_backward(ref[2], t, w, g), dtype, exact=True)
    p0 = rng.standard_normal(1000).astype(dtype)
    g0 = rng.standard_normal(1000).astype(dtype)
    for step in (1, 7):
        for wdecay in (0.0, 0.01):
            P, M, V = (cb.asarray(a) for a in (p0, p0 * 0.1, np.abs(p0)))
            Pr, Mr, Vr = p0.copy(), p0 * 0.1, np.abs(p0)
            kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wdecay, step=step)
            cb.adam_update(P, cb.asarray(g0), M, V, **kw)
            nb.adam_update(Pr, g0, Mr, Vr, **kw)
            for name, a, r in (("p", P, Pr), ("m", M, Mr), ("v", V, Vr)):
                close(f"adam {name} step{step} wd{wdecay}", a, r, dtype, exact=True)
            for mom, nest, first in ((0.0, False, False), (0.9, False, True), (0.9, True, False)):
                P, B = cb.asarray(p0), cb.asarray(p0 * 0.5)
                Pr, Br = p0.copy(), p0 * 0.5
                kw = dict(lr=0.01, momentum=mom, dampening=0.1, nesterov=nest,
                          weight_decay=wdecay, first=first)
                cb.sgd_update(P, cb.asarray(g0), B if mom else None, **kw)
                nb.sgd_update(Pr, g0, Br if mom else None, **kw)
                close(f"sgd p mom{mom} nest{nest} first{first}", P, Pr, dtype, exact=True)
                close(f"sgd buf mom{mom} nest{nest} first{first}", B, Br, dtype, exact=True)
            P, S = cb.asarray(p0), cb.asarray(np.abs(g0))
            Pr, Sr = p0.copy(), np.abs(g0)
            cb.adagrad_update(P, cb.asarray(g0), S, clr=0.01, eps=1e-10, weight_decay=wdecay)
            nb.adagrad_update(Pr, g0, Sr, clr=0.01, eps=1e-10, weight_decay=wdecay)
            close("adagrad p", P, Pr, dtype, exact=True)
            close("adagrad s", S, Sr, dtype, exact=True)

for what, fn in [
        ("float16 input", lambda: cb.relu_forward(cupy.zeros(3, dtype=np.float16))),
        ("target out of range", lambda: cb.softmax_cross_entropy_forward(
            cupy.zeros((2, 3)), cupy.asarray(np.array([0, 3])), None)),
        ("target out of range, mean", lambda: cb.softmax_cross_entropy_forward(
            cupy.zeros((2, 3)), cupy.asarray(np.array([-1, 0])), None, reduction="mean")),
        ("inconsistent conv shapes", lambda: cb.conv2d_backward_input(
            cupy.zeros((1, 2, 3, 3)), cupy.zeros((2, 1, 3, 3)), (1, 1, 6, 6), (1, 1), (0, 0)))]:
    checks[0] += 1
    try:
        fn()
        fails.append(f"no ValueError for {what}")
    except ValueError:
        pass

print(f"{checks[0]} checks, {len(fails)} failures, {time.time() - t0:.1f}s", flush=True)
for f in fails:
    print("FAIL", f)

if not FAKE:   # timings (float32, CUDA events), for information
    def timeit(fn, reps=10):
        fn()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / reps
    for N, C, O, H in [(16, 16, 16, 96), (16, 64, 128, 24), (16, 256, 256, 6)]:
        x = cupy.random.standard_normal((N, C, H, H), dtype=np.float32)
        w = cupy.random.standard_normal((O, C, 3, 3), dtype=np.float32)
        b = cupy.zeros(O, dtype=np.float32)
        y = cb.conv2d_forward(x, w, b, (1, 1), (1, 1))
        flop = 2.0 * N * O * H * H * C * 9
        for name, fn in [
                ("fwd", lambda: cb.conv2d_forward(x, w, b, (1, 1), (1, 1))),
                ("bwd_input", lambda: cb.conv2d_backward_input(y, w, x.shape, (1, 1), (1, 1))),
                ("bwd_weight", lambda: cb.conv2d_backward_weight(y, x, w.shape, (1, 1), (1, 1)))]:
            ms = timeit(fn)
            print(f"conv3x3 f32 N{N} C{C} O{O} {H}x{H} {name:10s} {ms:8.3f} ms "
                  f"{flop / ms / 1e6:8.1f} GFLOP/s")

    def by_kernel(fn, reps=5):
        """ms per call of each kernel that fn launches (CUDA events around every launch)."""
        fn()
        cupy.cuda.Device().synchronize()
        marks, kernel_of = [], runtime.kernel
        def timed(module, kname):
            k = kernel_of(module, kname)
            def launch(grid, block, args):
                s, e = cupy.cuda.Event(), cupy.cuda.Event()
                s.record()
                k(grid, block, args)
                e.record()
                marks.append((kname, s, e))
            return launch
        runtime.kernel = timed
        try:
            for _ in range(reps):
                fn()
        finally:
            runtime.kernel = kernel_of
        cupy.cuda.Device().synchronize()
        out = {}
        for kname, s, e in marks:
            out[kname] = out.get(kname, 0.0) + cupy.cuda.get_elapsed_time(s, e) / reps
        return out

    # where the time of each 3x3 pass goes, kernel by kernel (the U-Net's layers at batch
    # 25), for information
    try:
        for C, O, H in [(64, 64, 96), (128, 128, 48), (256, 256, 24), (512, 512, 12),
                        (1024, 1024, 6)]:
            x = cupy.random.standard_normal((25, C, H, H), dtype=np.float32)
            w = cupy.random.standard_normal((O, C, 3, 3), dtype=np.float32) * 0.05
            b = cupy.zeros(O, dtype=np.float32)
            y = cb.conv2d_forward(x, w, b, (1, 1), (1, 1))
            for name, fn in [
                    ("fwd", lambda: cb.conv2d_forward(x, w, b, (1, 1), (1, 1), relu=True)),
                    ("bwd_input", lambda: cb.conv2d_backward_input(y, w, x.shape, (1, 1),
                                                                   (1, 1))),
                    ("bwd_weight", lambda: cb.conv2d_backward_weight(y, x, w.shape,
                                                                     (1, 1), (1, 1)))]:
                parts = by_kernel(fn)
                print(f"by kernel, conv3x3 N25 C{C} O{O} {H}x{H} {name:10s} "
                      f"{sum(parts.values()):7.3f} ms: " +
                      ", ".join(f"{k} {v:.3f}" for k, v in parts.items()), flush=True)
            del x, w, b, y
    except Exception as err:          # informational only: never fails the check
        print("by-kernel timings failed:", repr(err))
sys.exit(1 if fails else 0)
EOF
}

winograd_check() {
    # rung 5 (dev/cuda/winograd.py) against numpy_backend on the GPU: forward (bias, ReLU),
    # input gradient, weight gradient, both tile sizes, both dtypes, split K, a U-Net layer
    "$PYTHON" - <<'EOF'
import os, sys, time
import numpy as np
sys.path.insert(0, os.path.join(os.getcwd(), "dev", "cuda"))
import winograd
from minicnn.backend import numpy_backend as nb
import cupy
FAKE = cupy.__version__ == "fake"     # a CPU stand-in used to test this script itself
t0, fails, checks = time.time(), [], 0
rng = np.random.default_rng(0)
shapes = [(2, 16, 6, 10, 17), (2, 16, 8, 12, 17), (1, 1100, 4, 4, 16), (1, 16, 4, 4, 1100)]
if not FAKE:
    shapes += [(4, 64, 48, 48, 128), (4, 256, 12, 12, 256), (2, 1024, 6, 6, 1024)]
for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
    for N, C, H, W, O in shapes:
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        w = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
        b = rng.standard_normal(O).astype(dtype)
        gy = rng.standard_normal((N, O, H, W)).astype(dtype)
        xd, wd, bd, gyd = (cupy.asarray(a) for a in (x, w, b, gy))
        for tile in (4, 2):
            for what, got, ref in [
                    ("forward", winograd.forward(xd, wd, bd, tile=tile),
                     nb.conv2d_forward(x, w, b, (1, 1), (1, 1))),
                    ("forward + ReLU", winograd.forward(xd, wd, bd, relu=True, tile=tile),
                     nb.conv2d_forward(x, w, b, (1, 1), (1, 1), relu=True)),
                    ("input grad", winograd.input_grad(gyd, wd, tile=tile),
                     nb.conv2d_backward_input(gy, w, x.shape, (1, 1), (1, 1))),
                    ("weight grad", winograd.weight_grad(xd, gyd, tile=tile),
                     nb.conv2d_backward_weight(gy, x, w.shape, (1, 1), (1, 1)))]:
                checks += 1
                got = cupy.asnumpy(got)
                err = float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max()))
                ok = got.shape == ref.shape and got.dtype == ref.dtype and err <= tol
                if not ok:
                    fails.append(f"{what} tile {tile} {np.dtype(dtype).name} {(N, C, H, W, O)}: "
                                 f"rel err {err:.2e}")
                    print("FAIL", fails[-1], flush=True)
print(f"winograd rung: {checks} checks, {len(fails)} failures, {time.time() - t0:.1f}s")
sys.exit(1 if fails else 0)
EOF
}

sanitized() {
    # CMD... under compute-sanitizer memcheck, CuPy allocating each array by cudaMalloc (no
    # pool); exit 77 when the sanitizer refuses this machine (gVisor: "Device not supported")
    local log=/tmp/gpu_check_sanitizer.log rc
    compute-sanitizer --tool memcheck --error-exitcode 99 "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ] && grep -q "Device not supported" "$log"; then
        return 77
    fi
    return "$rc"
}

sanitized_ops() {
    sanitized "$PYTHON" -c '
import sys, cupy, pytest
cupy.cuda.set_allocator(None)
sys.exit(pytest.main(["-q", "tests/test_ops.py", "-k", "cuda", "-x", "-p", "no:cacheprovider"]))
'
}

sanitized_winograd() {
    sanitized "$PYTHON" -c '
import os, sys, cupy
cupy.cuda.set_allocator(None)
sys.path.insert(0, os.path.join(os.getcwd(), "dev", "cuda"))
import numpy as np, winograd
for N, C, H, O in [(2, 16, 8, 17), (2, 16, 6, 17), (1, 1100, 4, 16)]:
    x = cupy.random.standard_normal((N, C, H, H), dtype=np.float32)
    w = cupy.random.standard_normal((O, C, 3, 3), dtype=np.float32)
    for tile in (4, 2):
        y = winograd.forward(x, w, cupy.zeros(O, np.float32), relu=True, tile=tile)
        winograd.input_grad(y, w, tile=tile)
        winograd.weight_grad(x, y, tile=tile)
cupy.cuda.Device().synchronize()
print("winograd rung under memcheck: done")
'
}

train_eval_predict() {
    # a short training on real data with --backend cuda, scored on cmr/val, then predict
    local run=/tmp/gpu_check_run
    rm -rf "$run"
    "$PYTHON" -m cmr.train --backend cuda --preset cpu16 --epochs 3 --data "$CMR_DATA/cmr" \
        --out "$run" --no-progress || return 1
    "$PYTHON" -m cmr.evaluate --backend cuda --checkpoint "$run/best.npz" \
        --data "$CMR_DATA/cmr" --split val --json "$run/eval_val.json" || return 1
    "$PYTHON" -m cmr.predict --backend cuda --checkpoint "$run/best.npz" \
        --input "$CMR_DATA/cmr/test/image" --out "$run/pred" || return 1
    ls "$run/pred" | head -3
    if [ -n "${OUT:-}" ]; then
        cp "$run/log.jsonl" "$OUT/train_log.jsonl"
        cp "$run/eval_val.json" "$OUT/eval_val.json"
    fi
    return 0
}

# (functions run under `timeout` through a child bash, hence export -f)
export -f versions selfcheck winograd_check sanitized sanitized_ops sanitized_winograd \
    train_eval_predict
export MINICNN_TEST_CUDA=1                              # a CUDA test fails, not skips, without GPU
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"   # bounded example counts
export CMR_DATA

step "versions" 30 bash -c versions
step "kernel self-check vs numpy_backend" 60 bash -c selfcheck
step "kernel self-check, untimed changes on" 60 env MINICNN_CUDA_UNTIMED=all bash -c selfcheck
step "kernel self-check, TF32 tensor cores" 60 env MINICNN_CUDA_PRECISION=tf32 bash -c selfcheck
step "pytest -k cuda" 150 "$PYTHON" -m pytest -q -p no:cacheprovider tests -k "cuda and not emulator" -rs --tb=short
if command -v compute-sanitizer >/dev/null; then
    step "compute-sanitizer memcheck (test_ops -k cuda)" 90 bash -c sanitized_ops
else
    skip "compute-sanitizer memcheck (test_ops -k cuda)" "compute-sanitizer not on PATH"
fi
step "Winograd rung (dev/cuda) vs numpy_backend" 60 bash -c winograd_check
if command -v compute-sanitizer >/dev/null; then
    step "compute-sanitizer memcheck (Winograd rung)" 45 bash -c sanitized_winograd
fi
if [ "$BENCH" = 0 ]; then
    step "ladder: check every rung (dev/cuda/ladder.py --check)" 60 \
        "$PYTHON" dev/cuda/ladder.py --check
fi
if [ "$BENCH" = 1 ]; then
    # full-size benchmarks (U-Net base 64, batch 25, 96x96), fp32 against cuDNN fp32, TF32 rows
    step "bench_train --device cuda --tf32" 100 \
        "$PYTHON" benchmarks/bench_train.py --device cuda --tf32 ${OUT:+--out "$OUT/train"}
    step "bench_train --device cuda, untimed changes on" 60 \
        env MINICNN_CUDA_UNTIMED=all "$PYTHON" benchmarks/bench_train.py --device cuda \
        ${OUT:+--out "$OUT/train_untimed"}
    step "bench_train --device cuda --tf32, our convolutions in TF32" 100 \
        env MINICNN_CUDA_PRECISION=tf32 "$PYTHON" benchmarks/bench_train.py --device cuda \
        --tf32 ${OUT:+--out "$OUT/train_tf32"}
    # the ladder (dev/cuda): every rung checked against numpy_backend, then timed at the
    # U-Net's 3x3 layers against the rung below and cuDNN fp32 / TF32   ($OUT/ladder)
    step "ladder: check and time every rung (dev/cuda/ladder.py)" 150 \
        "$PYTHON" dev/cuda/ladder.py --check --bench --budget 0.5 ${OUT:+--out "$OUT/ladder"}
    step "bench_ops --device cuda --tf32" 100 \
        "$PYTHON" benchmarks/bench_ops.py --device cuda --tf32 ${OUT:+--out "$OUT/ops"}
    step "bench_ops --device cuda, untimed changes on" 100 \
        env MINICNN_CUDA_UNTIMED=all "$PYTHON" benchmarks/bench_ops.py --device cuda \
        ${OUT:+--out "$OUT/ops_untimed"}
    step "bench_winograd (rung 5 vs shipped vs cuDNN)" 100 \
        "$PYTHON" benchmarks/bench_winograd.py ${OUT:+--out "$OUT/winograd"}
fi
if [ -d "$CMR_DATA/cmr" ]; then
    step "train 3 epochs on cuda, evaluate on cmr/val, predict" 75 bash -c train_eval_predict
else
    skip "train 3 epochs on cuda, evaluate on cmr/val, predict" "no data at $CMR_DATA/cmr (set CMR_DATA)"
fi
if [ "$BENCH" = 1 ]; then
    for variant in $CONV_BENCH_VARIANTS; do      # other builds of kernels/conv.cu, step time
        step "bench_train, conv build $variant" 50 \
            env MINICNN_CONV_VARIANT="$variant" "$PYTHON" benchmarks/bench_train.py \
            --device cuda ${OUT:+--out "$OUT/train_${variant//+/_}"}
    done
fi


echo
echo "=================================================================== summary ($((SECONDS - START))s)"
git log -1 --format='HEAD %h %cd %s' 2>/dev/null || true
failed=0
for i in "${!STEPS[@]}"; do
    printf '%-55s %s\n' "${STEPS[$i]}" "${STATUS[$i]}"
    case "${STATUS[$i]}" in PASS*|SKIP*) ;; *) failed=1 ;; esac
done
if [ -n "${OUT:-}" ]; then
    # everything but this log in one archive (the device tool brings back at most 8 files)
    (cd "$OUT" && items=$(ls -A | grep -v -x -e gpu_check.log -e reports.tar.gz) &&
        [ -n "$items" ] && tar -czf reports.tar.gz $items && rm -rf $items &&
        echo "reports: $OUT/reports.tar.gz")
fi
exit $failed
