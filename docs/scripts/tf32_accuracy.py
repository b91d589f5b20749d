"""What TF32 costs in accuracy, measured on the CPU (issue 30): the same recipe trained with
fp32 convolutions and with TF32-rounded ones (``--precision tf32``, the NumPy backend's
emulation of tensor-core rounding), seed by seed, scored on cmr/val.

    python docs/scripts/tf32_accuracy.py --data DATA/cmr --runs runs/tf32 \
        [--seeds 0 1 2] [--preset cpu16] [--out benchmarks/results/cpu/tf32_accuracy]

Trains each missing run (``RUNS/<precision>_s<seed>``: ``python -m cmr.train --preset PRESET
--data DATA --seed S --precision P --out ...``, fp32 then TF32 for each seed, so that an
interrupted study still has whole pairs), then writes a table of each run's first-epoch
loss, the cmr/val mean Dice of its last epoch and of its best one (``best.npz``, chosen on
cmr/val during training, the same way in both arms) and the mean and spread of each arm.

Prediction, written before the first run (2026-12-03): TF32 keeps 10 mantissa bits, so each
product's operands move by up to 2^-11 (5e-4) relative; the sums stay fp32. The weights'
updates, which Adam scales to about 1e-3 of lr per step, are not rounded (the optimizer runs
in fp32). So the training follows the fp32 run's path for a while and then drifts as a
different seed would: first-epoch losses within 1e-3 relative of each other, final Dice
differences between the arms of the size of the seed-to-seed spread (about 0.01 for cpu16 on
cmr/val), the arms' means within one spread of each other.
"""
import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = ("fp32", "tf32")


def train(args, precision, seed, out):
    """One run, unless ``out`` already holds a finished one."""
    if (out / "last.npz").exists() and len(log(out)) >= epochs(out):
        return
    cmd = [sys.executable, "-m", "cmr.train", "--preset", args.preset, "--data", str(args.data),
           "--seed", str(seed), "--precision", precision, "--out", str(out), "--no-progress"]
    if out.exists():
        cmd.append("--resume")
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def epochs(out):
    return json.loads((out / "config.json").read_text())["epochs"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="cpu16")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu/tf32_accuracy")
    args = parser.parse_args(argv)
    for seed in args.seeds:
        for precision in PRECISIONS:
            train(args, precision, seed, args.runs / f"{precision}_s{seed}")

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    rows, arms = [], {p: {"last": [], "best": []} for p in PRECISIONS}
    for seed in args.seeds:
        for precision in PRECISIONS:
            history = log(args.runs / f"{precision}_s{seed}")
            last = history[-1]["val_dice"]["mean"]
            best = max(history, key=lambda h: h["val_dice"]["mean"])
            arms[precision]["last"].append(last)
            arms[precision]["best"].append(best["val_dice"]["mean"])
            rows.append(f"| {seed} | {precision} | {history[0]['loss']:.6f} | {last:.3f} | "
                        f"{best['val_dice']['mean']:.3f} (epoch {best['epoch']}) |")
    lines = ["# TF32 against fp32 convolutions, trained on the CPU (issue 30)", "",
             f"`python docs/scripts/tf32_accuracy.py --data DATA/cmr --runs RUNS --seeds "
             f"{' '.join(map(str, args.seeds))} --preset {args.preset}`  ",
             f"date: {datetime.date.today().isoformat()}; git {commit}; CPU, NumPy backend "
             "(TF32: operands rounded to 10 mantissa bits before each convolution's product, "
             "fp32 sums)", "",
             "| seed | precision | first-epoch loss | cmr/val Dice, last epoch | "
             "cmr/val Dice, best epoch |", "|---|---|---|---|---|", *rows, "",
             "| precision | last epoch: mean +- sd | best epoch: mean +- sd |", "|---|---|---|"]
    for precision, arm in arms.items():
        lines.append(f"| {precision} | {np.mean(arm['last']):.3f} +- {np.std(arm['last']):.3f} "
                     f"| {np.mean(arm['best']):.3f} +- {np.std(arm['best']):.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tf32_accuracy.md").write_text("\n".join(lines) + "\n")
    (args.out / "tf32_accuracy.json").write_text(json.dumps(
        {"commit": commit, "preset": args.preset, "seeds": args.seeds, "arms": arms}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
