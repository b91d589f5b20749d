"""Loading cardiac MR slices stored as PNG files, and splitting them.

Two on-disk layouts are understood:

*coursework*::

    ROOT/train/image/cmr1.png   ROOT/train/mask/cmr1_mask.png
    ROOT/val/image/...          ROOT/val/mask/...
    ROOT/test/image/...         (masks optional)

*flat* (e.g. made by ``python -m cmr.prepare acdc``)::

    DIR/image/patient001_frame01_slice01.png
    DIR/mask/patient001_frame01_slice01_mask.png
    DIR/manifest.json   (optional: one record per slice with its patient id)

Images are 8-bit grayscale PNGs; they are returned as float32 in [0, 1].
Masks are 8-bit PNGs holding the label values 0..3 directly
(0 background, 1 RV, 2 Myo, 3 LV) and are returned as uint8.

Every problem with the data raises :class:`CMRDataError`, whose message names
the offending file or folder, so that a user can fix their copy of the data.
A conversion made without asking (a colour PNG read as grayscale) is reported
once per folder as a :class:`CMRDataWarning`.

Typical use::

    from cmr import data
    train, val = data.load_dataset("/path/to/cmr")       # any layout
    for idx in data.iterate_minibatches(train, 16, rng):
        x, y = train.images[idx], train.masks[idx]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "CMRDataError",
    "CMRDataWarning",
    "Split",
    "NUM_CLASSES",
    "natural_key",
    "load_png",
    "load_images",
    "load_folder",
    "load_coursework",
    "load_manifest_folder",
    "detect_layout",
    "load_dataset",
    "load_eval_split",
    "split_by_patient",
    "coursework_rules",
    "split_by_slice",
    "iterate_minibatches",
]

#: Number of label values (background, RV, Myo, LV).
NUM_CLASSES = 4
IMAGE_DIR = "image"
MASK_DIR = "mask"
MASK_SUFFIX = "_mask"
MANIFEST = "manifest.json"
#: Fractions of the original work: 50 % train, 10 % validation, 40 % test.
DEFAULT_FRACTIONS = (0.5, 0.1, 0.4)

_PATIENT_RE = re.compile(r"(patient\d+)", re.IGNORECASE)


class CMRDataError(ValueError):
    """A data file or folder is missing, unreadable or inconsistent.

    The message always names the offending file or folder.
    """


# ---------------------------------------------------------------------------
# The container
# ---------------------------------------------------------------------------


@dataclass
class Split:
    """A set of 2-D slices held in memory.

    Attributes:
        names: one name per slice (the PNG file name without ``.png``).
        images: float32 array of shape (N, H, W) with values in [0, 1].
        masks: uint8 array of shape (N, H, W) with labels 0..3, or ``None``
            when the slices are unlabelled (e.g. the coursework test split).
        patients: patient id of each slice (e.g. ``"patient003"``), or
            ``None`` when unknown.  Used to split without patient leakage.
    """

    names: list[str]
    images: np.ndarray
    masks: np.ndarray | None = None
    patients: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.images.ndim != 3 or self.images.shape[0] != n:
            raise ValueError(
                f"images must have shape (N, H, W) with N={n}, got {self.images.shape}")
        if self.masks is not None and self.masks.shape != self.images.shape:
            raise ValueError(
                f"masks shape {self.masks.shape} differs from images shape {self.images.shape}")
        if self.patients is not None and len(self.patients) != n:
            raise ValueError(f"{len(self.patients)} patient ids for {n} slices")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_masks(self) -> bool:
        """True when every slice carries a label mask."""
        return self.masks is not None

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Split":
        """Return a new Split holding the slices at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Split(
            names=[self.names[i] for i in idx],
            images=self.images[idx],
            masks=None if self.masks is None else self.masks[idx],
            patients=None if self.patients is None else [self.patients[i] for i in idx],
        )

    def transposed(self) -> "Split":
        """Return a copy with every slice transposed (rows <-> columns).

        The coursework set shows the RV above the LV, the ``acdc96`` set shows
        it left of the LV: the two differ by a transpose.  Use this to bring
        one set into the other's orientation.
        """
        return Split(
            names=list(self.names),
            images=np.ascontiguousarray(self.images.transpose(0, 2, 1)),
            masks=None if self.masks is None
            else np.ascontiguousarray(self.masks.transpose(0, 2, 1)),
            patients=None if self.patients is None else list(self.patients),
        )

    def class_counts(self) -> np.ndarray:
        """Number of pixels of each label 0..3 over the whole split."""
        if self.masks is None:
            raise ValueError("this split has no masks")
        return np.bincount(self.masks.reshape(-1), minlength=NUM_CLASSES)[:NUM_CLASSES]

    @staticmethod
    def concatenate(splits: Sequence["Split"]) -> "Split":
        """Join several splits (all with or all without masks/patients)."""
        if not splits:
            raise ValueError("nothing to concatenate")
        with_masks = all(s.masks is not None for s in splits)
        with_patients = all(s.patients is not None for s in splits)
        return Split(
            names=[n for s in splits for n in s.names],
            images=np.concatenate([s.images for s in splits]),
            masks=np.concatenate([s.masks for s in splits]) if with_masks else None,
            patients=[p for s in splits for p in s.patients] if with_patients else None,
        )


# ---------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically (cmr2 before cmr10)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


class CMRDataWarning(UserWarning):
    """The data was usable but not as stored (e.g. colour images converted to grayscale)."""


#: How many bad values, files, ... a message lists before it gives only the count.
SHOWN = 5


def listed(values: Sequence, shown: int = SHOWN) -> str:
    """``values`` for a one-line message: all of them if few, else the first few and the
    count (``1, 2, 3, 4, 5 and 247 more``)."""
    values = [str(v) for v in values]
    head = ", ".join(values[:shown])
    return head if len(values) <= shown else f"{head} and {len(values) - shown} more"


def load_png(path: str | Path, kind: str = "image") -> np.ndarray:
    """Read one 8-bit grayscale PNG and return it as a 2-D uint8 array.

    Args:
        path: the PNG file.
        kind: ``"image"`` or ``"mask"``.  Images in RGB/RGBA/palette form are
            converted to grayscale; masks must be 8-bit grayscale ("L") or
            palette ("P", the palette index being the label) and may only hold
            the values 0..3.

    Raises:
        CMRDataError: the file is missing, unreadable, not 8-bit, or (mask)
            holds values outside 0..3.  The message names the file.

    Warns:
        CMRDataWarning: a colour image was converted to grayscale.
    """
    arr, colour = _read_png(path, kind)
    if colour:
        _warn_colour([(path, colour)], 1)
    return arr


def _warn_colour(converted: Sequence[tuple[Path, str]], total: int) -> None:
    """One warning for the images (``(path, mode)``) read as grayscale from colour."""
    import warnings
    (path, mode), n = converted[0], len(converted)
    which = (f"image {path} is" if total == 1 else
             f"{n} of {total} images (the first: {path}) are")
    warnings.warn(CMRDataWarning(f"{which} {mode} rather than grayscale: converted to "
                                 "grayscale (luminance)"), stacklevel=3)


def _read_png(path: str | Path, kind: str) -> tuple[np.ndarray, str | None]:
    """``load_png``'s array and the colour mode it was converted from (None if none)."""
    if kind not in ("image", "mask"):
        raise ValueError(f"kind must be 'image' or 'mask', got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise CMRDataError(f"{kind} file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = colour = im.mode
            if kind == "image" and mode in ("RGB", "RGBA", "LA", "P"):
                im = im.convert("L")
                mode = "L"
            else:
                colour = None
            if mode not in ("L", "P"):
                raise CMRDataError(
                    f"{kind} file {path} has pixel mode {mode!r}; expected an 8-bit grayscale PNG")
            arr = np.array(im, dtype=np.uint8)
    except CMRDataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CMRDataError(f"cannot read {kind} file {path}: {exc}") from None
    if arr.ndim != 2:
        raise CMRDataError(f"{kind} file {path} is not a 2-D grayscale image (shape {arr.shape})")
    if kind == "mask":
        bad = np.unique(arr[arr >= NUM_CLASSES])
        if bad.size:
            raise CMRDataError(
                f"mask file {path} holds values [{listed(bad.tolist())}] outside the labels "
                "0..3 (0 background, 1 RV, 2 Myo, 3 LV)")
    return arr, colour


def load_images(paths: Sequence[Path]) -> np.ndarray:
    """The images ``paths`` as one uint8 array ``(N, H, W)``; they must have one size.
    Colour PNGs are converted to grayscale and reported in one ``CMRDataWarning``."""
    images, colour = [], []
    for path in paths:
        img, mode = _read_png(path, "image")
        if images and img.shape != images[0].shape:
            raise CMRDataError(
                f"image {path} is {img.shape[0]}x{img.shape[1]} but {paths[0]} is "
                f"{images[0].shape[0]}x{images[0].shape[1]}; all images must have the same size")
        images.append(img)
        if mode:
            colour.append((path, mode))
    if colour:
        _warn_colour(colour, len(images))
    return np.stack(images)


# ---------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------


def _png_names(folder: Path) -> dict[str, Path]:
    """Map name-without-.png -> path for every visible PNG file in ``folder``."""
    return {p.name[:-4]: p for p in folder.iterdir()
            if p.is_file() and p.name.lower().endswith(".png") and not p.name.startswith(".")}


def _patients_from_names(names: Sequence[str]) -> list[str] | None:
    """Patient ids parsed from names like ``patient003_frame01_slice02``.

    Returns ``None`` unless every name holds a ``patientNNN`` token.
    """
    found = [_PATIENT_RE.search(n) for n in names]
    if not names or any(m is None for m in found):
        return None
    return [m.group(1).lower() for m in found]


def load_folder(directory: str | Path, require_masks: bool = True) -> Split:
    """Load ``directory/image/*.png`` and ``directory/mask/NAME_mask.png``.

    Slices are ordered by natural sort of their names (cmr2 before cmr10).

    Args:
        directory: folder holding ``image/`` and (usually) ``mask/``.
        require_masks: if True every image needs its mask.  If False, masks
            are loaded when ``mask/`` exists and is not empty (it must then
            match the images one to one), otherwise ``Split.masks`` is None.

    Raises:
        CMRDataError: missing folder, no PNG images, an image without its
            mask, a mask without its image, image/mask size mismatch, or
            images of different sizes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CMRDataError(f"data folder not found: {directory}")
    image_dir = directory / IMAGE_DIR
    mask_dir = directory / MASK_DIR
    if not image_dir.is_dir():
        raise CMRDataError(f"image folder not found: {image_dir}")
    images_by_name = _png_names(image_dir)
    if not images_by_name:
        raise CMRDataError(f"no .png images in {image_dir}")
    names = sorted(images_by_name, key=natural_key)

    masks_by_name: dict[str, Path] = {}
    if mask_dir.is_dir():
        for mname, mpath in _png_names(mask_dir).items():
            if not mname.endswith(MASK_SUFFIX):
                raise CMRDataError(
                    f"mask file {mpath} is not named NAME{MASK_SUFFIX}.png")
            masks_by_name[mname[: -len(MASK_SUFFIX)]] = mpath
    elif require_masks:
        raise CMRDataError(f"mask folder not found: {mask_dir}")
    use_masks = require_masks or bool(masks_by_name)

    if use_masks:
        for name in names:
            if name not in masks_by_name:
                raise CMRDataError(
                    f"image {images_by_name[name]} has no mask "
                    f"(expected {mask_dir / (name + MASK_SUFFIX + '.png')})")
        orphans = sorted(set(masks_by_name) - set(images_by_name), key=natural_key)
        if orphans:
            raise CMRDataError(
                f"mask {masks_by_name[orphans[0]]} has no image "
                f"(expected {image_dir / (orphans[0] + '.png')})")

    images = load_images([images_by_name[name] for name in names])
    masks = []
    if use_masks:
        for name, img in zip(names, images):
            mpath = masks_by_name[name]
            msk = load_png(mpath, "mask")
            if msk.shape != img.shape:
                raise CMRDataError(
                    f"mask {mpath} is {msk.shape[0]}x{msk.shape[1]} but its image "
                    f"{images_by_name[name]} is {img.shape[0]}x{img.shape[1]}")
            masks.append(msk)

    return Split(
        names=names,
        images=images.astype(np.float32) / np.float32(255.0),
        masks=np.stack(masks) if use_masks else None,
        patients=_patients_from_names(names),
    )


def load_coursework(root: str | Path, split: str) -> Split:
    """Load ``root/<split>`` of the coursework layout.

    ``split`` is ``"train"``, ``"val"`` or ``"test"``; masks are required
    for train and val and optional for test (``masks`` is then None).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    return load_folder(Path(root) / split, require_masks=(split != "test"))


def load_manifest_folder(directory: str | Path) -> Split:
    """Load a flat folder and attach patient ids.

    Patient ids come from ``directory/manifest.json`` (a list of records with
    at least ``name`` and ``patient``); without a manifest they are parsed from
    ``patientNNN`` in the file names.

    Raises:
        CMRDataError: as :func:`load_folder`, plus an unreadable manifest, a
            slice missing from it, or (without manifest) names lacking a
            ``patientNNN`` token.
    """
    directory = Path(directory)
    split = load_folder(directory, require_masks=True)
    manifest = directory / MANIFEST
    if manifest.is_file():
        try:
            records = json.loads(manifest.read_text())
            patient_of = {str(r["name"]): str(r["patient"]) for r in records}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise CMRDataError(
                f"cannot read {manifest}: expected a JSON list of records with "
                f"'name' and 'patient' ({exc!r})") from None
        missing = [n for n in split.names if n not in patient_of]
        if missing:
            raise CMRDataError(f"slice {missing[0]!r} of {directory / IMAGE_DIR} "
                               f"is not listed in {manifest}")
        split.patients = [patient_of[n] for n in split.names]
    elif split.patients is None:
        bad = next(n for n in split.names if not _PATIENT_RE.search(n))
        raise CMRDataError(
            f"no {manifest} and cannot tell the patient of {directory / IMAGE_DIR / (bad + '.png')} "
            "from its name (expected 'patientNNN' in it)")
    return split


# ---------------------------------------------------------------------------
# Layout detection and entry points
# ---------------------------------------------------------------------------


def detect_layout(directory: str | Path) -> str:
    """Return ``"coursework"``, ``"flat"`` or ``"folder"`` for a data folder.

    * coursework: ``train/image`` and ``val/image`` sub-folders;
    * flat: ``image/`` and ``manifest.json``;
    * folder: ``image/`` and ``mask/`` without manifest.

    Raises:
        CMRDataError: the folder is missing or matches none of these.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CMRDataError(f"data folder not found: {directory}")
    if (directory / "train" / IMAGE_DIR).is_dir() and (directory / "val" / IMAGE_DIR).is_dir():
        return "coursework"
    if (directory / IMAGE_DIR).is_dir() and (directory / MANIFEST).is_file():
        return "flat"
    if (directory / IMAGE_DIR).is_dir() and (directory / MASK_DIR).is_dir():
        return "folder"
    raise CMRDataError(
        f"{directory} is not a recognised data folder: expected train/ and val/ "
        "sub-folders (coursework layout) or image/ and mask/ sub-folders (flat layout)")


def load_dataset(directory: str | Path, seed: int = 0,
                 fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> tuple[Split, Split]:
    """Load training and validation data from any supported layout.

    * coursework: its ``train`` and ``val`` folders as they are;
    * flat (with manifest): split BY PATIENT into train/val/test with
      ``fractions`` (default 50/10/40), a fixed ``seed`` and :func:`coursework_rules`
      (no patient of ``cmr/train`` or ``cmr/val`` in the test part, none of ``cmr/val``
      in the training part); returns train, val;
    * folder (image/ + mask/, no manifest): split by patient if every name
      holds ``patientNNN``, otherwise by slice, with the same fractions.

    The test part of a split is left out here; it is reproducible with
    :func:`split_by_patient` / :func:`split_by_slice` and the same seed.
    """
    layout = detect_layout(directory)
    if layout == "coursework":
        return load_coursework(directory, "train"), load_coursework(directory, "val")
    if layout == "flat":
        split = load_manifest_folder(directory)
    else:
        split = load_folder(directory, require_masks=True)
    if split.patients is not None:
        train, val, _ = split_by_patient(split, fractions, seed, **coursework_rules())
    else:
        train, val, _ = split_by_slice(split, fractions, seed)
    return train, val


def load_eval_split(directory: str | Path) -> Split:
    """Load labelled data for evaluation.

    If ``directory`` holds ``image/`` and ``mask/`` every slice is used;
    if it is a coursework root its ``val`` split is used.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CMRDataError(f"data folder not found: {directory}")
    if (directory / IMAGE_DIR).is_dir():
        if (directory / MANIFEST).is_file():
            return load_manifest_folder(directory)
        return load_folder(directory, require_masks=True)
    if (directory / "val" / IMAGE_DIR).is_dir():
        return load_coursework(directory, "val")
    raise CMRDataError(
        f"{directory} has neither image/ and mask/ sub-folders nor a val/ split to evaluate on")


# ---------------------------------------------------------------------------
# Splitting and batching
# ---------------------------------------------------------------------------


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split the integer ``n`` into parts proportional to ``fractions``.

    Uses largest remainders, then makes sure every part with a positive
    fraction gets at least one item when ``n`` allows it.
    """
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 1 or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    exact = f * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((f > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def split_by_slice(split: Split, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   seed: int = 0) -> tuple[Split, ...]:
    """Randomly split slices into ``len(fractions)`` parts (fixed ``seed``)."""
    order = np.random.default_rng(seed).permutation(len(split))
    counts = _allocate(len(split), fractions)
    bounds = np.cumsum([0] + counts)
    return tuple(split.subset(np.sort(order[a:b])) for a, b in zip(bounds[:-1], bounds[1:]))


def split_by_patient(split: Split, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     seed: int = 0, fixed: dict[str, int] | None = None,
                     same: Sequence[Sequence[str]] = ()) -> tuple[Split, ...]:
    """Split by patient so that no patient appears in two parts.

    Patients (not slices) are shuffled with ``seed`` and shared out in
    proportion to ``fractions`` (default 50/10/40 train/val/test).

    ``fixed`` sends a patient to a given part (0 train, 1 val, 2 test) whatever the seed;
    the parts' sizes still follow ``fractions`` as far as the fixed patients allow.
    ``same`` lists groups of patient ids that are one patient (identical images); a group
    goes to one part, and only its first member's slices are kept (the others are copies).
    Absent patients in either are ignored. :func:`coursework_rules`
    gives both for ACDC data.

    Raises:
        ValueError: the split has no patient ids, or one group is fixed to two parts.
    """
    if split.patients is None:
        raise ValueError("split_by_patient needs patient ids (Split.patients is None)")
    fixed = fixed or {}
    present = sorted(set(split.patients), key=natural_key)
    unit_of = {p: p for p in present}             # each patient's group: its first member
    for group in same:
        members = sorted((p for p in group if p in unit_of), key=natural_key)
        for p in members:
            unit_of[p] = members[0]
    units = sorted(set(unit_of.values()), key=natural_key)
    unit_part: dict[str, int] = {}
    for p in present:
        if p in fixed:
            u = unit_of[p]
            if unit_part.setdefault(u, fixed[p]) != fixed[p]:
                raise ValueError(f"patients {u} and {p} are one patient fixed to two parts")
    counts = _allocate(len(units), fractions)
    need = [max(c - sum(v == k for v in unit_part.values()), 0) for k, c in enumerate(counts)]
    free = [u for u in units if u not in unit_part]
    if free:
        weights = need if sum(need) else list(fractions)
        share = _allocate(len(free), np.asarray(weights, float) / sum(weights))
        order = np.random.default_rng(seed).permutation(len(free))
        bounds = np.cumsum([0] + share)
        for part, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            for i in order[a:b]:
                unit_part[free[i]] = part
    slice_part = np.array([unit_part[unit_of[p]] if unit_of[p] == p else -1
                           for p in split.patients])
    return tuple(split.subset(np.flatnonzero(slice_part == k)) for k in range(len(fractions)))


#: ``python -m cmr.overlap`` run on the coursework set against acdc96 (see that module).
OVERLAP_FILE = Path(__file__).with_name("acdc_overlap.json")


def coursework_rules() -> dict:
    """``fixed`` and ``same`` (a dictionary of the two keyword arguments) for
    :func:`split_by_patient` on ACDC patients: ``split_by_patient(s, **coursework_rules())``.

    The coursework set (``cmr/``) holds two slices (ED and ES) of many ACDC patients, and
    ``acdc96`` holds every slice of 70 of them, so an ACDC patient may be in both. Its rules:
    a patient with slices in ``cmr/train`` goes to the training part (it is trained on
    anyway, so it must never be a held-out test patient), a patient of ``cmr/val`` to the
    validation part (a model trained with acdc96 and scored on ``cmr/val`` must not have
    trained on it), and patients whose images are identical (in ACDC, patient074 and
    patient076) count as one. The lists come from ``acdc_overlap.json`` beside this module,
    the output of ``python -m cmr.overlap`` (see ``docs/unet.md``).
    """
    found = json.loads(OVERLAP_FILE.read_text())
    fixed = {p: part for part, key in enumerate(("train", "val"))
             for p in found["patients"][key]}
    return dict(fixed=fixed, same=[list(g) for g in found["reference_duplicates"]])


def iterate_minibatches(split: Split | int, batch_size: int,
                        rng: np.random.Generator | None = None,
                        shuffle: bool = True) -> Iterator[np.ndarray]:
    """Yield index arrays covering ``split`` once, ``batch_size`` at a time.

    Args:
        split: a :class:`Split` (or anything with ``len``) or a number of items.
        batch_size: items per batch; the last batch may be smaller.
        rng: generator used to shuffle (required when ``shuffle`` is True).
        shuffle: visit the items in random order.
    """
    n = split if isinstance(split, (int, np.integer)) else len(split)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if shuffle:
        if rng is None:
            raise ValueError("iterate_minibatches(shuffle=True) needs an rng")
        order = rng.permutation(n)
    else:
        order = np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]
