"""Segmentation metrics: Dice coefficient and 95th-percentile Hausdorff distance.

Both are computed per image and per structure (1 RV, 2 Myo, 3 LV) and then
averaged over images - the convention of the original coursework.

Conventions for empty structures (apical/basal slices often lack the RV or
the LV, and a network may miss or invent a structure):

* Dice: both empty -> 1.0 (nothing to find, nothing found); one empty ->
  0.0.
* HD95: both empty -> 0.0; exactly one empty -> NaN (a distance to nothing is
  undefined).  Averages over images skip NaNs (``np.nanmean``), and
  :func:`evaluate_masks` reports how many were skipped.  An average over
  nothing but NaNs is NaN.  :func:`jsonable` writes an undefined value as
  JSON's ``null`` (strict JSON has no NaN).

Distances are in pixels unless a pixel ``spacing`` is given.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from scipy import ndimage

from . import CLASS_NAMES

__all__ = [
    "STRUCTURES",
    "dice_per_class",
    "hd95_per_class",
    "surface",
    "surface_distances",
    "evaluate_masks",
    "at_stack_ends",
    "stack_positions",
    "volume_metrics",
    "jsonable",
]

#: The foreground structures that are scored: label -> name.
STRUCTURES = {1: CLASS_NAMES[1], 2: CLASS_NAMES[2], 3: CLASS_NAMES[3]}



def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    if pred.ndim != 2:
        raise ValueError(f"expected one 2-D label image, got shape {pred.shape}")
    return pred, target


def dice_per_class(pred: np.ndarray, target: np.ndarray,
                   classes: Sequence[int] = (1, 2, 3)) -> dict[int, float]:
    """Dice coefficient 2|P∩T| / (|P|+|T|) of each class in one label image.

    Args:
        pred, target: integer label images of the same 2-D shape.
        classes: labels to score.

    Returns:
        ``{label: dice}``; 1.0 when the class is absent from both images,
        0.0 when it is absent from exactly one.
    """
    pred, target = _check_pair(pred, target)
    out = {}
    for c in classes:
        p, t = pred == c, target == c
        denom = int(p.sum()) + int(t.sum())
        out[int(c)] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom
    return out


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels (voxels) of a binary mask: those of the mask with a face neighbour
    outside it (4-neighbours in 2-D, 6 in 3-D; the array's border counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray,
                      spacing: float | Sequence[float] = 1.0) -> np.ndarray:
    """Distances from every boundary pixel of ``a`` to the boundary of ``b``
    and from every boundary pixel of ``b`` to the boundary of ``a``, joined.

    Both masks must be non-empty.  Uses exact Euclidean distance transforms.
    """
    sa, sb = surface(a), surface(b)
    # distance_transform_edt gives, for every non-zero pixel, the distance to
    # the nearest zero pixel: feed it the complement of the other surface.
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return np.concatenate([to_b[sa], to_a[sb]])


def hd95_per_class(pred: np.ndarray, target: np.ndarray, classes: Sequence[int] = (1, 2, 3),
                   spacing: float | Sequence[float] = 1.0) -> dict[int, float]:
    """95th-percentile symmetric Hausdorff distance of each class.

    The boundary-to-boundary distances in both directions are pooled and
    their 95th percentile taken (the ``medpy.metric.hd95`` definition).  It
    is a robust version of the Hausdorff distance (the maximum), less
    sensitive to a few stray pixels.

    Returns:
        ``{label: hd95}`` in pixels (times ``spacing``); 0.0 when the class
        is absent from both images, NaN when absent from exactly one.
    """
    pred, target = _check_pair(pred, target)
    out = {}
    for c in classes:
        p, t = pred == c, target == c
        has_p, has_t = bool(p.any()), bool(t.any())
        if not has_p and not has_t:
            out[int(c)] = 0.0
        elif has_p != has_t:
            out[int(c)] = float("nan")
        else:
            out[int(c)] = float(np.percentile(surface_distances(p, t, spacing), 95))
    return out


def jsonable(value):
    """``value`` (nested dicts, lists, numbers) with every NaN or infinite number replaced
    by ``None``, so that ``json.dumps(..., allow_nan=False)`` writes strict JSON (``null``
    for an undefined metric) that every JSON reader accepts."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _nanmean(values) -> float:
    """Mean ignoring NaNs; NaN (without a warning) if there is nothing left."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


_SLICE_NAME = re.compile(r"^(?P<stack>.+)_slice(?P<index>\d+)$")


def stack_positions(names: Sequence[str]) -> list[tuple[str, int]] | None:
    """``(stack, slice index)`` of each slice named ``<stack>_slice<NN>`` (acdc96:
    ``patientPPP_frameFF_sliceSS`` -> ``("patientPPP_frameFF", SS)``); None if there are no
    names or any does not have that form."""
    parsed = [_SLICE_NAME.match(str(n)) for n in names]
    if not parsed or not all(parsed):
        return None
    return [(m["stack"], int(m["index"])) for m in parsed]


def at_stack_ends(names: Sequence[str], depth: int = 2) -> np.ndarray | None:
    """For slices named ``<stack>_slice<NN>`` (``stack_positions``), whether each is among the
    first or last ``depth`` slices of its stack *in this set* (the basal and apical ends of a
    short-axis stack, where structures are small or absent). None if any name does not have
    that form. Example: slices 1..9 of one stack -> 1, 2, 8, 9 are at the ends.
    """
    positions = stack_positions(names)
    if positions is None:
        return None
    stacks: dict[str, list[int]] = {}
    for stack, index in positions:
        stacks.setdefault(stack, []).append(index)
    ends = {key: set(sorted(v)[:depth] + sorted(v)[-depth:]) for key, v in stacks.items()}
    return np.array([index in ends[stack] for stack, index in positions], dtype=bool)


def evaluate_masks(preds: np.ndarray, targets: np.ndarray,
                   names: Sequence[str] | None = None,
                   spacing: float | Sequence[float] = 1.0) -> dict:
    """Score a set of predicted label images against the ground truth.

    Args:
        preds, targets: integer label arrays of shape (N, H, W).
        names: one name per image (default ``"0"``, ``"1"``, ...).
        spacing: pixel size for HD95 (default 1: distances in pixels).

    Returns:
        A JSON-friendly dictionary::

            {"dice": {"RV": .., "Myo": .., "LV": .., "mean": ..},
             "hd95": {"RV": .., "Myo": .., "LV": .., "mean": ..},
             "hd95_undefined": {"RV": k, "Myo": k, "LV": k},
             "n_images": N,
             "all_present": {"n_images": k, "dice": {"RV": .., ..., "mean": ..}},
             "presence": {"RV": {"absent": a, "invented": i, "missed": m}, ...},
             "per_image": [{"name": .., "dice": {"RV": ..,...}, "hd95": {...}}, ...]}

        Per-class values are averaged over images (per image first, then the
        mean - the original convention); "mean" is the mean of the RV, Myo
        and LV values.  HD95 averages skip NaNs (structure present in only
        one of prediction and target); ``hd95_undefined`` counts them.
        ``all_present`` scores only the images whose ground truth holds every structure
        (apical and basal slices, where a structure is missing or tiny, left out).
        ``presence`` counts, per structure, the images whose ground truth lacks it
        (``absent``), those of them where the prediction has it anyway (``invented``: Dice 0
        on that image) and the images where the prediction lacks a structure that the
        ground truth has (``missed``: Dice 0 too); where the names give each slice's place
        in its stack (``at_stack_ends``), also how many of the ``absent`` and ``invented``
        are among the first or last two slices of their stack (``absent_at_ends``,
        ``invented_at_ends``).
    """
    preds, targets = np.asarray(preds), np.asarray(targets)
    if preds.shape != targets.shape or preds.ndim != 3:
        raise ValueError(f"preds {preds.shape} and targets {targets.shape} must both be (N, H, W)")
    n = preds.shape[0]
    if names is None:
        names = [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} images")
    labels = list(STRUCTURES)
    per_image = []
    dice = np.empty((n, len(labels)))
    hd = np.empty((n, len(labels)))
    for i in range(n):
        d = dice_per_class(preds[i], targets[i], labels)
        h = hd95_per_class(preds[i], targets[i], labels, spacing)
        dice[i] = [d[c] for c in labels]
        hd[i] = [h[c] for c in labels]
        per_image.append({
            "name": str(names[i]),
            "dice": {STRUCTURES[c]: d[c] for c in labels},
            "hd95": {STRUCTURES[c]: h[c] for c in labels},
        })
    dice_mean = {STRUCTURES[c]: float(dice[:, k].mean()) if n else float("nan")
                 for k, c in enumerate(labels)}
    hd_mean = {STRUCTURES[c]: _nanmean(hd[:, k]) for k, c in enumerate(labels)}
    dice_mean["mean"] = float(np.mean([dice_mean[STRUCTURES[c]] for c in labels]))
    hd_mean["mean"] = _nanmean([hd_mean[STRUCTURES[c]] for c in labels])
    # The subset of slices whose ground truth has every structure (mid-ventricular slices, like
    # all of the coursework set), so that sets with apical/basal slices compare like for like.
    in_target = np.stack([(targets == c).any(axis=(1, 2)) for c in labels], axis=1)
    in_pred = np.stack([(preds == c).any(axis=(1, 2)) for c in labels], axis=1)
    present = in_target.all(axis=1)
    sub = {STRUCTURES[c]: float(dice[present, k].mean()) if present.any() else float("nan")
           for k, c in enumerate(labels)}
    sub["mean"] = float(np.mean([sub[STRUCTURES[c]] for c in labels]))
    ends = at_stack_ends(names)
    presence = {}
    for k, c in enumerate(labels):
        absent, invented = ~in_target[:, k], ~in_target[:, k] & in_pred[:, k]
        presence[STRUCTURES[c]] = {"absent": int(absent.sum()), "invented": int(invented.sum()),
                                   "missed": int((in_target[:, k] & ~in_pred[:, k]).sum())}
        if ends is not None:
            presence[STRUCTURES[c]].update(absent_at_ends=int((absent & ends).sum()),
                                           invented_at_ends=int((invented & ends).sum()))
    return {
        "dice": dice_mean,
        "hd95": hd_mean,
        "hd95_undefined": {STRUCTURES[c]: int(np.isnan(hd[:, k]).sum())
                           for k, c in enumerate(labels)},
        "n_images": n,
        "all_present": {"n_images": int(present.sum()), "dice": sub},
        "presence": presence,
        "per_image": per_image,
    }


_VOLUME_NAME = re.compile(r"^(?P<patient>.+)_frame(?P<frame>\d+)$")


def volume_metrics(preds: np.ndarray, targets: np.ndarray, names: Sequence[str],
                   slice_spacing: float | None = None) -> dict | None:
    """ACDC's convention: Dice (and HD95) per structure over each 3-D volume, then the mean
    over volumes, and the end-diastolic (ED) and end-systolic (ES) volumes apart.

    The slices are grouped into volumes by their names, ``<volume>_slice<NN>``
    (``stack_positions``; acdc96: ``patientPPP_frameFF_sliceSS``) and stacked in slice order.
    A volume's Dice of a structure is 2|P∩T| / (|P|+|T|) over all its voxels (1.0 when both
    are empty). Of a patient's two frames, the one whose ground truth holds more LV voxels is
    ED, the other ES (the LV is largest at end-diastole); with another number of frames the
    phase is unknown. HD95 is computed in 3-D only when ``slice_spacing`` (the distance
    between slices, in pixels) is given: the slices' thickness is not in the PNG data.

    Returns None when a name does not have that form. Otherwise a JSON-friendly dictionary::

        {"n_volumes": V, "complete": bool,
         "dice": {"RV": .., "Myo": .., "LV": .., "mean": ..},
         "hd95": {...} (with slice_spacing only),
         "phases": {"ED": {"n_volumes": k, "dice": {...}}, "ES": {...}},
         "per_volume": [{"volume": .., "patient": .., "frame": .., "phase": "ED"|"ES"|None,
                         "n_slices": k, "dice": {...}, "hd95": {...}}, ...]}

    ``complete`` is False when some volume's slice numbers have gaps (a set that keeps only
    labelled slices, like acdc96): then its volumes miss their end slices and the figures
    are not ACDC's (score whole volumes, e.g. acdc96vol).
    """
    positions = stack_positions(names)
    if positions is None:
        return None
    preds, targets = np.asarray(preds), np.asarray(targets)
    stacks: dict[str, list[tuple[int, int]]] = {}
    for i, (stack, index) in enumerate(positions):
        stacks.setdefault(stack, []).append((index, i))
    labels = list(STRUCTURES)
    per_volume, complete = [], True
    for stack, members in sorted(stacks.items()):
        members.sort()
        indices = [index for index, _ in members]
        complete &= indices == list(range(indices[0], indices[0] + len(indices)))
        rows = [i for _, i in members]
        p, t = preds[rows], targets[rows]
        dice, hd = {}, {}
        for c in labels:
            pc, tc = p == c, t == c
            total = int(pc.sum()) + int(tc.sum())
            dice[STRUCTURES[c]] = 2.0 * int((pc & tc).sum()) / total if total else 1.0
            if slice_spacing is not None:
                if not pc.any() and not tc.any():
                    hd[STRUCTURES[c]] = 0.0
                elif pc.any() != tc.any():
                    hd[STRUCTURES[c]] = float("nan")
                else:
                    hd[STRUCTURES[c]] = float(np.percentile(
                        surface_distances(pc, tc, (slice_spacing, 1.0, 1.0)), 95))
        m = _VOLUME_NAME.match(stack)
        per_volume.append({"volume": stack, "patient": m["patient"] if m else stack,
                           "frame": m["frame"] if m else None, "phase": None,
                           "n_slices": len(rows), "dice": dice,
                           "lv_voxels": int((t == 3).sum()), "hd95": hd})
    by_patient: dict[str, list[dict]] = {}
    for v in per_volume:
        if v["frame"] is not None:
            by_patient.setdefault(v["patient"], []).append(v)
    for frames in by_patient.values():
        if len(frames) == 2:
            ed = max(frames, key=lambda v: v["lv_voxels"])
            for v in frames:
                v["phase"] = "ED" if v is ed else "ES"

    def means(volumes, key):
        out = {STRUCTURES[c]: _nanmean([v[key][STRUCTURES[c]] for v in volumes])
               for c in labels}
        out["mean"] = _nanmean([out[STRUCTURES[c]] for c in labels])
        return out
    result = {"n_volumes": len(per_volume), "complete": bool(complete),
              "dice": means(per_volume, "dice"), "phases": {}}
    if slice_spacing is not None:
        result["hd95"] = means(per_volume, "hd95")
        result["slice_spacing"] = slice_spacing
    for phase in ("ED", "ES"):
        chosen = [v for v in per_volume if v["phase"] == phase]
        if chosen:
            result["phases"][phase] = {"n_volumes": len(chosen), "dice": means(chosen, "dice")}
    for v in per_volume:
        del v["lv_voxels"]
        if slice_spacing is None:
            del v["hd95"]
    result["per_volume"] = per_volume
    return result
