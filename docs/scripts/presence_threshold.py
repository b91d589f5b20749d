"""Can a size or confidence rule remove structures drawn where the ground truth has none?

    python docs/scripts/presence_threshold.py CKPT [CKPT ...] --data DIR/acdc96 [--ensemble]

For each checkpoint (a model trained with acdc96, e.g. ``--preset cpu16-acdc``), predicts the
acdc96 ``val`` and ``test`` patients (the split of ``cmr.train`` with seed 0, slices
transposed as ``cmr.evaluate --transpose``) and erases a predicted structure from a slice
when it is small:

* ``area``: fewer than T pixels (every structure; T = 0 is no rule);
* ``stack``: RV only, less than a fraction f of the largest RV predicted in the same stack,
  and only on the first or last two slices of the stack (``cmr.metrics.at_stack_ends``);
* ``confidence``: the mean probability of the class over the pixels where it is predicted is
  below p (every structure; ``cmr.predict.drop_unsure_structures``, the ``--min-confidence``
  of ``cmr.evaluate`` and ``cmr.predict``).

With ``--ensemble`` the checkpoints are one model, their probabilities averaged
(``cmr.predict.predict_probs``), instead of each on its own.

The threshold is chosen on ``val`` (the best mean Dice), then scored once on ``test``.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cmr import checkpoint, data, metrics  # noqa: E402
from cmr.evaluate import load_split  # noqa: E402
from cmr.predict import drop_unsure_structures, predict_probs, structure_confidence  # noqa: E402

AREAS = (0, 10, 20, 30, 40, 50, 75, 100)
FRACTIONS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
CONFIDENCES = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


def mean_dice(preds, masks):
    """The mean Dice of ``cmr.evaluate`` (per image, then over RV, Myo, LV), without its HD95."""
    return float(np.mean([list(metrics.dice_per_class(p, m).values())
                          for p, m in zip(preds, masks)]))


def by_area(preds, t):
    out = preds.copy()
    for c in (1, 2, 3):
        small = (out == c).sum(axis=(1, 2)) < t
        out[small[:, None, None] & (out == c)] = 0
    return out


def by_stack(preds, names, f):
    out = preds.copy()
    area = (out == 1).sum(axis=(1, 2)).astype(float)
    stacks = np.array([stack for stack, _ in metrics.stack_positions(names)])
    largest = np.array([area[stacks == s].max() for s in stacks])
    drop = (area < f * largest) & metrics.at_stack_ends(names)
    out[drop[:, None, None] & (out == 1)] = 0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoints or run folders (as cmr.evaluate)")
    ap.add_argument("--data", required=True, help="the acdc96 folder")
    ap.add_argument("--ensemble", action="store_true",
                    help="average the checkpoints' probabilities (one model)")
    args = ap.parse_args(argv)
    try:
        splits = {w: load_split(args.data, w).transposed() for w in ("val", "test")}
        if any(metrics.stack_positions(s.names) is None for s in splits.values()):
            raise data.CMRDataError(f"{args.data}: the slices are not named "
                                    "<stack>_slice<NN> (the stack rule needs their order)")
        models = [(path, checkpoint.load_model(path, "cpu")[0])
                  for path in checkpoint.resolve(args.checkpoints)]
    except (data.CMRDataError, checkpoint.CheckpointError) as err:
        ap.exit(2, f"error: {err}\n")
    if args.ensemble:
        models = [(" + ".join(str(path) for path, _ in models), [m for _, m in models])]
    for path, model in models:
        probs = {w: predict_probs(model, s.images) for w, s in splits.items()}
        preds = {w: p.argmax(axis=1).astype(np.uint8) for w, p in probs.items()}
        masks = splits["test"].masks
        drawn, truth = ((preds["test"] == 1).sum(axis=(1, 2)), (masks == 1).sum(axis=(1, 2)))
        sure = structure_confidence(preds["test"], probs["test"], 1)
        invented, real = (truth == 0) & (drawn > 0), (truth > 0) & (drawn > 0)
        print(f"{path}: test mean Dice without a rule {mean_dice(preds['test'], masks):.4f}; "
              f"RV area (pixels) drawn where the ground truth has none: median "
              f"{np.median(drawn[invented]):.0f}, where it has one: 5th percentile "
              f"{np.percentile(drawn[real], 5):.0f}; mean RV probability over those pixels: "
              f"median {np.median(sure[invented]):.2f} and {np.median(sure[real]):.2f}")
        for rule, values, apply in (
                ("area", AREAS, lambda p, w, v: by_area(p, v)),
                ("stack", FRACTIONS, lambda p, w, v: by_stack(p, splits[w].names, v)),
                ("confidence", CONFIDENCES,
                 lambda p, w, v: drop_unsure_structures(p, probs[w], v))):
            val = {v: mean_dice(apply(preds["val"], "val", v), splits["val"].masks)
                   for v in values}
            best = max(values, key=val.get)                 # the first of equal scores
            test = mean_dice(apply(preds["test"], "test", best), splits["test"].masks)
            print(f"  {rule:10s}: val " + " ".join(f"{v}:{val[v]:.4f}" for v in values)
                  + f" -> chosen {best}, test {test:.4f}")


if __name__ == "__main__":
    main()
