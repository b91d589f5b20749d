"""The ladder of convolution kernels: check every rung, then time every rung.

    python dev/cuda/ladder.py --check                    (every rung vs NumPy)
    python dev/cuda/ladder.py --bench --out DIR          (U-Net layer sizes)
    python dev/cuda/ladder.py --bench --rungs 3 4 --layers 24 12 --repeats 50

The rungs (dev/cuda/README.md), each a 3x3, stride-1, padding-1 convolution of
NCHW float32 tensors, forward and the gradients it implements:

  1 naive     dev/cuda/conv_1_naive.cu       one thread per output element
  2 smem      dev/cuda/conv_2_smem.cu        tiles of input and weights in shared memory
  3 regblock  dev/cuda/conv_3_regblock.cu    register blocks: the implicit GEMM
  4 shipped   kernels/conv.cu                minicnn's CUDA backend, as the library runs
  5 winograd  dev/cuda/winograd.py           Winograd's F(m x m, 3x3), where that file is
  6 tf32      kernels/conv_tf32.cu           tensor cores: rung 4's GEMMs in TF32 mma.sync
                                             (the library with CudaConfig(precision="tf32"))

``--check`` compares each pass of each rung with minicnn's NumPy backend (in
float64) on small random shapes: max |rung - numpy| / max(1, max |numpy|) must
be <= 2e-4 (float32 sums of a few thousand terms; the GPU contracts a*b + c into
one FMA), and <= 2e-3 for rung 6, which rounds its operands to TF32 (TF32_TOL).
``--bench`` times each pass of each rung at the U-Net's 3x3 layers
(batch 25: 64 channels at 96 px, 128 at 48, 256 at 24, 512 at 12, 1024 at 6;
docs/generated/unet_table.md) and cuDNN through PyTorch in fp32 and TF32 when
torch is importable: medians of repeated runs timed with CUDA events after a
warm-up; each result first compared with cuDNN fp32 (else the lowest rung run)
within 1e-3. It prints ms, TFLOP/s, the speed-up over the rung below (the
nearest lower rung with that pass) and the ratio to cuDNN, and writes
ladder.json and ladder.md into --out. It needs CuPy and a GPU; ``--help`` works
without them.
"""
import argparse
import functools
import importlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(ROOT, "benchmarks")]
import common  # noqa: E402  (benchmarks/common.py: timing, reports; puts ROOT on sys.path)
import launch  # noqa: E402  (dev/cuda/launch.py: the launchers of rungs 1-3)

PASSES = ("forward", "input_grad", "weight_grad")
RUNG_NAMES = {1: "naive", 2: "smem", 3: "regblock", 4: "shipped", 5: "winograd",
              6: "tf32"}
LAYERS = {96: 64, 48: 128, 24: 256, 12: 512, 6: 1024}   # size (px) -> channels
CHECK_SHAPES = [(2, 16, 12, 20, 24), (3, 40, 24, 16, 70), (1, 17, 6, 10, 33),
                (2, 5, 7, 9, 6)]                         # (N, C, H, W, O)
CHECK_TOL = 2e-4
BENCH_TOL = common.FP32_TOL
# Rung 6 rounds x and w to TF32 (10 mantissa bits, to nearest: relative error
# <= u = 2^-11 each), so each product is off by a relative <= 2u = 2^-10, and a
# K-term sum by at most 2^-10 sum_k |x_k w_k| <= K 2^-10 max|x| max|w|. On
# CHECK_SHAPES (x ~ N(0, 1), w ~ N(0, 1/(9C)), K up to 630) that worst case is
# about 1e-2 of an output near 1. The rounding errors are independent, though
# (uniform in [-u, u]): the error is a random sum, of standard deviation
# u sqrt(2/3) = 4e-4 of the output's typical size, and outputs reach 4-6 times
# that size, so we expect a few 1e-4 of max |numpy| (measured in the emulator:
# 2.7e-4 to 3.2e-4 on CHECK_SHAPES). 2e-3 leaves a factor 6 for the largest of
# millions of outputs, and still catches a lost K step of 8 at the largest K
# (9216: ~3 % of an output's size). The same bound serves --bench against cuDNN
# fp32, whose outputs are of the same size at every layer.
TF32_TOL = 2e-3
TF32_RUNGS = {6}


def tolerance(n, bench=False):
    """The agreement tolerance of rung ``n`` against NumPy (or cuDNN fp32)."""
    if n in TF32_RUNGS:
        return TF32_TOL
    return BENCH_TOL if bench else CHECK_TOL


class CupyRuntime:
    """``launch.py``'s runtime on the GPU: each rung compiled by NVRTC once."""

    def __init__(self, cupy):
        self.cupy = cupy

    @functools.lru_cache(maxsize=None)
    def _module(self, file):
        with open(os.path.join(HERE, file), encoding="utf-8") as f:
            return self.cupy.RawModule(code=f.read(), options=("--std=c++17",))

    def kernel(self, file, name):
        return self._module(file).get_function(name)

    def empty(self, shape):
        return self.cupy.empty(shape, self.cupy.float32)


def _cupy():
    """CuPy with a usable GPU, or SystemExit with the reason."""
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except ImportError:
        raise SystemExit("ladder.py: --check and --bench need CuPy and a CUDA GPU "
                         "(pip install cupy-cuda13x); CuPy is not importable") from None
    except Exception as err:    # noqa: BLE001  (CUDARuntimeError and kin)
        raise SystemExit(f"ladder.py: CuPy finds no usable CUDA GPU: {err}") from None
    return cupy


def library_rung(precision):
    """{pass: function} of minicnn's CUDA backend with the configuration in force but
    ``precision`` (rung 4: "fp32", kernels/conv.cu; rung 6: "tf32", kernels/conv_tf32.cu)."""
    import dataclasses
    from minicnn import backend
    from minicnn.backend.cuda import config
    bk, one = backend.get("cuda"), (1, 1)

    def run(fn):
        def wrapped(*args):
            with config.configured(dataclasses.replace(config.current(), precision=precision)):
                return fn(*args)
        return wrapped
    return {"forward": run(lambda x, w, b: bk.conv2d_forward(x, w, b, one, one)),
            "input_grad": run(lambda gy, w: bk.conv2d_backward_input(
                gy, w, (gy.shape[0], w.shape[1]) + gy.shape[2:], one, one)),
            "weight_grad": run(lambda x, gy: bk.conv2d_backward_weight(
                gy, x, (gy.shape[1], x.shape[1], 3, 3), one, one))}


def rungs(cupy, wanted):
    """{number: {pass: function}} of the rungs in ``wanted`` that are here:
    forward(x, w, b), input_grad(gy, w), weight_grad(x, gy) on CuPy arrays."""
    rt, found = CupyRuntime(cupy), {}
    for n, (_, _, fns) in launch.RUNGS.items():
        found[n] = {p: functools.partial(f, rt) for p, f in fns.items()}
    if wanted & {4, 6}:                 # the library, as it runs: fp32, and TF32
        for n, precision in ((4, "fp32"), (6, "tf32")):
            found[n] = library_rung(precision)
    if 5 in wanted:                     # dev/cuda/winograd.py, where it is
        try:
            wino = importlib.import_module("winograd")
            found[5] = {p: getattr(wino, p) for p in PASSES if hasattr(wino, p)}
        except ImportError as err:
            print(f"rung 5 (winograd) left out: {err}")
    return {n: found[n] for n in sorted(found) if n in wanted}


def _inputs(rng, N, C, H, W, O):
    """x, w, b, gy as float32 host arrays (w and b scaled to keep y near 1)."""
    s = np.float32(1 / np.sqrt(9 * C))
    return (rng.standard_normal((N, C, H, W), np.float32),
            rng.standard_normal((O, C, 3, 3), np.float32) * s,
            rng.standard_normal(O, np.float32) * s,
            rng.standard_normal((N, O, H, W), np.float32))


def _args(what, x, w, b, gy):
    return {"forward": (x, w, b), "input_grad": (gy, w), "weight_grad": (x, gy)}[what]


def check(cupy, table):
    """Every pass of every rung against numpy_backend: the number of failures."""
    from minicnn.backend import numpy_backend as nb
    rng, one, failures = np.random.default_rng(0), (1, 1), 0
    for N, C, H, W, O in CHECK_SHAPES:
        x, w, b, gy = _inputs(rng, N, C, H, W, O)
        x64, w64, b64, gy64 = (a.astype(np.float64) for a in (x, w, b, gy))
        ref = {"forward": nb.conv2d_forward(x64, w64, b64, one, one),
               "input_grad": nb.conv2d_backward_input(gy64, w64, x.shape, one, one),
               "weight_grad": nb.conv2d_backward_weight(gy64, x64, w.shape, one, one)}
        dev = [cupy.asarray(a) for a in (x, w, b, gy)]
        for n, fns in table.items():
            for what, fn in fns.items():
                label = f"rung {n} {RUNG_NAMES[n]:8s} {what:11s} {N}x{C}x{H}x{W} -> {O}"
                try:
                    got = fn(*_args(what, *dev))
                except ValueError as err:
                    if n != 5:                  # the other rungs take every shape here
                        raise
                    print(f"n/a  {label}: {err}")   # Winograd: even sizes only
                    continue
                err, ok = common.agreement(got, ref[what], tolerance(n))
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {label}  rel err {err:.1e}", flush=True)
    print(f"{failures} failures (tolerance {CHECK_TOL:g} of max(1, max |numpy|), "
          f"TF32 rungs {TF32_TOL:g})")
    return failures


def _torch():
    """(torch, {pass: function}) of cuDNN through PyTorch, or (None, {})."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None, {}
    except ImportError:
        return None, {}
    aten, F = torch.ops.aten, torch.nn.functional

    def grads(mask):
        def fn(x, w, gy):
            return aten.convolution_backward(gy, x, w, None, [1, 1], [1, 1], [1, 1],
                                             False, [0, 0], 1, mask)
        return fn
    dx, dw = grads((True, False, False)), grads((False, True, False))
    return torch, {"forward": lambda x, w, b, gy: F.conv2d(x, w, b, 1, 1),
                   "input_grad": lambda x, w, b, gy: dx(x, w, gy)[0],
                   "weight_grad": lambda x, w, b, gy: dw(x, w, gy)[1]}


def _time(fn, call, opts):
    """Median, min (ms) and runs of ``fn(*call)`` on the GPU: ``opts.warmup``
    runs, then as many as fit in ``opts.budget`` s (3, or ``opts.repeats`` if
    fewer, to ``opts.repeats``)."""
    first = common.time_cupy(lambda: fn(*call), 1, warmup=opts.warmup)[0]
    fit = opts.budget * 1e3 / max(first, 1e-3)
    n = int(max(min(3, opts.repeats), min(opts.repeats, fit)))
    return common.summary(common.time_cupy(lambda: fn(*call), n, warmup=0))


def _line(row):
    """One row for the terminal."""
    cells = [f"{row['layer']:15s} {row['pass']:11s} {row['name']:11s}",
             f"{row['ms']:9.3f} ms {row['tflops']:6.2f} TFLOP/s"]
    if row.get("speedup_vs_below"):
        cells.append(f"{row['speedup_vs_below']:6.2f}x faster than the rung below")
    cells += [f"time / cuDNN {k[-4:]} {row[k]:.2f}" for k in
              ("vs_cudnn_fp32", "vs_cudnn_tf32") if row.get(k)]
    if "rel_err" in row:
        cells.append(f"err {row['rel_err']:.1e}{'' if row['agree'] else ' DISAGREES'}")
    return "  ".join(cells)


def bench(cupy, table, opts):
    """Time every pass of every rung (and cuDNN) at the U-Net's 3x3 layers."""
    torch, cudnn = _torch()
    if not torch:
        return _bench(cupy, table, opts, None, {})
    flags = torch.backends.cudnn
    saved = flags.benchmark, flags.allow_tf32
    flags.benchmark = True                # cuDNN picks its fastest algorithm
    try:
        return _bench(cupy, table, opts, torch, cudnn)
    finally:
        flags.benchmark, flags.allow_tf32 = saved


def _bench(cupy, table, opts, torch, cudnn):
    """bench's rows; ``torch`` None: no cuDNN columns."""
    modes = ("fp32", "tf32") if torch else ()
    rng, rows = np.random.default_rng(0), []
    for H in opts.layers:
        N, C = opts.batch, LAYERS[H]
        host = _inputs(rng, N, C, H, H, C)
        dev = [cupy.asarray(a) for a in host]
        tdev = [torch.from_numpy(a).cuda() for a in host] if torch else []
        flops = 2.0 * N * C * C * H * H * 9          # every pass: the same sums
        layer = f"{C}->{C} @{H}px"
        for what in PASSES:
            ref, times = None, {}
            for mode in modes:                        # cuDNN: fp32 first, the reference
                torch.backends.cudnn.allow_tf32 = mode == "tf32"
                fn = cudnn[what]
                if ref is None:
                    ref = fn(*tdev).cpu().numpy()
                times[mode] = common.summary(common.time_torch_cuda(
                    lambda: fn(*tdev), opts.repeats, opts.warmup))["median_ms"]
            for n, fns in table.items():
                if what not in fns:
                    continue
                call = _args(what, *dev)
                out = common.to_numpy(fns[what](*call))
                ref = out if ref is None else ref     # no PyTorch: the lowest rung
                err, ok = common.agreement(out, ref, tolerance(n, bench=True))
                t = _time(fns[what], call, opts)
                below = [m for m in table if m < n and m in times]
                times[n] = t["median_ms"]
                row = {"layer": layer, "pass": what, "rung": n, "name": RUNG_NAMES[n],
                       "ms": t["median_ms"], "min_ms": t["min_ms"], "runs": t["runs"],
                       "tflops": flops / t["median_ms"] / 1e9, "rel_err": err, "agree": ok,
                       "speedup_vs_below": times[below[-1]] / times[n] if below else None}
                for mode in modes:                    # ours / theirs: below 1 is faster
                    row[f"vs_cudnn_{mode}"] = times[n] / times[mode]
                rows.append(row)
                print(_line(row), flush=True)
            for mode in modes:
                rows.append({"layer": layer, "pass": what, "rung": None,
                             "name": f"cuDNN {mode}", "ms": times[mode],
                             "tflops": flops / times[mode] / 1e9})
                print(_line(rows[-1]), flush=True)
        del dev, tdev
    return rows


COLUMNS = [("layer", "layer"), ("pass", "pass"), ("name", "rung"), ("ms", "ms (median)"),
           ("tflops", "TFLOP/s"), ("speedup_vs_below", "x faster than rung below"),
           ("vs_cudnn_fp32", "/ cuDNN fp32"), ("vs_cudnn_tf32", "/ cuDNN TF32"),
           ("runs", "runs"), ("rel_err", "rel err")]


def write_report(out, rows, meta):
    import json
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ladder.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    with open(os.path.join(out, "ladder.md"), "w") as f:
        f.write(f"# The convolution ladder\n\n`{meta['command']}`  \n"
                f"machine: {meta.get('gpu')}; git {meta.get('git')}; {meta['date']}\n\n"
                + common.markdown_table(COLUMNS, rows) + "\n")
    print(f"wrote {out}/ladder.json and ladder.md")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare every rung with NumPy")
    p.add_argument("--bench", action="store_true", help="time every rung and cuDNN")
    p.add_argument("--rungs", type=int, nargs="+", default=sorted(RUNG_NAMES),
                   choices=sorted(RUNG_NAMES), help="rungs to run (default: all)")
    p.add_argument("--layers", type=int, nargs="+", default=sorted(LAYERS, reverse=True),
                   choices=sorted(LAYERS), help="layer sizes in px (default: all five)")
    p.add_argument("--batch", type=int, default=25, help="batch size (default 25)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs at most (20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (3)")
    p.add_argument("--budget", type=float, default=1.0,
                   help="seconds of timed runs per row, at least 3 runs (1.0)")
    p.add_argument("--out", help="folder for ladder.json and ladder.md (--bench)")
    args = p.parse_args(argv)
    if not (args.check or args.bench):
        p.error("nothing to do: give --check, --bench or both")
    return args


def main(argv=None):
    args = parse_args(argv)
    cupy = _cupy()
    table = rungs(cupy, set(args.rungs))
    failures = check(cupy, table) if args.check else 0
    if args.bench:
        rows = bench(cupy, table, args)
        if args.out:
            meta = common.machine_info("gpu")   # date, command, versions, git
            meta.update(device="cuda", gpu=common.gpu_name())
            write_report(args.out, rows, meta)
        failures += sum(1 for r in rows if r.get("agree") is False)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
