"""Training steps of the U-Net on the CPU, several ways side by side in ONE process, interleaved.

    python benchmarks/bench_step_ab.py --threads 2 --repeats 5          (base 64, batch 25, 96 px)
    python benchmarks/bench_step_ab.py --quick                          (tiny, seconds)

bench_train.py runs each library in its own process, one after the other: right for peak
memory, but on a machine that other people's jobs share, the load changes between the two
runs and the ratio with it. Here every round runs one full training step (forward, backward,
Adam) of each contestant in turn, with a pause between them (idle worker threads of one library
then no longer spin on the cores the next one wants), so each round sees the same load; the
report gives the median over rounds of each one's time, and of each round's ratio to PyTorch.
The contestants, all from the same initial weights (minicnn's, seed 0) and the same batch:

* ``ours``: the NumPy backend as shipped (each convolution's im2col + GEMM split into tasks
  over the backend's threads, BLAS on one thread inside each; ``numpy_backend._over_parts``);
* ``ours-blas``: the same backend with every convolution's work in one call and BLAS threading
  each matrix product (the backend before NOTES entry 25), for an old-vs-new comparison;
* ``torch``: PyTorch CPU.

``--threads N`` limits every one of them to N threads: BLAS's (set at run time), the NumPy
backend's pool (MINICNN_NUM_THREADS, set before minicnn is imported) and torch's
(``torch.set_num_threads``). The first step's loss of each is printed with its relative
difference to PyTorch's. Peak memory cannot be told apart in one process: see bench_train.py.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (also puts the repository root on sys.path)

CONTESTANTS = ("ours", "ours-blas", "torch")


def parse_args(argv=None):
    p = common.network_arguments(__doc__, "tiny run (base 4, batch 2, 32x32, 2 rounds)")
    p.set_defaults(device="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of every contestant (default: the cores, 1 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    p.add_argument("--pause", type=float, default=common.CPU_SWITCH_PAUSE_S,
                   help="seconds of pause between two contestants' steps")
    p.add_argument("--only", default=",".join(CONTESTANTS),
                   help=f"comma-separated contestants (default all: {','.join(CONTESTANTS)})")
    args = p.parse_args(argv)
    if args.device != "cpu":
        p.error("bench_step_ab times the CPU only")
    common.quick_apply(args)
    args.repeats = args.repeats or 5
    args.threads = args.threads or (1 if args.quick else common.cpu_count())
    args.only = [c.strip() for c in args.only.split(",")]
    if not set(args.only) <= set(CONTESTANTS) or "torch" not in args.only:
        p.error(f"--only: names from {CONTESTANTS}, torch among them")
    return args


def contestants(args):
    """name -> step function (returns the loss as a float), all from the same weights."""
    import torch
    import minicnn
    from minicnn import Tensor, functional as F, optim
    from minicnn.backend import blas_threads, numpy_backend
    from cmr.unet import UNet
    from bench_train import BETAS, CLASS_WEIGHTS, LR, _torch_unet_class

    torch.set_num_threads(args.threads)
    blas_threads.set_threads(args.threads)
    rng = np.random.default_rng(1234)
    x = rng.random((args.batch, 1, args.size, args.size), dtype=np.float32)
    t = rng.integers(0, 4, (args.batch, args.size, args.size)).astype(np.int64)
    w = np.asarray(CLASS_WEIGHTS, np.float32)
    minicnn.manual_seed(0)
    weights = UNet(base=args.base, depth=args.depth).state_dict()
    steps = {}
    for name in args.only:
        if name == "torch":
            model = _torch_unet_class()(args.base, args.depth)
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(torch.from_numpy(weights[k]))
            opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)
            xt, tt, wt = (torch.from_numpy(a) for a in (x, t, w))

            def step(model=model, opt=opt, xt=xt, tt=tt, wt=wt):
                loss = torch.nn.functional.cross_entropy(model(xt), tt, wt)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return float(loss.detach())
        else:
            model = UNet(base=args.base, depth=args.depth)
            model.load_state_dict({k: v.copy() for k, v in weights.items()})
            opt = optim.Adam(model.parameters(), lr=LR, betas=BETAS)
            one_call = name == "ours-blas"

            def step(model=model, opt=opt, one_call=one_call):
                saved = numpy_backend._over_parts
                if one_call:      # every convolution in one call, BLAS threading it
                    numpy_backend._over_parts = lambda fn, n: fn(slice(0, n))
                try:
                    loss = F.cross_entropy(model(Tensor(x)), t, w)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    return float(loss.item())
                finally:
                    numpy_backend._over_parts = saved
        steps[name] = step
    info = {"blas": blas_threads.config(), "blas_kernels": blas_threads.corename(),
            "blas_threads": blas_threads.get(), "torch_threads": torch.get_num_threads(),
            "minicnn_threads": numpy_backend._THREADS}
    return steps, info


def main(argv=None):
    args = parse_args(argv)
    os.environ["MINICNN_NUM_THREADS"] = str(args.threads)    # read once, at minicnn's import
    meta = common.machine_info("cpu", query_gpu=False)
    steps, info = contestants(args)
    if info["minicnn_threads"] != args.threads:
        raise RuntimeError(f"minicnn was imported before --threads {args.threads} was set")
    print(f"bench_step_ab: {common.machine_line(meta)}")
    print(f"BLAS: {info['blas']}; threads: BLAS {info['blas_threads']}, minicnn "
          f"{info['minicnn_threads']}, torch {info['torch_threads']}")
    print(f"U-Net base {args.base}, depth {args.depth}, batch {args.batch}, {args.size}x"
          f"{args.size}; {args.repeats} rounds of one step each, interleaved: "
          f"{', '.join(steps)}", flush=True)
    first = {}
    for name, step in steps.items():      # untimed first steps (allocation, warm-up)
        first[name] = step()
        time.sleep(args.pause)
    times = {name: [] for name in steps}
    for r in range(args.repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - t0) * 1e3)
            time.sleep(args.pause)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f} ms" for n, v in times.items())
              + f" (load {common.load_average()})", flush=True)
    ref = np.asarray(times["torch"])
    for name, ts in times.items():
        ts = np.asarray(ts)
        loss_err = abs(first[name] - first["torch"]) / abs(first["torch"])
        print(f"{name:10s} median {np.median(ts):9.0f} ms  min {ts.min():9.0f} ms  "
              f"ratio to torch: median of rounds {np.median(ts / ref):.2f}, of medians "
              f"{np.median(ts) / np.median(ref):.2f}, of minima {ts.min() / ref.min():.2f}; "
              f"first-step loss {first[name]:.7f} (rel diff to torch {loss_err:.1e})")
    bad = [n for n in steps if abs(first[n] - first["torch"]) > 1e-4 * abs(first["torch"])]
    if bad:
        print(f"FAILED: first-step loss of {', '.join(bad)} differs from PyTorch's by more "
              "than 1e-4 relative", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
