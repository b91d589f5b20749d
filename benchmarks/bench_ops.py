"""Every distinct layer of the U-Net, ours vs PyTorch (cuDNN on the GPU), op by op.

    python benchmarks/bench_ops.py --device cuda --out results/       (GPU: ours vs cuDNN)
    python benchmarks/bench_ops.py --device cpu --out /tmp/bench_cpu  (NumPy vs PyTorch CPU)
    python benchmarks/bench_ops.py --quick --device cpu               (tiny shapes, seconds)

For each layer of ``cmr.unet.UNet(base, depth)`` at ``--batch`` x ``--size`` px (default:
the original network, base 64, depth 4, batch 25, 96x96) it calls OUR BACKEND PRIMITIVES
directly (``minicnn.backend.get(device).conv2d_forward`` ...) and the PyTorch op that its
autograd runs for the same thing (``F.conv2d``, ``aten.convolution_backward``,
``aten.max_pool2d_with_indices`` ...):

* 3x3 (and the 1x1 head) convolutions: forward, input gradient, weight gradient;
* 2x2 stride-2 transposed convolutions: forward (= conv2d_backward_input, bias fused), input
  gradient (= conv2d_forward), weight gradient (= conv2d_backward_weight, roles swapped);
* 2x2 max pools, ReLUs: forward and backward;
* the weighted cross-entropy (class weights 0.1/0.3/0.3/0.3): forward (mean) and backward;
* one Adam step over all the network's parameters (torch.optim.Adam with its defaults).

Every row checks agreement with PyTorch on the same inputs: ``rel err = max|ours - ref| /
max(1, max|ref|)`` (Adam: the relative error of the first step's update); a row beyond the
tolerance (1e-3 in fp32) makes the script exit with status 1 after writing the report.

The ``n/step`` column is how often the op runs in one training step (a layer shape used twice
counts twice; the first layer's input gradient is never needed); the totals weight the rows by
it. (Our U-Net fuses each 3x3 convolution's ReLU into the convolution's store,
``F.conv2d_relu``; the ReLU forward rows still time the standalone kernel and count as in
PyTorch's step, so our totals overstate our step by them.) Targets: on CUDA 3x3/1x1 conv
ops <= 1.5x cuDNN, everything else <= 1.2x; on the CPU no op > 2x. ``--quick`` is a smoke
test (its timings mean nothing; both libraries on one thread, which keeps it fast on a loaded
machine). ``--tf32`` adds, on CUDA, rows timing PyTorch with TF32 (informational, no target).
"""
import os
import sys
import time


def _threads_from_argv(argv):
    """``--threads N`` (or 1 for ``--quick``), read before NumPy is imported: its OpenBLAS
    takes its thread count from the environment at import."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1" if "--quick" in argv else None


if __name__ == "__main__" and _threads_from_argv(sys.argv[1:]):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads_from_argv(sys.argv[1:])

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (also puts the repository root on sys.path)

CLASS_WEIGHTS = (0.1, 0.3, 0.3, 0.3)
LR, BETAS, EPS = 2e-4, (0.9, 0.99), 1e-8


# =========================================================================== the layers
def unet_layers(base, depth, in_channels, classes, batch, size):
    """The distinct ops of one training step of ``UNet(in_channels, classes, base, depth)``
    on a ``(batch, in_channels, size, size)`` input: a list of dicts (kind, shapes, names,
    count per step), plus the parameter shapes (for Adam)."""
    from minicnn import nn
    from cmr.unet import UNet

    model = UNet(in_channels=in_channels, num_classes=classes, base=base, depth=depth)
    param_shapes = [p.shape for p in model.parameters()]
    layers, relus = {}, {}

    def level_of(mname):
        top = mname.split(".")[0]
        if top.startswith("down"):
            return int(top[4:])
        if top == "bottleneck":
            return depth
        if top.startswith("upconv"):
            return int(top[6:]) + 1          # its input is one level deeper
        if top.startswith("up"):
            return int(top[2:])
        return 0                              # head

    for mname, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        s = size >> level_of(mname)
        transposed = isinstance(m, nn.ConvTranspose2d)
        kind = "upconv" if transposed else "conv"
        key = (kind, m.weight.shape, m.stride, m.padding, s)
        if key not in layers:
            layers[key] = {"kind": kind, "w": m.weight.shape, "stride": m.stride,
                           "padding": m.padding, "N": batch, "H": s, "names": [],
                           "count": 0, "dx_count": 0}
        entry = layers[key]
        entry["names"].append(mname)
        entry["count"] += 1
        # the network's input needs no gradient
        entry["dx_count"] += 0 if (mname == "down0.conv1") else 1
        if kind == "conv" and mname != "head":          # every such conv is followed by a ReLU
            shape = (batch, m.weight.shape[0], s, s)
            relus[shape] = relus.get(shape, 0) + 1
    ops = list(layers.values())
    for shape, count in relus.items():
        ops.append({"kind": "relu", "shape": shape, "count": count})
    for i in range(depth):
        ops.append({"kind": "pool", "shape": (batch, base * 2 ** i, size >> i, size >> i),
                    "count": 1})
    ops.append({"kind": "loss", "shape": (batch, classes, size, size), "count": 1})
    ops.append({"kind": "adam", "param_shapes": param_shapes, "count": 1})
    del model
    return ops



def _layer_name(op):
    """The name of ``op``'s rows, also what ``--filter`` matches."""
    kind = op["kind"]
    if kind == "upconv":
        w = op["w"]
        return f"upconv {w[0]}->{w[1]} {op['H']}->{op['H'] * op['stride'][0]}px"
    if kind == "conv":
        w = op["w"]
        return f"conv{w[2]}x{w[3]} {w[1]}->{w[0]} @{op['H']}px"
    if kind in ("relu", "pool"):
        _, C, H, _ = op["shape"]
        return f"{'relu' if kind == 'relu' else 'maxpool2x2'} {C}ch @{H}px"
    if kind == "loss":
        return f"weighted CE {op['shape'][1]} classes"
    return f"Adam, {len(op['param_shapes'])} tensors"


# =========================================================================== the runner
class Bench:
    """Holds the device, both libraries and the timing settings; ``row()`` measures one op."""

    def __init__(self, args):
        import torch
        import minicnn.backend

        self.args, self.torch = args, torch
        self.device = args.device
        self.cuda = args.device == "cuda"
        self.bk = minicnn.backend.get(args.device)
        self.tdev = torch.device("cuda" if self.cuda else "cpu")
        if self.cuda:
            import cupy
            self.cupy = cupy
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        else:
            torch.set_num_threads(args.threads)
        self.rng = np.random.default_rng(0)
        self.rows = []
        self.failed = []

    # ------------------------------------------------------------------ data
    def randn(self, shape, scale=1.0):
        return (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    def both(self, a):
        """(ours, theirs) copies of the host array ``a`` on the device (theirs never shares
        ours' memory, so in-place updates stay separate)."""
        if self.cuda:
            return self.cupy.asarray(a), self.torch.from_numpy(a).to(self.tdev)
        return a, self.torch.from_numpy(a.copy())

    def sync(self):
        if self.cuda:
            self.cupy.cuda.get_current_stream().synchronize()
            self.torch.cuda.synchronize()

    # ------------------------------------------------------------------ timing
    def _time(self, fn, lib):
        a = self.args
        if self.cuda:
            timer = common.time_cupy if lib == "ours" else common.time_torch_cuda
            return timer(fn, a.repeats, warmup=a.warmup)
        times = common.time_host(fn, a.repeats, warmup=a.warmup, budget_s=a.budget,
                                 min_repeats=min(3, a.repeats))
        time.sleep(a.pause)
        return times

    def row(self, layer, op, shape, ours, theirs, *, target, count, flops=None, nbytes=None,
            tol=common.FP32_TOL, floor=1.0, compare=None, tf32=False):
        """Measure one op. ``ours()`` / ``theirs()`` return the output(s) to compare
        (``compare(o, t)`` -> (ours_array, ref_array) to pick / transform them)."""
        torch = self.torch
        if tf32:
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = True
        try:
            o = ours()
            self.sync()
            if not self.cuda:
                time.sleep(self.args.pause)
            t = theirs()
            self.sync()
            a, b = compare(o, t) if compare else (o, t)
            err, ok = self._agree(a, b, tol, floor)
            del a, b, o, t
            if not self.cuda:
                time.sleep(self.args.pause)
            t_ours = common.summary(self._time(ours, "ours"))
            t_theirs = common.summary(self._time(theirs, "theirs"))
        finally:
            if tf32:
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
        ratio = t_ours["median_ms"] / t_theirs["median_ms"]
        scale = 1e12 if self.cuda else 1e9
        r = {"layer": layer, "op": op, "shape": shape, "n_per_step": count,
             "ours_ms": t_ours["median_ms"], "theirs_ms": t_theirs["median_ms"],
             "ratio": ratio,
             "ours_flops": None if flops is None else flops / (t_ours["median_ms"] * 1e-3) / scale,
             "theirs_flops": None if flops is None else
             flops / (t_theirs["median_ms"] * 1e-3) / scale,
             "ours_gbs": None if nbytes is None else nbytes / (t_ours["median_ms"] * 1e-3) / 1e9,
             "flop": flops, "bytes": nbytes,
             "rel_err": err, "tol": tol, "agree": ok,
             "target": target, "target_met": None if target is None else bool(ratio <= target),
             "ours_runs": t_ours["runs"], "theirs_runs": t_theirs["runs"],
             "ours_min_ms": t_ours["min_ms"], "theirs_min_ms": t_theirs["min_ms"],
             "tf32": tf32, "load_1min": (common.load_average() or [None])[0]}
        self.rows.append(r)
        if not ok:
            self.failed.append(f"{layer} {op}")
        print(f"  {layer:28s} {op:18s} {shape:26s} ours {r['ours_ms']:9.3f} ms  theirs "
              f"{r['theirs_ms']:9.3f} ms  ratio {ratio:6.2f}  err {err:.1e}"
              f"{'' if ok else '  DISAGREES'}", flush=True)
        return r

    @staticmethod
    def _agree(a, b, tol, floor):
        if isinstance(a, (list, tuple)):
            a = np.concatenate([np.ravel(common.to_numpy(v)) for v in a])
            b = np.concatenate([np.ravel(common.to_numpy(v)) for v in b])
        a = np.asarray(common.to_numpy(a), np.float64)
        b = np.asarray(common.to_numpy(b), np.float64)
        if a.shape != b.shape:
            return float("inf"), False
        if a.size == 0:
            return 0.0, True
        err = float(np.max(np.abs(a - b)) / max(floor, float(np.max(np.abs(b)))))
        return err, bool(err <= tol)

    # ------------------------------------------------------------------ the ops
    def targets(self, kind):
        if not self.cuda:
            return 2.0
        return 1.5 if kind == "conv" else 1.2

    def conv(self, op):
        bk, torch, F = self.bk, self.torch, self.torch.nn.functional
        aten = torch.ops.aten
        O, C, kH, kW = op["w"]
        N, H = op["N"], op["H"]
        stride, padding = op["stride"], op["padding"]
        Ho = (H + 2 * padding[0] - kH) // stride[0] + 1
        x, xt = self.both(self.randn((N, C, H, H)))
        w, wt = self.both(self.randn((O, C, kH, kW), 1 / np.sqrt(C * kH * kW)))
        b, bt = self.both(self.randn((O,), 1 / np.sqrt(C * kH * kW)))
        gy, gyt = self.both(self.randn((N, O, Ho, Ho)))
        flops = 2.0 * N * O * Ho * Ho * C * kH * kW
        name, target, count = _layer_name(op), self.targets("conv"), op["count"]
        xs = f"{N}x{C}x{H}x{H}"
        st, pd = list(stride), list(padding)

        fwd = (lambda: bk.conv2d_forward(x, w, b, stride, padding),
               lambda: F.conv2d(xt, wt, bt, stride, padding))
        dx = (lambda: bk.conv2d_backward_input(gy, w, x.shape, stride, padding),
              lambda: aten.convolution_backward(gyt, xt, wt, None, st, pd, [1, 1], False, [0, 0],
                                                1, (True, False, False))[0])
        dw = (lambda: bk.conv2d_backward_weight(gy, x, w.shape, stride, padding),
              lambda: aten.convolution_backward(gyt, xt, wt, None, st, pd, [1, 1], False, [0, 0],
                                                1, (False, True, False))[1])
        for opname, fns, cnt in (("forward", fwd, count), ("input grad", dx, op["dx_count"]),
                                 ("weight grad", dw, count)):
            self.row(name, opname, xs, *fns, target=target, count=cnt, flops=flops)
            if self.args.tf32 and self.cuda:
                self.row(name, opname + " (tf32)", xs, *fns, target=None, count=0, flops=flops,
                         tol=common.TF32_TOL, tf32=True)

    def upconv(self, op):
        bk, torch, F = self.bk, self.torch, self.torch.nn.functional
        aten = torch.ops.aten
        C, O, kH, kW = op["w"]                       # (C_in, C_out, kH, kW)
        N, H = op["N"], op["H"]
        stride, padding = op["stride"], op["padding"]
        Ho = (H - 1) * stride[0] - 2 * padding[0] + kH
        x, xt = self.both(self.randn((N, C, H, H)))
        w, wt = self.both(self.randn((C, O, kH, kW), 1 / np.sqrt(O * kH * kW)))
        b, bt = self.both(self.randn((O,), 1 / np.sqrt(O * kH * kW)))
        gy, gyt = self.both(self.randn((N, O, Ho, Ho)))
        flops = 2.0 * N * C * H * H * O * kH * kW
        name, target, count = _layer_name(op), self.targets("upconv"), op["count"]
        xs = f"{N}x{C}x{H}x{H}"
        st, pd = list(stride), list(padding)

        fwd = (lambda: bk.conv2d_backward_input(x, w, (N, O, Ho, Ho), stride, padding, bias=b),
               lambda: F.conv_transpose2d(xt, wt, bt, stride, padding))
        dx = (lambda: bk.conv2d_forward(gy, w, None, stride, padding),
              lambda: aten.convolution_backward(gyt, xt, wt, None, st, pd, [1, 1], True, [0, 0],
                                                1, (True, False, False))[0])
        dw = (lambda: bk.conv2d_backward_weight(x, gy, w.shape, stride, padding),
              lambda: aten.convolution_backward(gyt, xt, wt, None, st, pd, [1, 1], True, [0, 0],
                                                1, (False, True, False))[1])
        for opname, fns in (("forward", fwd), ("input grad", dx), ("weight grad", dw)):
            self.row(name, opname, xs, *fns, target=target, count=count, flops=flops)
            if self.args.tf32 and self.cuda:
                self.row(name, opname + " (tf32)", xs, *fns, target=None, count=0, flops=flops,
                         tol=common.TF32_TOL, tf32=True)

    def pool(self, op):
        bk, aten = self.bk, self.torch.ops.aten
        N, C, H, W = op["shape"]
        x, xt = self.both(self.randn((N, C, H, W)))
        y, idx = bk.maxpool2d_forward(x, (2, 2), (2, 2))
        yt, idxt = aten.max_pool2d_with_indices(xt, [2, 2], [2, 2])
        gy, gyt = self.both(self.randn(tuple(y.shape)))
        name, target, xs = _layer_name(op), self.targets("pool"), f"{N}x{C}x{H}x{W}"
        n = N * C * H * W
        self.row(name, "forward", xs, lambda: bk.maxpool2d_forward(x, (2, 2), (2, 2)),
                 lambda: aten.max_pool2d_with_indices(xt, [2, 2], [2, 2]),
                 compare=lambda o, t: (o[0], t[0]), target=target, count=op["count"],
                 nbytes=4 * (n + n // 4))
        self.row(name, "backward", xs,
                 lambda: bk.maxpool2d_backward(gy, idx, (N, C, H, W), (2, 2), (2, 2)),
                 lambda: aten.max_pool2d_with_indices_backward(gyt, xt, [2, 2], [2, 2], [0, 0],
                                                               [1, 1], False, idxt),
                 target=target, count=op["count"], nbytes=4 * (n + n // 4))

    def relu(self, op):
        bk, torch = self.bk, self.torch
        shape = op["shape"]
        x, xt = self.both(self.randn(shape))
        y, yt = bk.relu_forward(x), torch.relu(xt)
        gy, gyt = self.both(self.randn(shape))
        name, target = _layer_name(op), self.targets("relu")
        xs, n = "x".join(map(str, shape)), int(np.prod(shape))
        self.row(name, "forward", xs, lambda: bk.relu_forward(x), lambda: torch.relu(xt),
                 target=target, count=op["count"], nbytes=8 * n)
        self.row(name, "backward", xs, lambda: bk.relu_backward(gy, y),
                 lambda: torch.ops.aten.threshold_backward(gyt, yt, 0),
                 target=target, count=op["count"], nbytes=12 * n)

    def loss(self, op):
        bk, torch, F = self.bk, self.torch, self.torch.nn.functional
        N, C, H, W = op["shape"]
        xp = bk.xp
        x, xt = self.both(self.randn((N, C, H, W), 2.0))
        t_host = self.rng.integers(0, C, (N, H, W)).astype(np.int64)
        t, tt = self.both(t_host)
        cw = np.asarray(CLASS_WEIGHTS if C == 4 else (1.0,) * C, np.float32)
        w, wt = self.both(cw)

        def ours_fwd():       # as minicnn.functional.cross_entropy (targets checked before)
            return bk.softmax_cross_entropy_forward(x, t, w, check_target=False,
                                                    reduction="mean")[0]

        _, wsum, p = bk.softmax_cross_entropy_forward(x, t, w, reduction="mean")
        one = xp.ones((), dtype=np.float32)

        def ours_bwd():       # as its backward: g * (1 / sum w[t]), broadcast
            return bk.softmax_cross_entropy_backward(p, t, w, xp.broadcast_to(one * (1 / wsum),
                                                                                t.shape))

        xg = xt.clone().requires_grad_(True)
        lt = F.cross_entropy(xg, tt, wt)
        name, target, xs = _layer_name(op), self.targets("loss"), f"{N}x{C}x{H}x{W}"
        n = N * C * H * W
        self.row(name, "forward", xs, ours_fwd, lambda: F.cross_entropy(xt, tt, wt),
                 target=target, count=1, nbytes=4 * n + 8 * N * H * W)
        self.row(name, "backward", xs, ours_bwd,
                 lambda: torch.autograd.grad(lt, xg, retain_graph=True)[0],
                 target=target, count=1, nbytes=8 * n + 8 * N * H * W)

    def adam(self, op):
        bk, torch = self.bk, self.torch
        shapes = op["param_shapes"]
        ps, gs, ms, vs, tps = [], [], [], [], []
        for s in shapes:
            fan = int(np.prod(s[1:])) if len(s) > 1 else 64
            p, pt = self.both(self.randn(s, 1 / np.sqrt(fan)))
            g, gt = self.both(self.randn(s, 1e-3))
            ps.append(p)
            gs.append(g)
            ms.append(bk.xp.zeros_like(p))
            vs.append(bk.xp.zeros_like(p))
            pt = torch.nn.Parameter(pt)
            pt.grad = gt
            tps.append(pt)
        opt = torch.optim.Adam(tps, lr=LR, betas=BETAS, eps=EPS)
        steps = [0]
        before_o = [common.to_numpy(p).copy() for p in ps]
        before_t = [common.to_numpy(p).copy() for p in tps]

        def ours():
            steps[0] += 1
            for p, g, m, v in zip(ps, gs, ms, vs):
                bk.adam_update(p, g, m, v, lr=LR, beta1=BETAS[0], beta2=BETAS[1], eps=EPS,
                               weight_decay=0.0, step=steps[0])
            return ps

        def theirs():
            with torch.no_grad():
                opt.step()
            return tps

        def update(o, t):      # compare the first step's updates (p_after - p_before)
            return ([common.to_numpy(a) - b for a, b in zip(o, before_o)],
                    [common.to_numpy(a) - b for a, b in zip(t, before_t)])

        P = sum(int(np.prod(s)) for s in shapes)
        self.row(_layer_name(op), "step", f"{P:,} params", ours, theirs,
                 compare=update, floor=0.0, target=self.targets("adam"), count=1,
                 nbytes=28 * P)


# =========================================================================== report
COLUMNS = [("layer", "layer"), ("op", "op"), ("shape", "input shape"),
           ("n_per_step", "n/step"), ("ours_ms", "ours ms"), ("theirs_ms", "theirs ms"),
           ("ratio", "ratio ours/theirs"), ("ours_flops", "ours {unit}"),
           ("theirs_flops", "theirs {unit}"), ("ours_gbs", "ours GB/s"),
           ("rel_err", "rel err"), ("agree", "agrees"), ("target", "target"),
           ("target_met", "met")]


def parse_args(argv=None):
    p = common.network_arguments(__doc__, "tiny shapes (base 4, batch 2, 32x32, 2 repeats): "
                                           "seconds on a CPU")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per op (default: 25 on CUDA; 5 on the CPU, fewer for the "
                        "slow ops, see --budget)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs before timing (default: 5 on CUDA, 1 on the CPU)")
    p.add_argument("--budget", type=float, default=None,
                   help="CPU: seconds of timed runs per op and library; ops slower than "
                        "budget/repeats get fewer runs, at least 3 (default 3)")
    p.add_argument("--pause", type=float, default=None,
                   help="CPU: seconds to sleep when switching library, so that the other's "
                        "spinning worker threads have gone to sleep (default 0.3; 0 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of each library: torch.set_num_threads and, when given "
                        "(or --quick), OMP/OPENBLAS/MKL_NUM_THREADS for NumPy (default: the "
                        "number of cores; 1 with --quick)")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA: also time PyTorch's convolutions with TF32 (extra rows)")
    p.add_argument("--filter", default=None,
                   help="only layers whose name contains this text (e.g. 'conv3x3', '@24px', "
                        "'upconv', 'relu', 'maxpool', 'CE', 'Adam')")
    p.add_argument("--out", default=None, help="write OUT/bench_ops.{json,md,png}")
    args = p.parse_args(argv)
    common.quick_apply(args)
    cuda = args.device == "cuda"
    args.repeats = args.repeats or (25 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.budget = args.budget if args.budget is not None else (None if cuda else 3.0)
    if args.threads is None:
        args.threads = 1 if args.quick else common.cpu_count()
    if args.pause is None:
        args.pause = 0.0 if (args.quick or cuda) else common.CPU_SWITCH_PAUSE_S
    if args.size % 2 ** args.depth:
        p.error(f"--size must divide by 2**depth = {2 ** args.depth}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        bench = Bench(args)
    except Exception as err:   # noqa: BLE001  e.g. BackendUnavailable, no CUDA torch
        print(f"cannot run on {args.device}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    meta = common.machine_info(args.device)
    meta.update({"base": args.base, "depth": args.depth, "batch": args.batch, "size": args.size,
                 "repeats": args.repeats, "warmup": args.warmup, "budget_s": args.budget,
                 "pause_s": args.pause,
                 "torch_threads": bench.torch.get_num_threads(), "tf32_rows": args.tf32,
                 "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
                 "dtype": "float32", "tolerance": "max|ours-ref| <= 1e-3 * max(1, max|ref|) "
                 "(fp32), 2e-2 (tf32); Adam: relative error of the first update",
                 "theirs": "cuDNN via torch (benchmark=True, TF32 off)" if bench.cuda else
                 f"PyTorch CPU ({bench.torch.get_num_threads()} threads)"})
    print(f"bench_ops: {common.machine_line(meta)}")
    print(f"U-Net base {args.base}, depth {args.depth}, batch {args.batch}, "
          f"{args.size}x{args.size}, fp32, {args.repeats} repeats", flush=True)
    ops = unet_layers(args.base, args.depth, 1, 4, args.batch, args.size)
    t0 = time.perf_counter()
    for op in ops:
        if args.filter and args.filter.lower() not in _layer_name(op).lower():
            continue
        getattr(bench, op["kind"])(op)
    elapsed = time.perf_counter() - t0

    rows = bench.rows
    if not rows:
        print(f"no layer matches --filter {args.filter!r}", file=sys.stderr)
        return 2
    unit = "TFLOP/s" if bench.cuda else "GFLOP/s"
    columns = [(k, h.format(unit=unit)) for k, h in COLUMNS]
    step_rows = [r for r in rows if not r["tf32"]]
    tot_ours = sum(r["ours_ms"] * r["n_per_step"] for r in step_rows)
    tot_theirs = sum(r["theirs_ms"] * r["n_per_step"] for r in step_rows)
    with_target = [r for r in step_rows if r["target"] is not None]
    missed = [r for r in with_target if not r["target_met"]]
    worst = sorted((r for r in step_rows if r["n_per_step"]), key=lambda r: -r["ratio"])[:5]
    agree_text = "yes" if not bench.failed else "NO: " + ", ".join(bench.failed)
    target_text = "3x3/1x1 conv <= 1.5x, others <= 1.2x" if bench.cuda else "no op > 2x"
    summary = [
        f"all outputs agree with PyTorch: {agree_text}",
        f"targets met: {len(with_target) - len(missed)} of {len(with_target)} ({target_text})",
        f"sum over one training step's ops (rows weighted by n/step): ours {tot_ours:.1f} ms, "
        f"theirs {tot_theirs:.1f} ms, ratio {tot_ours / tot_theirs:.2f} "
        "(excludes concatenation, bias gradients and other glue)",
        "worst ratios (ops used in a step): "
        + "; ".join(f"{r['layer']} {r['op']} {r['ratio']:.2f}x" for r in worst),
        f"threads: PyTorch {bench.torch.get_num_threads()}, NumPy/OpenBLAS "
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default (all cores)')}",
        f"load average (1/5/15 min) at the end: {common.load_average()}; run took {elapsed:.0f} s",
    ]
    meta["load_average_end"] = common.load_average()
    print()
    print(common.text_table(columns, rows))
    print()
    for line in summary:
        print(line)
    if args.out:
        common.write_report(
            args.out, "bench_ops", meta, columns, rows, summary,
            ([f"{r['layer']} {r['op']}" for r in rows], [r["ratio"] for r in rows],
             [r["target"] for r in rows],
             f"bench_ops on {args.device}: ours / {'cuDNN' if bench.cuda else 'PyTorch CPU'}"
             f" (U-Net base {args.base}, batch {args.batch}, {args.size}px)"),
            extra={"all_agree": not bench.failed, "disagreeing": bench.failed,
                   "targets_met": not missed, "missed_targets": [f"{r['layer']} {r['op']}"
                                                                for r in missed],
                   "step_total_ours_ms": tot_ours, "step_total_theirs_ms": tot_theirs,
                   "step_total_ratio": tot_ours / tot_theirs, "elapsed_s": elapsed})
        print(f"wrote {os.path.join(args.out, 'bench_ops')}.{{json,md,png}}")
    if bench.failed:
        print(f"FAILED: {len(bench.failed)} row(s) disagree with PyTorch: "
              + ", ".join(bench.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
