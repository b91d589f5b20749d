"""Find the slices of one data set that are copies of slices of another.

The coursework set ``cmr/`` and ``acdc96/`` are both cut from the ACDC training release,
with different crops, scales and intensity windows. A slice that sits in both sets joins
them: a model trained on ``acdc96`` patients and scored on ``cmr/val`` (or trained on
``cmr/train`` and scored on held-out ``acdc96`` patients) would be scored on images it has
seen. This module finds such copies so that splits can keep them apart::

    python -m cmr.overlap ../shared/data/cmr ../shared/data/acdc96 --transpose \\
        --out overlap.json

The match is a normalised cross-correlation (NCC). For a query image ``q`` (its central
``W x W`` window, ``W = 64`` of 96) and a reference image ``r`` rescaled by ``s``:

    ncc(q, r) = max over s, dy, dx of  < q_c , r_s[dy:dy+W, dx:dx+W]_c > / (|q_c| |r_.._c|)

where ``x_c = x - mean(x)``: 1 for an affine copy of the window, whatever the
brightness and contrast. The shifts cover +-16 px, the scales 0.80..1.25 (the coursework
set's pixel size differs from ``acdc96``'s by up to about 10 %). Intensity windowing and
resampling keep a true copy at 0.93-0.99; a different patient reaches about 0.85 at most
(see ``docs/unet.md``, "One slice, two data sets").

The cross-correlation of one query with every window of every reference is one FFT
product per scale: ``corr = irfft2(rfft2(r) * conj(rfft2(q_padded)))``; the windows'
norms come from integral images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import fft, ndimage

from . import data

__all__ = ["SCALES", "THRESHOLD", "best_matches", "duplicate_patients", "find_overlap", "main"]

#: Scales tried for the reference images (geometric, 0.80 .. 1.25).
SCALES = tuple(float(s) for s in np.round(np.geomspace(0.8, 1.25, 12), 4))
#: NCC at and above which two slices are taken for one (see the module docstring).
THRESHOLD = 0.9
WINDOW = 64


def _rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """Zoom ``image`` (H, W) by ``scale`` about its centre, keeping its shape (edge padding)."""
    h, w = image.shape
    zoomed = ndimage.zoom(image, scale, order=1)
    zh, zw = zoomed.shape
    if zh >= h:
        top, left = (zh - h) // 2, (zw - w) // 2
        return zoomed[top:top + h, left:left + w]
    top, left = (h - zh) // 2, (w - zw) // 2
    return np.pad(zoomed, ((top, h - zh - top), (left, w - zw - left)), mode="edge")


def _window_norms(refs: np.ndarray, w: int) -> np.ndarray:
    """|r_c| of every w x w window of every reference, from integral images: (M, H-w+1, W-w+1)."""
    m, h, width = refs.shape
    s1 = np.zeros((m, h + 1, width + 1))
    s2 = np.zeros((m, h + 1, width + 1))
    s1[:, 1:, 1:] = refs.cumsum(1).cumsum(2)
    s2[:, 1:, 1:] = (refs * refs).cumsum(1).cumsum(2)

    def box(s):
        return s[:, w:, w:] - s[:, :-w, w:] - s[:, w:, :-w] + s[:, :-w, :-w]

    b1, b2 = box(s1), box(s2)
    return np.sqrt(np.maximum(b2 - b1 * b1 / (w * w), 1e-12))


def best_matches(queries: np.ndarray, refs: np.ndarray, scales: Sequence[float] = SCALES,
                 window: int = WINDOW) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NCC of every query with every reference, maximised over shifts and scales.

    Args:
        queries: (N, H, W) images; their central ``window`` x ``window`` part is matched.
        refs: (M, H, W) images of the same size.
    Returns:
        ``ncc`` (N, M) float64, and the scale (N, M) and shift (N, M, 2) reaching it (the
        offset of the matched window in the rescaled reference, minus the query window's).
    """
    queries = np.asarray(queries, np.float64)
    refs = np.asarray(refs, np.float64)
    n, h, w = queries.shape
    if refs.shape[1:] != (h, w) or window > min(h, w):
        raise ValueError(f"queries {queries.shape} and references {refs.shape} must share "
                         f"their image size, at least {window} px")
    top, left = (h - window) // 2, (w - window) // 2
    templates = queries[:, top:top + window, left:left + window]
    templates = templates - templates.mean(axis=(1, 2), keepdims=True)
    templates /= np.maximum(np.linalg.norm(templates, axis=(1, 2), keepdims=True), 1e-12)
    padded = np.zeros((n, h, w))
    padded[:, :window, :window] = templates
    f_templates = np.conj(fft.rfft2(padded, workers=-1))
    sh, sw = h - window + 1, w - window + 1       # valid window offsets: no circular wrap
    best = np.full((n, len(refs)), -np.inf)
    best_scale = np.zeros((n, len(refs)))
    best_shift = np.zeros((n, len(refs), 2), dtype=np.int64)
    for scale in scales:
        scaled = np.stack([_rescale(r, scale) for r in refs])
        norms = _window_norms(scaled, window)
        f_refs = fft.rfft2(scaled, workers=-1)
        for i in range(n):
            corr = fft.irfft2(f_refs * f_templates[i], s=(h, w), workers=-1)[:, :sh, :sw]
            ncc = (corr / norms).reshape(len(refs), -1)
            arg = ncc.argmax(axis=1)
            value = ncc[np.arange(len(refs)), arg]
            better = value > best[i]
            best[i, better] = value[better]
            best_scale[i, better] = scale
            best_shift[i, better] = np.stack(np.unravel_index(arg[better], (sh, sw)), 1) \
                - (top, left)
    return best, best_scale, best_shift


def find_overlap(query_root: str | Path, reference_dir: str | Path, transpose: bool = False,
                 threshold: float = THRESHOLD, scales: Sequence[float] = SCALES) -> dict:
    """Match every labelled query slice against a reference folder with patient ids.

    ``query_root`` is a coursework root (its ``train`` and ``val`` splits are matched, and
    ``test`` when present) or a folder; ``reference_dir`` a folder whose slices have patient
    ids (``acdc96``). ``transpose`` turns the references into the queries' orientation.

    Returns a JSON-ready dictionary: ``matches`` (one record per query slice: its split,
    the best reference slice, its patient, NCC, scale and shift), ``patients`` (for each
    query split, the reference patients with a slice at or above ``threshold`` for any
    query slice, not only the best one),
    ``reference_duplicates`` (:func:`duplicate_patients` of the references) and the
    settings used.
    """
    root = Path(query_root)
    if data.detect_layout(root) == "coursework":
        parts = [(s, data.load_folder(root / s, require_masks=False))
                 for s in ("train", "val", "test") if (root / s / data.IMAGE_DIR).is_dir()]
    else:
        parts = [("all", data.load_folder(root, require_masks=False))]
    refs = data.load_manifest_folder(reference_dir)
    if transpose:
        refs = refs.transposed()
    matches, patients = [], {}
    for split_name, split in parts:
        ncc, scale, shift = best_matches(split.images, refs.images, scales)
        found = set()
        for i, name in enumerate(split.names):
            j = int(np.argmax(ncc[i]))
            record = dict(query=name, split=split_name, reference=refs.names[j],
                          patient=refs.patients[j], ncc=round(float(ncc[i, j]), 4),
                          scale=float(scale[i, j]), shift=[int(v) for v in shift[i, j]])
            matches.append(record)
            found.update(refs.patients[k] for k in np.flatnonzero(ncc[i] >= threshold))
        patients[split_name] = sorted(found, key=data.natural_key)
    return dict(query=str(query_root), reference=str(reference_dir), transpose=transpose,
                threshold=threshold, scales=list(scales), window=WINDOW, patients=patients,
                reference_duplicates=duplicate_patients(refs, threshold), matches=matches)


def duplicate_patients(split: data.Split, threshold: float = THRESHOLD) -> list[list[str]]:
    """Groups of patients of one folder that share a slice (NCC at scale 1 >= ``threshold``):
    one patient stored under two ids. Its slices are matched against each other's, so this
    takes about as long as matching the coursework set."""
    ncc, _, _ = best_matches(split.images, split.images, scales=(1.0,))
    patients = np.array(split.patients)
    group = {p: {p} for p in patients}
    for i, j in zip(*np.nonzero((ncc >= threshold) & (patients[:, None] != patients[None, :]))):
        merged = group[patients[i]] | group[patients[j]]
        for p in merged:
            group[p] = merged
    found = {tuple(sorted(g, key=data.natural_key)) for g in group.values() if len(g) > 1}
    return [list(g) for g in sorted(found)]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the patients found per split."""
    p = argparse.ArgumentParser(prog="python -m cmr.overlap", description=__doc__.split("\n")[0])
    p.add_argument("query", help="coursework root (train/, val/, test/) or image folder")
    p.add_argument("reference", help="folder with image/, mask/ and patient ids (acdc96)")
    p.add_argument("--transpose", action="store_true",
                   help="transpose the reference slices first (acdc96 against cmr)")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help=f"NCC from which two slices count as one (default {THRESHOLD})")
    p.add_argument("--out", help="write the full result as JSON here")
    args = p.parse_args(argv)
    try:
        result = find_overlap(args.query, args.reference, args.transpose, args.threshold)
    except (data.CMRDataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split_name, found in result["patients"].items():
        n = sum(m["split"] == split_name for m in result["matches"])
        hits = sum(m["split"] == split_name and m["ncc"] >= args.threshold
                   for m in result["matches"])
        print(f"{split_name}: {hits} of {n} slices found in {args.reference}, "
              f"{len(found)} patients: {' '.join(found)}")
    for group in result["reference_duplicates"]:
        print(f"one patient under several ids in {args.reference}: {' '.join(group)}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
