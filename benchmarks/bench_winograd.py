"""Rung 5 of the ladder (Winograd, ``dev/cuda/winograd.py``) against the shipped kernels and
cuDNN, at the U-Net's 3x3 layers: forward, input gradient, weight gradient.

    python benchmarks/bench_winograd.py --out DIR          (a GPU; about a minute on an H200)
    python benchmarks/bench_winograd.py --quick            (tiny sizes, seconds: a smoke test)

For every 3x3 layer of ``UNet(base, depth)`` at ``batch`` x ``size`` x ``size`` that Winograd's
kernels take (16 channels or more on both sides: the first layer's 1 -> 64 is left out), each
pass is timed (CUDA events, median of ``--repeats``) with the shipped kernels
(``minicnn.backend.cuda``, the build in force), rung 5 with 4x4 tiles (where 4 divides the
size, else 2x2) and with 2x2 tiles, and PyTorch's cuDNN in fp32 and with TF32
(``torch.backends.cudnn.allow_tf32``). Each row prints ms, TFLOP/s (the direct algorithm's
2 N H W O C 9 flops: "effective" for Winograd and cuDNN) and the ratios; the rung's result
is compared with the shipped kernel's first (relative error, fp32 tolerance 1e-3). Sums per
pass and per training step weight each layer by its uses per step. Writes
DIR/bench_winograd.{json,md,png}. Exit status 1 when a Winograd result disagrees.

The decision this informs (benchmarks/NOTES.md entries 19 and 24): per pass, Winograd joins
the shipped path if its sum per step beats the shipped kernels', 4x4 tiles if they beat 2x2.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (also puts the repository root on sys.path)

sys.path.insert(0, os.path.join(common.ROOT, "dev", "cuda"))
import winograd  # noqa: E402  (rung 5's launcher; imports no CuPy)

MIN_CHANNELS = 16     # fewer on either side: the transforms cost more than they save
PASSES = ("forward", "input grad", "weight grad")
COLUMNS = [("layer", "layer"), ("op", "pass"), ("n_per_step", "n/step"),
           ("shipped_ms", "shipped ms"), ("wg4_ms", "Winograd 4x4 ms"),
           ("wg2_ms", "Winograd 2x2 ms"), ("cudnn_ms", "cuDNN fp32 ms"),
           ("cudnn_tf32_ms", "cuDNN TF32 ms"), ("shipped_tflops", "shipped TFLOP/s"),
           ("wg4_tflops", "4x4 TFLOP/s"), ("cudnn_tflops", "cuDNN TFLOP/s"),
           ("ratio", "best Winograd / shipped"), ("ratio_cudnn", "best Winograd / cuDNN"),
           ("rel_err", "rel err"), ("agree", "agrees")]


def layers(args):
    """(C, O, H, uses per step of the forward / weight gradient, of the input gradient) of the
    U-Net's Winograd-eligible 3x3 layers (bench_ops.unet_layers)."""
    import bench_ops
    out = []
    for op in bench_ops.unet_layers(args.base, args.depth, 1, 4, args.batch, args.size):
        if op["kind"] != "conv" or tuple(op["w"][2:]) != (3, 3):
            continue
        O, C = op["w"][:2]
        if min(C, O) >= MIN_CHANNELS and winograd.applies(op["H"], op["H"]):
            out.append((C, O, op["H"], op["count"], op["dx_count"]))
    return out


def run(args):
    import cupy
    from minicnn import backend
    cb = backend.get("cuda")
    try:
        import torch
        if not torch.cuda.is_available():
            raise ImportError("torch without CUDA")
        torch.backends.cudnn.benchmark = True
        tf = torch.nn.functional
    except ImportError as err:                # the cuDNN columns stay empty
        print(f"no cuDNN columns: {err}", flush=True)
        torch = None
    rows, failed = [], []
    rng = np.random.default_rng(0)
    for C, O, H, count, dx_count in layers(args):
        N = args.batch
        x = cupy.asarray(rng.standard_normal((N, C, H, H), dtype=np.float32))
        w = cupy.asarray((rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32))
        b = cupy.asarray(rng.standard_normal(O).astype(np.float32))
        gy = cupy.asarray(rng.standard_normal((N, O, H, H), dtype=np.float32))
        ours = {
            "forward": lambda: cb.conv2d_forward(x, w, b, (1, 1), (1, 1)),
            "input grad": lambda: cb.conv2d_backward_input(gy, w, x.shape, (1, 1), (1, 1)),
            "weight grad": lambda: cb.conv2d_backward_weight(gy, x, w.shape, (1, 1), (1, 1))}
        rung = {
            "forward": lambda t: winograd.forward(x, w, b, tile=t),
            "input grad": lambda t: winograd.input_grad(gy, w, tile=t),
            "weight grad": lambda t: winograd.weight_grad(x, gy, tile=t)}
        theirs = {}
        if torch is not None:
            xt, wt, bt, gyt = (torch.as_tensor(a, device="cuda") for a in (x, w, b, gy))
            theirs = {
                "forward": lambda: tf.conv2d(xt, wt, bt, padding=1),
                "input grad": lambda: torch.nn.grad.conv2d_input(xt.shape, wt, gyt, padding=1),
                "weight grad": lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, gyt, padding=1)}
        flops = 2.0 * N * H * H * O * C * 9
        layer = f"conv3x3 {C}->{O} @{H}px"
        for op in PASSES:
            ref = ours[op]()
            row = {"layer": layer, "op": op, "n_per_step": dx_count if op == "input grad"
                   else count, "shape": [N, C, H, H, O]}
            row["shipped_ms"] = _median(common.time_cupy(ours[op], args.repeats))
            errs = []
            for t in (4, 2):
                errs.append(common.agreement(rung[op](t), ref, tol=1e-3)[0])
                row[f"wg{t}_ms"] = _median(common.time_cupy(lambda: rung[op](t), args.repeats))
            for key, tf32 in (("cudnn_ms", False), ("cudnn_tf32_ms", True)):
                if op in theirs:
                    torch.backends.cudnn.allow_tf32 = tf32
                    torch.backends.cuda.matmul.allow_tf32 = tf32
                    row[key] = _median(common.time_torch_cuda(theirs[op], args.repeats))
            if theirs:
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            for key in ("shipped", "wg4", "cudnn"):
                if row.get(f"{key}_ms"):
                    row[f"{key}_tflops"] = flops / row[f"{key}_ms"] / 1e9
            best = min(row["wg4_ms"], row["wg2_ms"])
            row["ratio"] = best / row["shipped_ms"]
            row["ratio_cudnn"] = best / row["cudnn_ms"] if row.get("cudnn_ms") else None
            row["rel_err"] = max(errs)
            row["agree"] = bool(row["rel_err"] <= 1e-3)
            if not row["agree"]:
                failed.append(f"{layer} {op}: rel err {row['rel_err']:.2e}")
            rows.append(row)
            print(common.text_table(COLUMNS, [row]).splitlines()[-1], flush=True)
        del x, w, b, gy
    return rows, failed


def _median(times):
    return float(np.median(times))


def totals(rows):
    """Per pass: ms per training step (rows weighted by n/step) of each implementation."""
    out = {}
    for op in PASSES + ("all",):
        sel = [r for r in rows if op in ("all", r["op"])]
        out[op] = {k: sum(r[f"{k}_ms"] * r["n_per_step"] for r in sel) if all(
            r.get(f"{k}_ms") for r in sel) else None
            for k in ("shipped", "wg4", "wg2", "cudnn", "cudnn_tf32")}
    return out


def parse_args(argv=None):
    p = common.network_arguments(__doc__, "tiny sizes (base 4, batch 2, 32x32), 2 repeats")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per row (median)")
    p.add_argument("--out", default=None, help="write OUT/bench_winograd.{json,md,png}")
    args = p.parse_args(argv)
    common.quick_apply(args)
    if args.quick:
        args.repeats = 2
    return args


def main(argv=None):
    args = parse_args(argv)
    meta = common.machine_info("cuda", query_gpu=False)
    meta.update({"base": args.base, "depth": args.depth, "batch": args.batch, "size": args.size,
                 "repeats": args.repeats, "dtype": "float32",
                 "theirs": "cuDNN via torch (benchmark=True), fp32 and TF32 columns"})
    print(f"bench_winograd: {common.machine_line(meta)}", flush=True)
    print(common.text_table(COLUMNS, []))
    rows, failed = run(args)
    meta["gpu"] = common.gpu_name()
    sums = totals(rows)
    summary = []
    for op, s in sums.items():
        cells = ", ".join(f"{k} {v:.2f}" for k, v in s.items() if v is not None)
        summary.append(f"{op}: ms per training step: {cells}")
    print()
    for line in summary:
        print(line)
    if args.out:
        common.write_report(
            args.out, "bench_winograd", meta, COLUMNS, rows, summary,
            ([f"{r['layer']} {r['op']}" for r in rows], [r["ratio"] for r in rows],
             [1.0] * len(rows), "Winograd (best tile) / shipped kernels, per layer and pass"),
            extra={"totals_ms_per_step": sums, "all_agree": not failed})
        print(f"wrote {os.path.join(args.out, 'bench_winograd')}.{{json,md,png}}")
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
