"""Where one training step of the U-Net on the NumPy backend spends its time.

    python benchmarks/profile_step.py --threads 1                  (base 64, batch 25, 96 px)
    python benchmarks/profile_step.py --quick

Wraps every backend primitive (``minicnn.backend.PRIMITIVES``) and every matrix product they
make (``np.matmul`` as the backend sees it) with a clock, runs one untimed step and one timed
step (forward, backward, Adam), and prints:

* each primitive's total time, and the most expensive calls with their shapes;
* what the primitives leave: the autograd walk and the elementwise glue of ``functional``
  (bias gradients, concatenation, gradient sums);
* the matrix products: their FLOPs, their time, and the time they would take at the float32
  GEMM speed this process measures first (a 2048 x 2048 x 2048 product, ``--threads``
  threads), i.e. what is GEMM and what is everything else (im2col / col2im copies, transposes,
  bias and ReLU passes, allocation).

Run it with ``--threads 1`` for an exact account: with more threads the convolutions' tasks
run concurrently (``numpy_backend._over_parts``) and their products' times overlap.
"""
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (also puts the repository root on sys.path)


def gemm_speed(threads, n=2048, repeats=3):
    """GFLOP/s of a float32 n x n x n matrix product (the best of ``repeats``)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class _TimedNumpy:
    """``np`` as the backend module sees it, with a clock on ``matmul``."""

    def __init__(self, log):
        self._log = log

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, a, b, **kw):
        t0 = time.perf_counter()
        out = np.matmul(a, b, **kw)
        batch = int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))) \
            if a.ndim > 2 or b.ndim > 2 else 1
        self._log.append((2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1],
                          time.perf_counter() - t0))
        return out


def main(argv=None):
    p = common.network_arguments(__doc__, "tiny run (base 4, batch 2, 32x32)")
    p.set_defaults(device="cpu")
    p.add_argument("--threads", type=int, default=1, help="threads of BLAS and minicnn")
    p.add_argument("--top", type=int, default=25, help="most expensive calls to list")
    args = p.parse_args(argv)
    args.repeats = 1
    common.quick_apply(args)
    os.environ["MINICNN_NUM_THREADS"] = str(args.threads)     # read at minicnn's import
    import minicnn
    from minicnn import Tensor, functional as F, optim
    from minicnn.backend import blas_threads, numpy_backend as nb
    from cmr.unet import UNet
    from bench_train import BETAS, CLASS_WEIGHTS, LR

    blas_threads.set_threads(args.threads)
    meta = common.machine_info("cpu", query_gpu=False)
    print(f"profile_step: {common.machine_line(meta)}; BLAS {blas_threads.config()}; "
          f"threads: BLAS {blas_threads.get()}, minicnn {nb._THREADS}")
    speed = gemm_speed(args.threads)
    print(f"float32 GEMM 2048^3 on {args.threads} thread(s): {speed:.0f} GFLOP/s")

    minicnn.manual_seed(0)
    model = UNet(base=args.base, depth=args.depth)
    rng = np.random.default_rng(1234)
    x = Tensor(rng.random((args.batch, 1, args.size, args.size), dtype=np.float32))
    t = rng.integers(0, 4, (args.batch, args.size, args.size)).astype(np.int64)
    w = np.asarray(CLASS_WEIGHTS, np.float32)
    opt = optim.Adam(model.parameters(), lr=LR, betas=BETAS)

    times, counts, depth, gemms = (collections.defaultdict(float), collections.Counter(), [0],
                                   [])
    for name in minicnn.backend.PRIMITIVES:
        def timed(*a, _f=getattr(nb, name), _name=name, **kw):
            depth[0] += 1          # a primitive calling another is counted once, outside
            t0 = time.perf_counter()
            try:
                return _f(*a, **kw)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    key = (_name, tuple(v.shape for v in a if isinstance(v, np.ndarray)))
                    times[key] += time.perf_counter() - t0
                    counts[key] += 1
        setattr(nb, name, timed)
    nb.np = _TimedNumpy(gemms)

    def step():
        loss = F.cross_entropy(model(x), t, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    step()
    times.clear(), counts.clear(), gemms.clear()
    t0 = time.perf_counter()
    loss = step()
    total = time.perf_counter() - t0
    per_prim = collections.defaultdict(float)
    for (name, _), v in times.items():
        per_prim[name] += v
    prims = sum(per_prim.values())
    flops, gemm_s = sum(f for f, _ in gemms), sum(s for _, s in gemms)
    print(f"\none step: {total * 1e3:.0f} ms (loss {loss:.6f}; load {common.load_average()})")
    print(f"{'primitive':32s} {'ms':>8s} {'share':>6s}")
    for name, v in sorted(per_prim.items(), key=lambda kv: -kv[1]):
        print(f"{name:32s} {v * 1e3:8.0f} {v / total:6.1%}")
    print(f"{'outside the primitives':32s} {(total - prims) * 1e3:8.0f} "
          f"{(total - prims) / total:6.1%}  (autograd walk, functional's glue)")
    print(f"\nmatrix products: {flops / 1e12:.3f} TFLOP in {gemm_s * 1e3:.0f} ms "
          f"({flops / gemm_s / 1e9:.0f} GFLOP/s); at the measured {speed:.0f} GFLOP/s "
          f"{flops / speed / 1e6:.0f} ms")
    print(f"the step without its products: {(total - gemm_s) * 1e3:.0f} ms "
          f"({(total - gemm_s) / total:.1%}): copies, transposes, elementwise passes, "
          "allocation, the autograd walk")
    print(f"\nthe {args.top} most expensive calls:")
    for (name, shapes), v in sorted(times.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {v * 1e3:8.0f} ms  x{counts[(name, shapes)]}  {name} {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
