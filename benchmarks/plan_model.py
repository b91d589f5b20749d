"""The "tiles" planner's cost model against measured convolution times, and its prediction.

    python benchmarks/plan_model.py benchmarks/results/cuda/h200_3777504/ops_fastdiv_prefetch_vec4/bench_ops.json

For every 3x3 convolution row of a ``bench_ops.json`` (our kernels, a build *without* the
"tiles" feature), it takes the tile that build's planner chose, the model's cost of that tile
(``minicnn.backend.cuda.planner.tile_cost``) and one scale factor (the median of measured / model), and prints
how well the model reproduces the measured times (the check), then what it predicts with the
tile that the "tiles" planner would choose (the prediction, rows weighted by how often a
training step runs them). Pure Python: no GPU, no CuPy.
"""
import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minicnn.backend.cuda import planner  # noqa: E402

LAYER = re.compile(r"conv3x3 (\d+)->(\d+) @(\d+)px")


def gemm(row, batch):
    """(M, Ncols, K, split_k) of a bench_ops row's implicit GEMM, or None (not a 3x3 conv
    with more than one input channel: the first layer's K = 9 is outside what the model saw)."""
    m = LAYER.match(row["layer"])
    if not m or int(m.group(1)) == 1:
        return None
    C, O, H = map(int, m.groups())
    P = batch * H * H
    return {"forward": (O, P, 9 * C, False), "input grad": (C, P, 9 * O, False),
            "weight grad": (O, 9 * C, P, True)}[row["op"]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench_ops_json")
    ap.add_argument("--sms", type=int, default=132,
                    help="SMs of the GPU it ran on (132: H100/H200)")
    ap.add_argument("--batch", type=int, default=25)
    args = ap.parse_args(argv)
    with open(args.bench_ops_json) as f:
        rows = json.load(f)["rows"]
    items = []
    for r in rows:
        g = gemm(r, args.batch)
        if g is None:
            continue
        M, Ncols, K, split_k = g
        old = planner.plan_gemm(M, Ncols, K, "f32", args.sms, split_k)[0]
        new = planner.plan_gemm(M, Ncols, K, "f32", args.sms, split_k, tiles=True)[0]
        items.append((r, old, new, planner.tile_cost(old, M, Ncols, K, args.sms, split_k),
                      planner.tile_cost(new, M, Ncols, K, args.sms, split_k)))
    scale = statistics.median(r["ours_ms"] / c for r, _, _, c, _ in items)
    errors = [r["ours_ms"] / (scale * c) - 1 for r, _, _, c, _ in items]
    print(f"check: {len(items)} rows of {args.bench_ops_json}; model x {scale:.3g} ms\n")
    print(f"| layer | op | tile | measured ms | model ms | measured / model | tile with "
          f"'tiles' | predicted ms |\n|---|---|---|---|---|---|---|---|")
    before = after = 0.0
    for (r, old, new, c_old, c_new), e in zip(items, errors):
        print(f"| {r['layer']} | {r['op']} | {old} | {r['ours_ms']:.3g} | {scale * c_old:.3g} | "
              f"{1 + e:.2f} | {new} | {r['ours_ms'] * c_new / c_old:.3g} |")
        before += r["n_per_step"] * r["ours_ms"]
        after += r["n_per_step"] * r["ours_ms"] * c_new / c_old
    within = sum(abs(e) <= 0.15 for e in errors)
    print(f"\nmodel vs measured: median |error| {statistics.median(abs(e) for e in errors):.1%}, "
          f"{within} of {len(errors)} rows within 15 %, worst {max(errors, key=abs):+.0%}")
    print(f"prediction, these rows summed over one training step: {before:.1f} ms -> "
          f"{after:.1f} ms with the 'tiles' planner (each row's measured time x the model's "
          f"cost ratio of the two tiles)")


if __name__ == "__main__":
    main()
