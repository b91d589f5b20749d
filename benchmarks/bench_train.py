"""One full training step of the U-Net (forward, backward, Adam), minicnn vs PyTorch.

    python benchmarks/bench_train.py --device cuda --out results/          (ours vs PyTorch CUDA)
    python benchmarks/bench_train.py --device cpu --base 64 --batch 25 --repeats 3 --out /tmp/b
    python benchmarks/bench_train.py --quick --device cpu                  (tiny, seconds)

Each library runs in its OWN subprocess (this script with the hidden ``--worker ours|torch``):
the peak resident memory (``ru_maxrss``) is then each library's alone, and their thread pools
(OpenBLAS for NumPy, OpenMP for PyTorch) never compete for the cores. The two workers run one
after the other, on the same weights (minicnn's initialisation with seed 0, written to a
temporary .npz and copied into ``TorchUNet`` from tests/cmr/test_unet.py, which has the same
parameter names), the same batch and the original recipe: weighted cross-entropy (class weights
0.1/0.3/0.3/0.3), Adam (lr 2e-4, betas 0.9/0.99).

Each worker: logits of a no-grad forward pass at the initial weights (compared between the
libraries), one untimed training step (its loss is the "first step loss", compared at relative
1e-4), ``--repeats`` timed steps, peak RSS of the process, then ``--repeats`` timed no-grad
forward passes (inference). On CUDA the steps are synchronised before the clock is read, and
PyTorch runs with cudnn.benchmark and without TF32; the GPU memory of each (CuPy's pool /
torch's reserved bytes) is reported too. ``--tf32`` (CUDA) adds a third worker, PyTorch with
TF32 on (``torch.backends.cudnn.allow_tf32`` and ``torch.backends.cuda.matmul.allow_tf32``),
and two informational rows against it (no target; the fp32 rows are unchanged).

``--quick`` is a smoke test (it keeps the scripts from rotting; its timings mean nothing) and
runs each library on one thread, which keeps it fast on a loaded machine.

Targets: CPU step <= 1.2x PyTorch, forward <= 1.2x, peak memory <= 1.5x (issue 28); CUDA step
<= 1.5x.
Exit status 1 when the first loss or the logits disagree, or a worker fails.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (also puts the repository root on sys.path)

CLASS_WEIGHTS = (0.1, 0.3, 0.3, 0.3)
LR, BETAS = 2e-4, (0.9, 0.99)
LOSS_RTOL = 1e-4


# =========================================================================== helpers
def _rss_mb():
    """Current resident memory of this process (MB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        return None


def _peak_rss_mb():
    """Peak resident memory of this process so far (MB); ru_maxrss is KB on Linux."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def _data(args):
    rng = np.random.default_rng(1234)
    x = rng.random((args.batch, 1, args.size, args.size), dtype=np.float32)
    t = rng.integers(0, 4, (args.batch, args.size, args.size)).astype(np.int64)
    return x, t, np.asarray(CLASS_WEIGHTS, np.float32)


def _torch_unet_class():
    """``TorchUNet`` of tests/cmr/test_unet.py (the test suite checks it equals cmr.unet.UNet)."""
    import importlib.util
    path = os.path.join(common.ROOT, "tests", "cmr", "test_unet.py")
    spec = importlib.util.spec_from_file_location("_bench_test_unet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TorchUNet


# =========================================================================== workers
def worker_ours(args):
    import minicnn
    from minicnn import Tensor, functional as F, optim
    from cmr.unet import UNet

    cuda = args.device == "cuda"
    model = UNet(base=args.base, depth=args.depth)
    with np.load(args.weights) as saved:
        model.load_state_dict({k: saved[k] for k in saved.files})
    if cuda:
        model.to("cuda")
    x_np, t_np, w = _data(args)
    x = Tensor(x_np).to(args.device)
    t = minicnn.backend.get(args.device).asarray(t_np)
    opt = optim.Adam(model.parameters(), lr=LR, betas=BETAS)
    info = {}
    if cuda:
        import cupy
        sync = cupy.cuda.get_current_stream().synchronize
        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    else:
        from minicnn.backend import blas_threads, numpy_backend
        info.update(blas_threads=blas_threads.get(), minicnn_threads=numpy_backend._THREADS)

        def sync():
            pass

    def forward():
        with minicnn.no_grad():
            return model(x)

    def step():
        loss = F.cross_entropy(model(x), t, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def to_host(a):
        return a.numpy()

    def pool_bytes():
        if not cuda:
            return None
        import cupy
        return cupy.get_default_memory_pool().total_bytes()

    return _run_worker(args, forward, step, to_host, sync, pool_bytes, info)


def worker_torch(args):
    import torch

    cuda = args.device == "cuda"
    dev = torch.device("cuda" if cuda else "cpu")
    info = {}
    if cuda:
        tf32 = args.worker == "torch_tf32"      # fp32 unless the TF32 worker
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        torch.set_num_threads(args.threads)
    info["torch_threads"] = torch.get_num_threads()
    model = _torch_unet_class()(args.base, args.depth)
    params = dict(model.named_parameters())
    with np.load(args.weights) as saved, torch.no_grad():
        if set(saved.files) != set(params):
            raise RuntimeError(f"parameter names differ: {sorted(set(saved.files) ^ set(params))}")
        for k in saved.files:          # one array at a time: no second copy of the model
            params[k].copy_(torch.from_numpy(saved[k]))
    model.to(dev)
    x_np, t_np, w_np = _data(args)
    x, t, w = (torch.from_numpy(a).to(dev) for a in (x_np, t_np, w_np))
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)
    F = torch.nn.functional
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def forward():
        with torch.no_grad():
            return model(x)

    def step():
        loss = F.cross_entropy(model(x), t, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def to_host(a):
        return a.detach().cpu().numpy()

    def pool_bytes():
        return torch.cuda.max_memory_reserved() if cuda else None

    return _run_worker(args, forward, step, to_host, sync, pool_bytes, info)


def _run_worker(args, forward, step, to_host, sync, pool_bytes, info):
    """The measurement sequence, the same for both libraries."""
    res = dict(info, lib=args.worker, rss_setup_mb=_rss_mb(), peak_rss_setup_mb=_peak_rss_mb(),
               load_start=common.load_average())
    logits = to_host(forward())
    np.save(args.result + ".logits.npy", logits)
    del logits
    sync()
    res["peak_rss_after_forward_mb"] = _peak_rss_mb()
    losses, step_ms = [], []
    t0 = time.perf_counter()
    losses.append(float(to_host(step())))        # untimed first step (allocations, autotune)
    sync()
    res["first_step_ms"] = (time.perf_counter() - t0) * 1e3
    print(f"  [{args.worker}] first step {res['first_step_ms']:.0f} ms, loss {losses[0]:.6f}",
          flush=True)
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        step_ms.append((time.perf_counter() - t0) * 1e3)
        losses.append(float(to_host(loss)))
    res["peak_rss_train_mb"] = _peak_rss_mb()
    res["gpu_pool_bytes"] = pool_bytes()
    print(f"  [{args.worker}] steps (ms): {' '.join(f'{v:.0f}' for v in step_ms)}", flush=True)
    fwd_ms = []
    forward()
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        forward()
        sync()
        fwd_ms.append((time.perf_counter() - t0) * 1e3)
    print(f"  [{args.worker}] no-grad forward (ms): {' '.join(f'{v:.0f}' for v in fwd_ms)}",
          flush=True)
    res.update(losses=losses, step_ms=step_ms, forward_ms=fwd_ms,
               peak_rss_end_mb=_peak_rss_mb(), load_end=common.load_average())
    with open(args.result, "w") as f:
        json.dump(res, f)
    return 0


# =========================================================================== parent
def _worker_cmd(args, lib, weights, result):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--weights", weights,
           "--result", result, "--device", args.device, "--base", str(args.base),
           "--depth", str(args.depth), "--batch", str(args.batch), "--size", str(args.size),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    return cmd


def _worker_env(args):
    """Both libraries get the same number of threads (NumPy's OpenBLAS reads these at import,
    the NumPy backend its pool's size at minicnn's import)."""
    env = dict(os.environ)
    if args.device == "cpu":
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "MINICNN_NUM_THREADS"):
            env[var] = str(args.threads)
    return env


def _median(v):
    return float(np.median(v)) if v else float("nan")


def _best(ours, theirs):
    """The fastest run of each (less disturbed by other processes than the median)."""
    return {"ours_best": min(ours), "theirs_best": min(theirs),
            "best_ratio": min(ours) / min(theirs)}


COLUMNS = [("metric", "metric"), ("unit", "unit"), ("ours", "ours"), ("theirs", "theirs"),
           ("ratio", "ratio ours/theirs"), ("ours_img_s", "ours img/s"),
           ("theirs_img_s", "theirs img/s"), ("ours_best", "ours best"),
           ("theirs_best", "theirs best"), ("best_ratio", "best ratio"), ("rel_err", "rel err"),
           ("agree", "agrees"),
           ("target", "target"), ("target_met", "met")]


def parent(args):
    import minicnn
    from cmr.unet import UNet

    cuda = args.device == "cuda"
    meta = common.machine_info(args.device, query_gpu=False)
    meta.update({"base": args.base, "depth": args.depth, "batch": args.batch, "size": args.size,
                 "repeats": args.repeats, "dtype": "float32", "lr": LR, "betas": BETAS,
                 "class_weights": CLASS_WEIGHTS, "threads": args.threads,
                 "theirs": "PyTorch CUDA (cudnn.benchmark, no TF32)" if cuda else
                 f"PyTorch CPU ({args.threads} threads; NumPy's OpenBLAS too)",
                 "timing": "median of the timed steps after one untimed step; each library in "
                           "its own subprocess, one after the other"})
    print(f"bench_train: {common.machine_line(meta)}")
    print(f"U-Net base {args.base}, depth {args.depth}, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.repeats} timed steps, device {args.device}",
          flush=True)
    results, failed = {}, []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        minicnn.manual_seed(0)
        model = UNet(base=args.base, depth=args.depth)
        meta["parameters"] = model.num_parameters()
        weights = os.path.join(tmp, "weights.npz")
        np.savez(weights, **model.state_dict())
        del model
        for lib in ("ours", "torch") + (("torch_tf32",) if cuda and args.tf32 else ()):
            result = os.path.join(tmp, f"{lib}.json")
            print(f"-- worker {lib}", flush=True)
            rc = subprocess.run(_worker_cmd(args, lib, weights, result),
                                env=_worker_env(args)).returncode
            if rc != 0 or not os.path.exists(result):
                failed.append(f"worker {lib} exited with status {rc}")
                continue
            with open(result) as f:
                results[lib] = json.load(f)
            results[lib]["logits"] = np.load(result + ".logits.npy")
    if failed:
        for line in failed:
            print(f"FAILED: {line}", file=sys.stderr)
        return 1
    o, t = results["ours"], results["torch"]
    if cuda:
        meta["gpu"] = t.get("gpu") or o.get("gpu")
    meta["torch_threads"] = t.get("torch_threads")
    if not cuda:
        meta["blas_threads"] = o.get("blas_threads")
        meta["minicnn_threads"] = o.get("minicnn_threads")
    meta["load_average_end"] = common.load_average()

    loss_o, loss_t = o["losses"][0], t["losses"][0]
    loss_err = abs(loss_o - loss_t) / abs(loss_t)
    loss_ok = bool(loss_err <= LOSS_RTOL)
    logit_err, logit_ok = common.agreement(o["logits"], t["logits"])
    step_o, step_t = _median(o["step_ms"]), _median(t["step_ms"])
    fwd_o, fwd_t = _median(o["forward_ms"]), _median(t["forward_ms"])
    img = 1e3 * args.batch
    rows = [
        {"metric": "first step loss", "unit": "", "ours": loss_o, "theirs": loss_t,
         "ratio": None, "rel_err": loss_err, "agree": loss_ok, "target": None,
         "target_met": None},
        {"metric": "training step", "unit": "ms", "ours": step_o, "theirs": step_t,
         "ratio": step_o / step_t, "ours_img_s": img / step_o, "theirs_img_s": img / step_t,
         **_best(o["step_ms"], t["step_ms"]), "target": 1.5 if cuda else 1.2},
        {"metric": "forward, no_grad", "unit": "ms", "ours": fwd_o, "theirs": fwd_t,
         "ratio": fwd_o / fwd_t, "ours_img_s": img / fwd_o, "theirs_img_s": img / fwd_t,
         **_best(o["forward_ms"], t["forward_ms"]), "rel_err": logit_err, "agree": logit_ok,
         "target": None if cuda else 1.2},
        {"metric": "peak RSS, training (ru_maxrss)", "unit": "MB",
         "ours": o["peak_rss_train_mb"], "theirs": t["peak_rss_train_mb"],
         "ratio": o["peak_rss_train_mb"] / t["peak_rss_train_mb"],
         "target": None if cuda else 1.5},
        {"metric": "peak RSS growth over setup", "unit": "MB",
         "ours": o["peak_rss_train_mb"] - o["rss_setup_mb"],
         "theirs": t["peak_rss_train_mb"] - t["rss_setup_mb"],
         "ratio": (o["peak_rss_train_mb"] - o["rss_setup_mb"])
         / max(1e-9, t["peak_rss_train_mb"] - t["rss_setup_mb"]), "target": None},
    ]
    if cuda and o.get("gpu_pool_bytes") and t.get("gpu_pool_bytes"):
        rows.append({"metric": "GPU memory (CuPy pool / torch max reserved)", "unit": "MB",
                     "ours": o["gpu_pool_bytes"] / 2 ** 20, "theirs": t["gpu_pool_bytes"] / 2 ** 20,
                     "ratio": o["gpu_pool_bytes"] / t["gpu_pool_bytes"], "target": None})
    if "torch_tf32" in results:       # informational: PyTorch with TF32 tensor cores
        t32 = results["torch_tf32"]
        meta["theirs_tf32"] = "PyTorch CUDA (cudnn.benchmark, TF32 on)"
        for metric, key in (("training step vs PyTorch TF32", "step_ms"),
                            ("forward, no_grad vs PyTorch TF32", "forward_ms")):
            ours, theirs = _median(o[key]), _median(t32[key])
            rows.append({"metric": metric, "unit": "ms", "ours": ours, "theirs": theirs,
                         "ratio": ours / theirs, "ours_img_s": img / ours,
                         "theirs_img_s": img / theirs, **_best(o[key], t32[key]),
                         "target": None})
    for r in rows:
        if r.get("target") is not None:
            r["target_met"] = bool(r["ratio"] <= r["target"])
    agreement = {"first_step_loss": {"ours": loss_o, "theirs": loss_t, "rel_err": loss_err,
                                     "tol": LOSS_RTOL, "agree": loss_ok},
                 "forward_logits": {"rel_err": logit_err, "tol": common.FP32_TOL,
                                    "agree": logit_ok}}
    all_agree = loss_ok and logit_ok
    with_target = [r for r in rows if r.get("target") is not None]
    missed = [r["metric"] for r in with_target if not r["target_met"]]
    summary = [] if cuda else [
        f"CPU {meta['cpu']} ({meta['cores']} cores); BLAS {meta.get('blas')}, kernels "
        f"{meta.get('openblas_core')}; threads: ours {meta['minicnn_threads']} (BLAS "
        f"{meta['blas_threads']} outside the convolutions, 1 inside each of their tasks), "
        f"torch {meta['torch_threads']}"]
    summary += [
        f"first-step loss ours {loss_o:.7f} vs torch {loss_t:.7f} (rel err {loss_err:.1e}, "
        f"tol {LOSS_RTOL:g}): {'agrees' if loss_ok else 'DISAGREES'}; initial logits rel err "
        f"{logit_err:.1e}: {'agree' if logit_ok else 'DISAGREE'}",
        f"losses of the following steps: ours {', '.join(f'{v:.6f}' for v in o['losses'][1:])}"
        f"; torch {', '.join(f'{v:.6f}' for v in t['losses'][1:])}",
        f"step: ours {step_o:.1f} ms ({img / step_o:.1f} img/s), torch {step_t:.1f} ms "
        f"({img / step_t:.1f} img/s), ratio {step_o / step_t:.2f} (target {rows[1]['target']});"
        f" fastest runs: ours {min(o['step_ms']):.1f} ms, torch {min(t['step_ms']):.1f} ms, ratio "
        f"{min(o['step_ms']) / min(t['step_ms']):.2f}",
        f"forward (no_grad): ours {fwd_o:.1f} ms, torch {fwd_t:.1f} ms, ratio {fwd_o / fwd_t:.2f};"
        f" fastest runs ratio {min(o['forward_ms']) / min(t['forward_ms']):.2f}",
        f"targets met: {len(with_target) - len(missed)} of {len(with_target)}"
        + (f" (missed: {', '.join(missed)})" if missed else ""),
        f"all step times (ms): ours {', '.join(f'{v:.0f}' for v in o['step_ms'])}; torch "
        f"{', '.join(f'{v:.0f}' for v in t['step_ms'])}; first (untimed) step ours "
        f"{o['first_step_ms']:.0f}, torch {t['first_step_ms']:.0f}",
        f"load average (1/5/15 min) at the start {meta['load_average_1_5_15min']}, at the end "
        f"{meta['load_average_end']}; ours ran from load {o['load_start']} to {o['load_end']}, "
        f"torch from {t['load_start']} to {t['load_end']} (other processes on the machine "
        "distort the timings, and the load changes between the two workers: "
        "bench_step_ab.py interleaves the libraries' steps in one process)",
    ]
    print()
    print(common.text_table(COLUMNS, rows))
    print()
    for line in summary:
        print(line)
    if args.out:
        plot_rows = [r for r in rows if r.get("ratio") is not None]
        common.write_report(
            args.out, "bench_train", meta, COLUMNS, rows, summary,
            ([r["metric"] for r in plot_rows], [r["ratio"] for r in plot_rows],
             [r.get("target") for r in plot_rows],
             f"bench_train on {args.device}: minicnn / PyTorch (U-Net base {args.base}, "
             f"batch {args.batch}, {args.size}px)"),
            extra={"all_agree": all_agree, "agreement": agreement, "targets_met": not missed,
                   "missed_targets": missed,
                   "workers": {k: {kk: vv for kk, vv in v.items() if kk != "logits"}
                               for k, v in results.items()}})
        print(f"wrote {os.path.join(args.out, 'bench_train')}.{{json,md,png}}")
    if not all_agree:
        print("FAILED: minicnn and PyTorch disagree (see above)", file=sys.stderr)
        return 1
    return 0


def parse_args(argv=None):
    p = common.network_arguments(__doc__, "tiny run (base 4, batch 2, 32x32, 2 repeats): "
                                           "seconds on a CPU")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed training steps and forward passes (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of each library (OMP/OPENBLAS/MKL_NUM_THREADS and "
                        "torch.set_num_threads; default: the number of cores, 1 with --quick)")
    p.add_argument("--out", default=None, help="write OUT/bench_train.{json,md,png}")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA: also time PyTorch with TF32 on (a third worker, extra rows)")
    # internal: one library's measurement in its own process
    p.add_argument("--worker", choices=("ours", "torch", "torch_tf32"), help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common.quick_apply(args)
    args.repeats = args.repeats or (10 if args.device == "cuda" else 3)
    if args.threads is None:
        args.threads = 1 if args.quick else common.cpu_count()
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.size % 2 ** args.depth:
        p.error(f"--size must divide by 2**depth = {2 ** args.depth}")
    if args.worker and not (args.weights and args.result):
        p.error("--worker needs --weights and --result")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return (worker_ours if args.worker == "ours" else worker_torch)(args)
    if args.device == "cuda":
        import minicnn.backend
        try:
            minicnn.backend.get("cuda")
        except Exception as err:   # noqa: BLE001  BackendUnavailable, missing module
            print(f"cannot run on cuda: {type(err).__name__}: {err}", file=sys.stderr)
            return 2
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
