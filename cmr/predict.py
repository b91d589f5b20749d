"""Apply a trained U-Net: ``python -m cmr.predict --input DIR_or_PNG --out DIR``.

Without ``--checkpoint`` the model that ships with the package segments (a width-16 U-Net
trained on the coursework set and acdc96: ``cmr/models/README.md`` is its card);
``--checkpoint C`` uses a checkpoint of ``cmr.train``, ``--checkpoint C1 C2 ...`` an
ensemble (the models' class probabilities are averaged before the argmax).

96x96 PNG crops (a file, or a folder): writes one mask per image as an 8-bit PNG holding the
labels 0..3 (``NAME_mask.png``, as in the data sets) and a colour overlay for looking at
(``overlay/NAME.png``: RV red, Myo green, LV blue).

NIfTI volumes (``.nii``/``.nii.gz``, a file or a folder of them; needs nibabel): each whole
short-axis volume is segmented as ``cmr.nifti`` describes (scaled in-plane by ``--scale``,
the heart found by the model, 96x96 crops segmented, the labels pasted back) and written as
a label volume with the input's grid, affine and header: ``--out seg.nii.gz`` for one file,
else ``--out DIR`` gets ``NAME_seg.nii.gz`` per input.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

import minicnn
from minicnn import functional as F

from . import checkpoint, data
from .cli import one_line_errors, output_folder

COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 80], [70, 110, 240]], np.float32)


def predict_logits(model, images, batch_size=16, device="cpu", bar=None):
    """Softmax probabilities ``(N, C, H, W)`` for float images ``(N, H, W)``; ``bar`` (a
    tqdm progress bar) advances by each batch's images."""
    out = []
    with minicnn.no_grad():
        for start in range(0, len(images), batch_size):
            x = minicnn.Tensor(np.ascontiguousarray(images[start:start + batch_size, None],
                                                    dtype=np.float32)).to(device)
            out.append(F.softmax(model(x), dim=1).numpy())
            if bar is not None:
                bar.update(len(x.data))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def predict_probs(models, images, batch_size=16, device="cpu", flip_tta=False, progress=False):
    """Class probabilities ``(N, C, H, W)`` of ``models``: one model, or a list of models (an
    ensemble), whose softmax probabilities are averaged. With ``flip_tta`` each model also
    sees the left-right mirror of every image, and that prediction, mirrored back, joins the
    average. ``progress``: a progress bar (tqdm, on stderr) over every image each model sees."""
    from tqdm import tqdm
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    if not models:
        raise ValueError("no model to predict with")
    passes = len(models) * (2 if flip_tta else 1)
    total, count = 0.0, 0
    with tqdm(total=passes * len(images), unit="img", desc="predicting", disable=not progress,
              leave=False) as bar:
        for model in models:
            total = total + predict_logits(model, images, batch_size, device, bar)
            count += 1
            if flip_tta:
                total = total + predict_logits(model, images[:, :, ::-1], batch_size,
                                               device, bar)[:, :, :, ::-1]
                count += 1
    return total / count


def predict_masks(models, images, batch_size=16, device="cpu", flip_tta=False,
                  keep_largest=False, min_confidence=0.0, progress=False):
    """Label maps ``(N, H, W)`` (uint8): argmax of the class probabilities of
    ``predict_probs`` (one model or an ensemble, ``flip_tta`` and ``progress`` as there);
    post-processed by ``drop_unsure_structures`` with ``min_confidence`` > 0, then by
    ``keep_largest_component`` with ``keep_largest``."""
    probs = predict_probs(models, images, batch_size, device, flip_tta, progress)
    masks = probs.argmax(axis=1).astype(np.uint8)
    if min_confidence > 0:
        masks = drop_unsure_structures(masks, probs, min_confidence)
    return keep_largest_component(masks) if keep_largest else masks


def structure_confidence(masks, probs, c):
    """Per label map, the mean probability of class ``c`` over the pixels labelled ``c``,
    ``mean(probs[n, c][masks[n] == c])`` (0 where ``c`` is not drawn): ``(N,)``."""
    drawn = masks == c
    return (probs[:, c] * drawn).sum(axis=(1, 2)) / np.maximum(drawn.sum(axis=(1, 2)), 1)


def drop_unsure_structures(masks, probs, threshold, classes=(1, 2, 3)):
    """Post-processing: erase a class from a label map (set it to background) when its
    ``structure_confidence`` is below ``threshold``. Meant for the structures drawn on slices
    that have none (the RV at the base or apex of a stack): they are drawn with less
    confidence than real ones. ``masks`` ``(N, H, W)``, ``probs`` ``(N, C, H, W)``; returns a
    new array."""
    out = np.array(masks, copy=True)
    for c in classes:
        unsure = structure_confidence(out, probs, c) < threshold
        out[unsure[:, None, None] & (out == c)] = 0
    return out


def probability(text):
    """argparse type of ``--min-confidence``: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return value


def add_model_arguments(parser):
    """The flags that ``cmr.predict`` and ``cmr.evaluate`` share: which model(s), where they run,
    and how their probabilities become masks."""
    parser.add_argument("--checkpoint", nargs="+",
                        help="a .npz written by cmr.train, a run folder (its best.npz, or "
                        "every member of a --members ensemble), or several: an ensemble (their "
                        "class probabilities averaged); default: the shipped model "
                        "(cmr/models/README.md)")
    parser.add_argument("--backend", choices=["numpy", "cuda"], default="numpy")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--flip-tta", action="store_true",
                        help="test-time left-right flip: average with the mirrored image")
    parser.add_argument("--keep-largest", action="store_true",
                        help="keep only the largest region of each structure in the predictions")
    parser.add_argument("--min-confidence", type=probability, default=0.0, metavar="P",
                        help="erase a predicted structure whose mean probability over its "
                        "pixels is below P (0: off)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def keep_largest_component(masks, classes=(1, 2, 3)):
    """Post-processing: in each label map ``(N, H, W)``, keep only the largest 4-connected
    region of each class in ``classes`` and set that class's other regions to background.
    (Each structure is one region in a short-axis slice, so stray islands are errors; they
    cost little Dice but dominate the Hausdorff distance.) Returns a new array."""
    from scipy import ndimage
    out = np.array(masks, copy=True)
    for image in out:                                   # a view: edits land in ``out``
        for c in classes:
            regions, n = ndimage.label(image == c)      # 4-connectivity (the default)
            if n > 1:
                sizes = np.bincount(regions.ravel())[1:]
                image[(regions > 0) & (regions != 1 + int(np.argmax(sizes)))] = 0
    return out


def overlay(image, mask, alpha=0.45):
    """An RGB uint8 picture of ``image`` (float in [0, 1]) with the labels blended on top."""
    grey = np.repeat(image[..., None] * 255, 3, axis=-1)
    colour = COLOURS[mask]
    blend = np.where(mask[..., None] > 0, (1 - alpha) * grey + alpha * colour, grey)
    return np.clip(blend, 0, 255).astype(np.uint8)


def say_model(paths):
    """One line naming the model used when ``--checkpoint`` is not given."""
    if not paths:
        meta = checkpoint.load(checkpoint.SHIPPED)[0]
        card = meta.get("card", {})
        print(f"model: the shipped {card.get('name', checkpoint.SHIPPED.stem)} "
              f"({checkpoint.SHIPPED.name}; its card: cmr/models/README.md)")


def _inputs(path):
    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        if (path / "image").is_dir():
            path = path / "image"
        if not path.is_dir():
            raise data.CMRDataError(f"input not found: {path}")
        files = sorted(path.glob("*.png"), key=lambda p: data.natural_key(p.stem))
        if not files:
            raise data.CMRDataError(f"no PNG images in {path}")
    return [f.stem for f in files], data.load_images(files).astype(np.float32) / 255.0


def main(argv=None):
    from PIL import Image
    parser = argparse.ArgumentParser(prog="python -m cmr.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, help="a PNG, a folder of PNGs, a folder "
                        "with an image/ sub-folder, or NIfTI: a .nii/.nii.gz volume or a "
                        "folder of them")
    parser.add_argument("--out", required=True, help="output folder (NIfTI: a .nii.gz file "
                        "for one input volume, or a folder)")
    parser.add_argument("--scale", type=float, default=None, metavar="S",
                        help="NIfTI: in-plane factor to the training scale (default 0.85, "
                        "cmr.prepare's for ACDC)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.exit(2, f"error: --batch-size must be >= 1, got {args.batch_size}\n")
    if args.scale is not None and not args.scale > 0:
        parser.exit(2, f"error: --scale must be > 0, got {args.scale}\n")
    with one_line_errors(parser):
        device = "cuda" if args.backend == "cuda" else "cpu"
        minicnn.backend.get(device)
        models = checkpoint.load_models(args.checkpoint, device)
        say_model(args.checkpoint)
        from . import nifti
        volumes = nifti.nifti_inputs(args.input)
        if volumes:
            return predict_volumes(args, models, device, volumes)
        if args.scale is not None:
            raise ValueError("--scale applies to NIfTI volumes only")
        names, images = _inputs(args.input)
        # the output folders are checked before the predictions, not after
        with output_folder(args.out) as out, output_folder(out / "overlay") as overlays:
            masks = predict_masks(models, images, args.batch_size, device, args.flip_tta,
                                  args.keep_largest, args.min_confidence,
                                  progress=not args.no_progress)
            for name, image, mask in zip(names, images, masks):
                Image.fromarray(mask).save(out / f"{name}_mask.png")
                Image.fromarray(overlay(image, mask)).save(overlays / f"{name}.png")
    print(f"wrote {len(names)} masks to {out} and overlays to {overlays}")
    return 0


def predict_volumes(args, models, device, volumes):
    """The NIfTI branch of ``main``: each volume segmented by ``cmr.nifti.predict_file``."""
    from . import nifti
    out = Path(args.out)
    single = len(volumes) == 1 and Path(args.input).is_file() and nifti.is_nifti(out)
    if not single and nifti.is_nifti(out):
        raise ValueError(f"--out {out} names one NIfTI file, but --input holds "
                         f"{len(volumes)} volumes: give a folder")
    scale = nifti.SCALE if args.scale is None else args.scale
    options = dict(batch_size=args.batch_size, device=device, flip_tta=args.flip_tta,
                   keep_largest=args.keep_largest, min_confidence=args.min_confidence)
    with output_folder(out.parent if single else out) as folder:
        for path in volumes:
            target = out if single else folder / (nifti.stem(path) + "_seg.nii.gz")
            labels = nifti.predict_file(models, path, target, scale, **options)
            counts = ", ".join(f"{name} {int((labels == c).sum()):,}"
                               for c, name in ((1, "RV"), (2, "Myo"), (3, "LV")))
            print(f"{path.name}: {labels.shape} -> {target} (voxels: {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
