"""Score a trained U-Net: ``python -m cmr.evaluate [--checkpoint C] --data DIR [--json P]``.

Dice and the 95th-percentile Hausdorff distance (pixels) per class (RV, Myo, LV) and per image,
with the mean over the three classes. Dice follows the original work: computed per image, then
averaged; a structure absent from both prediction and ground truth scores 1. ``DIR`` is a
folder with ``image/`` and ``mask/`` or a coursework root (its ``val`` split is used).
``--checkpoint C1 C2 ...`` scores an ensemble: the models' class probabilities are averaged.
``--checkpoint RUN`` (a ``cmr.train`` output folder) scores its ``best.npz``, or every member
of a ``--members`` ensemble.
Without ``--checkpoint`` the model that ships with the package is scored
(``cmr/models/README.md``).

Where the slices are named ``patientPPP_frameFF_sliceSS`` (acdc96, acdc96vol, cmr.prepare's
output), ACDC's own metric is reported too: Dice per structure over each 3-D volume, the
mean over volumes, and ED and ES apart (``cmr.metrics.volume_metrics``). It is ACDC's only
on whole volumes (acdc96vol); on a set of labelled slices only (acdc96) it says so.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

import minicnn

from . import checkpoint, data, metrics
from .cli import one_line_errors
from .predict import add_model_arguments, overlay, predict_masks, say_model

CLASSES = ("RV", "Myo", "LV")


def load_split(directory, which="default", seed=0):
    """The labelled slices to score. ``default``: a folder's every slice, or a coursework root's
    val split; ``train``/``val``/``test``: that part of the 50/10/40 split that ``cmr.train``
    makes with the same ``seed`` (by patient where patients are known, with
    ``data.coursework_rules``)."""
    if which == "default":
        return data.load_eval_split(directory)
    layout = data.detect_layout(directory)
    if layout == "coursework":
        return data.load_coursework(directory, which)
    split = data.load_manifest_folder(directory) if layout == "flat" else data.load_folder(directory)
    if split.patients is not None:
        parts = data.split_by_patient(split, seed=seed, **data.coursework_rules())
    else:
        parts = data.split_by_slice(split, seed=seed)
    return parts[("train", "val", "test").index(which)]


def evaluate(models, split, device="cpu", batch_size=16, flip_tta=False, return_masks=False,
             keep_largest=False, min_confidence=0.0, slice_spacing=None, progress=False):
    """The metrics dictionary of ``cmr.metrics.evaluate_masks`` for ``split`` (and the
    predicted label maps with ``return_masks``) of one model or a list of models (an
    ensemble, see ``cmr.predict.predict_probs``); ``keep_largest`` and ``min_confidence``
    post-process the predictions first, as in ``cmr.predict.predict_masks``. Slices named by
    patient, frame and slice also get ``result["volumes"]`` (``metrics.volume_metrics``; 3-D
    HD95 with ``slice_spacing``, the distance between slices in pixels). ``progress`` shows
    a progress bar of the predictions."""
    preds = predict_masks(models, split.images, batch_size, device, flip_tta, keep_largest,
                          min_confidence, progress)
    result = metrics.evaluate_masks(preds, split.masks, split.names)
    volumes = metrics.volume_metrics(preds, split.masks, split.names, slice_spacing)
    if volumes is not None:
        result["volumes"] = volumes
    return (result, preds) if return_masks else result


def save_figure(path, split, preds, result, rows=6, title=""):
    """A PNG grid: image | ground truth | prediction for ``rows`` slices spread evenly over the
    split (labels blended over the image: RV red, Myo green, LV blue), each row titled with
    the slice's name and mean Dice."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    picks = sorted({int(round(i)) for i in np.linspace(0, len(split) - 1, min(rows, len(split)))})
    fig, axes = plt.subplots(len(picks), 3, figsize=(6.6, 2.3 * len(picks)), squeeze=False)
    for row, i in zip(axes, picks):
        dice = result["per_image"][i]["dice"]
        mean = sum(dice[c] for c in CLASSES) / len(CLASSES)
        image = split.images[i]
        pictures = (image, overlay(image, split.masks[i]), overlay(image, preds[i]))
        labels = ("image", "ground truth", f"prediction (Dice {mean:.3f})")
        for ax, picture, label in zip(row, pictures, labels):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(f"{split.names[i]}: {label}" if label == "image" else label, fontsize=8)
            ax.axis("off")
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=9)
        top = 1 - 0.3 / fig.get_figheight()     # 0.3 inch above the first row for the title
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cell(value):
    """A table cell: the number, or ``n/a`` where it is undefined (NaN; ``null`` in JSON)."""
    return f"{'n/a':>8}" if value is None or value != value else f"{value:8.3f}"


def format_table(result):
    lines = [f"{'':8}{'RV':>8}{'Myo':>8}{'LV':>8}{'mean':>8}"]
    for key, label in (("dice", "Dice"), ("hd95", "HD95 px")):
        lines.append(f"{label:8}" + "".join(_cell(result[key][c]) for c in CLASSES + ("mean",)))
    undefined = result.get("hd95_undefined")
    if undefined and any(undefined.values()):
        left_out = [c for c in CLASSES if _cell(result["hd95"][c]).strip() == "n/a"]
        lines.append("HD95 is undefined on a slice where a structure is in only one of "
                     "prediction and ground truth (" + ", ".join(
                         f"{c} {undefined[c]}" for c in CLASSES) + " slices): each class "
                     "averages the slices where it is defined, and 'mean' the classes with "
                     "a value" + (f" (without {', '.join(left_out)})" if left_out else ""))
    sub = result.get("all_present")
    if sub and sub["n_images"] != result["n_images"]:
        lines.append(f"{'Dice*':8}" + "".join(_cell(sub['dice'][c]) for c in CLASSES + ("mean",))
                     + f"   * the {sub['n_images']} of {result['n_images']} slices whose ground"
                     " truth has all three structures")
    pres = result.get("presence")
    if pres and any(p["absent"] or p["missed"] for p in pres.values()):
        lines.append("absent from the ground truth (of those, predicted anyway): "
                     + ", ".join(f"{c} {pres[c]['absent']} ({pres[c]['invented']})"
                                 for c in CLASSES)
                     + "; present but not predicted: "
                     + ", ".join(f"{c} {pres[c]['missed']}" for c in CLASSES))
        if "absent_at_ends" in pres[CLASSES[0]]:
            lines.append("of the absent ones, among the first or last two slices of their stack: "
                         + ", ".join(f"{c} {pres[c]['absent_at_ends']} "
                                     f"({pres[c]['invented_at_ends']})" for c in CLASSES))
    vol = result.get("volumes")
    if vol:
        lines.append(f"per 3-D volume (ACDC's metric), mean over {vol['n_volumes']} volumes:")
        rows = [("Dice 3D", vol["dice"])] + [(f"  {k}", v["dice"])
                                             for k, v in vol["phases"].items()]
        if "hd95" in vol:
            rows.insert(1, ("HD95 3D", vol["hd95"]))
        for label, values in rows:
            lines.append(f"{label:8}" + "".join(f"{values[c]:8.3f}" for c in CLASSES + ("mean",)))
        if not vol["complete"]:
            lines.append("  (slices are missing inside or at the ends of some volumes: these are"
                         " not ACDC's figures; score whole volumes, e.g. acdc96vol)")
    return "\n".join(lines)


def figure_title(args, result):
    """What ``--figure`` shows above its grid: the models (the last two parts of each path),
    the data, the split, the post-processing flags and the mean Dice."""
    models = (" + ".join("/".join(Path(c).parts[-2:]) for c in args.checkpoint)
              if args.checkpoint else "the shipped model")
    rules = "".join(f", {flag}" for flag, on in (
        ("--flip-tta", args.flip_tta), ("--keep-largest", args.keep_largest),
        (f"--min-confidence {args.min_confidence:g}", args.min_confidence > 0)) if on)
    return (f"{models} on {args.data} ({args.split} split{rules}): "
            f"mean Dice {result['dice']['mean']:.3f}")


def write_outputs(args, split, preds, result):
    """The files that ``--json``, ``--figure`` and ``--csv`` ask for."""
    if args.json:
        Path(args.json).write_text(json.dumps(metrics.jsonable(result), indent=1,
                                              allow_nan=False))
    if args.figure:
        save_figure(args.figure, split, preds, result, args.figure_rows,
                    figure_title(args, result))
    if args.csv:
        rows = metrics.jsonable(result["per_image"])      # undefined values (NaN) -> None
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)                        # and None -> an empty cell
            writer.writerow(["name"] + [f"dice_{c}" for c in CLASSES]
                            + [f"hd95_{c}" for c in CLASSES])
            for row in rows:
                writer.writerow([row["name"]] + [row["dice"][c] for c in CLASSES]
                                + [row["hd95"][c] for c in CLASSES])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cmr.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="image/+mask/ folder or coursework root")
    parser.add_argument("--json", help="write the full result (per image too) here")
    parser.add_argument("--csv", help="write one row per image here (an undefined value, "
                        "such as HD95 where a structure is in only one of prediction and "
                        "ground truth, is an empty cell)")
    parser.add_argument("--figure", help="write a PNG of image | ground truth | prediction here")
    parser.add_argument("--figure-rows", type=int, default=6, help="slices in --figure (6)")
    parser.add_argument("--split", choices=["default", "train", "val", "test"], default="default",
                        help="which part of DIR to score (default: all of an image/+mask/ folder,"
                        " or the val split of a coursework root)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (as in training)")
    parser.add_argument("--transpose", action="store_true",
                        help="transpose the slices first (acdc96 vs a model trained on cmr)")
    parser.add_argument("--slice-spacing", type=float, default=None, metavar="PX",
                        help="distance between slices in pixels: adds the 3-D HD95 to the "
                        "per-volume scores (not in the PNG data; off by default)")
    args = parser.parse_args(argv)
    if args.figure_rows < 1:
        parser.error("--figure-rows must be >= 1")
    if args.slice_spacing is not None and not args.slice_spacing > 0:
        parser.error("--slice-spacing must be > 0")
    if args.batch_size < 1:
        parser.exit(2, f"error: --batch-size must be >= 1, got {args.batch_size}\n")
    with one_line_errors(parser):
        for output in (args.json, args.csv, args.figure):   # before the work, not after it
            if output:
                check_writable(output)
        device = "cuda" if args.backend == "cuda" else "cpu"
        minicnn.backend.get(device)
        models = checkpoint.load_models(args.checkpoint, device)
        say_model(args.checkpoint)
        split = load_split(args.data, args.split, args.seed)
        if not split.has_masks:
            raise data.CMRDataError(f"{args.data}: the {args.split} split has no masks to score")
        if args.transpose:
            split = split.transposed()
        result, preds = evaluate(models, split, device, args.batch_size, args.flip_tta,
                                 return_masks=True, keep_largest=args.keep_largest,
                                 min_confidence=args.min_confidence,
                                 slice_spacing=args.slice_spacing,
                                 progress=not args.no_progress)
        print(f"{result['n_images']} images from {args.data}")
        print(format_table(result))
        write_outputs(args, split, preds, result)
    return 0


def check_writable(path):
    """Fail now (``OSError`` naming ``path``) if the file ``path`` cannot be written: its
    folder is missing, is not a folder, or is read-only. Leaves nothing behind."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "it is a folder", str(path))
    existed = path.exists()
    with open(path, "a"):
        pass
    if not existed:
        path.unlink()


if __name__ == "__main__":
    sys.exit(main())
