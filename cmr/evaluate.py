"""Score a trained U-Net: ``python -m cmr.evaluate --checkpoint C --data DIR [--json P] [--csv P]``.

Dice and the 95th-percentile Hausdorff distance (pixels) per class (RV, Myo, LV) and per image,
with the mean over the three classes. Dice follows the original work: computed per image, then
averaged; a structure absent from both prediction and ground truth scores 1. ``DIR`` is a
folder with ``image/`` and ``mask/`` or a coursework root (its ``val`` split is used).
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import minicnn

from . import checkpoint, data, metrics
from .predict import predict_masks

CLASSES = ("RV", "Myo", "LV")


def evaluate(model, split, device="cpu", batch_size=16, flip_tta=False):
    """The metrics dictionary of ``cmr.metrics.evaluate_masks`` for ``split``."""
    preds = predict_masks(model, split.images, batch_size, device, flip_tta)
    return metrics.evaluate_masks(preds, split.masks, split.names)


def format_table(result):
    lines = [f"{'':8}{'RV':>8}{'Myo':>8}{'LV':>8}{'mean':>8}"]
    for key, label in (("dice", "Dice"), ("hd95", "HD95 px")):
        lines.append(f"{label:8}" + "".join(f"{result[key][c]:8.3f}" for c in CLASSES + ("mean",)))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cmr.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="image/+mask/ folder or coursework root")
    parser.add_argument("--json", help="write the full result (per image too) here")
    parser.add_argument("--csv", help="write one row per image here")
    parser.add_argument("--backend", choices=["numpy", "cuda"], default="numpy")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--flip-tta", action="store_true", help="test-time left-right flip")
    args = parser.parse_args(argv)
    try:
        device = "cuda" if args.backend == "cuda" else "cpu"
        minicnn.backend.get(device)
        model, _ = checkpoint.load_model(args.checkpoint, device)
        split = data.load_eval_split(args.data)
        result = evaluate(model, split, device, args.batch_size, args.flip_tta)
    except (data.CMRDataError, checkpoint.CheckpointError, ValueError,
            minicnn.backend.BackendUnavailable) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"{result['n_images']} images from {args.data}")
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name"] + [f"dice_{c}" for c in CLASSES] + [f"hd95_{c}" for c in CLASSES])
            for row in result["per_image"]:
                writer.writerow([row["name"]] + [row["dice"][c] for c in CLASSES]
                                + [row["hd95"][c] for c in CLASSES])
    return 0


if __name__ == "__main__":
    sys.exit(main())
