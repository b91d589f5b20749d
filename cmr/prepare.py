"""Convert the official ACDC release into the flat 96x96 PNG layout.

Usage::

    python -m cmr.prepare acdc SRC OUT [--seed 0]

``SRC`` is the folder holding ``patient001/``, ``patient002/``, ... of the
ACDC release (e.g. ``.../ACDC/database/training``); each patient folder has
``Info.cfg`` (with ``ED: 1`` and ``ES: 12`` lines naming the end-diastolic
and end-systolic frames), ``patientXXX_frameYY.nii.gz`` volumes and their
``patientXXX_frameYY_gt.nii.gz`` label volumes (0 background, 1 RV, 2 Myo,
3 LV - already the project's convention).

The recipe (the one that produced the coursework set and ``acdc96``):

1. take the ED and ES frames only, and in them every slice holding any label;
2. downscale in-plane by 0.85 (bilinear for the image, nearest for labels);
3. crop 96x96 around the centroid of the slice's labels, shifted by a random
   offset (sd 5 px, from ``--seed``); pad with zeros where the crop leaves
   the slice;
4. clip intensities to the crop's 1st..99th percentile and scale to 0..255.

Output (``OUT``)::

    image/patientXXX_frameYY_sliceSS.png       (SS counts from 01)
    mask/patientXXX_frameYY_sliceSS_mask.png
    manifest.json   [{"name", "patient", "frame", "slice", "counts"}, ...]

Orientation: a NIfTI slice ``volume[:, :, z]`` has the scanner x axis first.
By default it is transposed (``--orientation transpose``) so that rows are
image y - the orientation of ``acdc96``, where the RV lies left of the LV.
``--orientation raw`` keeps the array as stored (the coursework ``cmr`` set
shows the RV above the LV, i.e. the transpose of ``acdc96``).  The summary
reports where the RV ended up so that the choice can be checked.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from .data import CMRDataError, natural_key

__all__ = ["parse_info", "find_patients", "convert_slice", "convert_acdc", "main"]

CROP = 96
SCALE = 0.85
OFFSET_SD = 5.0


def parse_info(path: Path) -> dict[str, str]:
    """Read ``Info.cfg`` (``KEY: value`` lines) into a dictionary.

    Raises:
        CMRDataError: the file is missing or lacks ``ED``/``ES``.
    """
    if not path.is_file():
        raise CMRDataError(f"missing {path}")
    info = {}
    for line in path.read_text(errors="replace").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if not re.fullmatch(r"\d+", info.get(key, "")):
            raise CMRDataError(f"{path} has no valid '{key}: <frame number>' line")
    return info


def find_patients(src: Path) -> list[Path]:
    """The ``patientXXX`` folders directly inside ``src``, naturally sorted."""
    if not src.is_dir():
        raise CMRDataError(f"ACDC folder not found: {src}")
    patients = sorted((p for p in src.iterdir() if p.is_dir() and re.fullmatch(r"patient\d+", p.name)),
                      key=lambda p: natural_key(p.name))
    if not patients:
        hint = ""
        for sub in ("training", "testing", "database"):
            if (src / sub).is_dir():
                hint = f" (did you mean {src / sub}?)"
                break
        raise CMRDataError(f"no patientXXX folders in {src}{hint}")
    return patients


def _load_nifti(path: Path) -> np.ndarray:
    import nibabel as nib  # imported here so the rest of cmr works without it

    if not path.is_file():
        raise CMRDataError(f"missing {path}")
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises many kinds of errors
        raise CMRDataError(f"cannot read NIfTI file {path}: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CMRDataError(f"{path} holds a {data.ndim}-D array; expected a 3-D volume")
    return data


def convert_slice(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  crop: int = CROP, scale: float = SCALE,
                  offset_sd: float = OFFSET_SD) -> tuple[np.ndarray, np.ndarray]:
    """Apply the recipe to one 2-D slice that holds some label.

    Returns:
        ``(image, mask)``, both uint8 of shape (crop, crop).
    """
    img = ndimage.zoom(image.astype(np.float64), scale, order=1)
    lab = ndimage.zoom(labels.astype(np.uint8), scale, order=0)
    ys, xs = np.nonzero(lab)
    if ys.size == 0:  # the labels vanished in the downscaling: use the original ones
        ys, xs = np.nonzero(labels)
        ys, xs = ys * scale, xs * scale
    centre = np.array([ys.mean(), xs.mean()]) + rng.normal(0.0, offset_sd, size=2)
    top, left = np.round(centre - crop / 2).astype(int)
    # pad generously so that any crop position is inside the padded slice
    pad = crop
    img = np.pad(img, pad, mode="constant", constant_values=0)
    lab = np.pad(lab, pad, mode="constant", constant_values=0)
    top = int(np.clip(top + pad, 0, img.shape[0] - crop))
    left = int(np.clip(left + pad, 0, img.shape[1] - crop))
    img = img[top:top + crop, left:left + crop]
    lab = lab[top:top + crop, left:left + crop]
    lo, hi = np.percentile(img, [1.0, 99.0])
    if hi > lo:
        img = np.clip((img - lo) / (hi - lo), 0.0, 1.0) * 255.0
    else:
        img = np.zeros_like(img)
    return np.round(img).astype(np.uint8), lab.astype(np.uint8)


def convert_acdc(src: str | Path, out: str | Path, seed: int = 0, orientation: str = "transpose",
                 overwrite: bool = False, log=print) -> list[dict]:
    """Convert an ACDC release folder into the flat layout in ``out``.

    Returns the manifest (list of records).  See the module docstring.

    Raises:
        CMRDataError: missing ``src``, no patients, missing ``Info.cfg``,
            frame or ``_gt`` file, unreadable volume, image and label
            volumes of different shapes, labels outside 0..3, or an
            ``out`` that already holds data (unless ``overwrite``).
    """
    src, out = Path(src), Path(out)
    if orientation not in ("transpose", "raw"):
        raise ValueError(f"orientation must be 'transpose' or 'raw', got {orientation!r}")
    patients = find_patients(src)
    image_dir, mask_dir = out / "image", out / "mask"
    has_data = (out / "manifest.json").exists() or (image_dir.is_dir() and any(image_dir.iterdir()))
    if has_data and not overwrite:
        raise CMRDataError(f"{out} already holds converted data (use --overwrite to replace it)")

    # Check every input before writing anything.
    jobs = []
    for pdir in patients:
        info = parse_info(pdir / "Info.cfg")
        frames = dict.fromkeys((int(info["ED"]), int(info["ES"])))  # ordered, no duplicates
        for frame, key in zip(frames, ("ED", "ES")):
            vol = pdir / f"{pdir.name}_frame{frame:02d}.nii.gz"
            gt = pdir / f"{pdir.name}_frame{frame:02d}_gt.nii.gz"
            if not vol.is_file():
                raise CMRDataError(f"missing {vol} (the {key} frame named in {pdir / 'Info.cfg'})")
            if not gt.is_file():
                raise CMRDataError(f"frame {vol} has no label volume {gt.name}")
            jobs.append((pdir.name, frame, vol, gt))

    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for old in list(image_dir.glob("*.png")) + list(mask_dir.glob("*.png")):
            old.unlink()
    rng = np.random.default_rng(seed)
    manifest = []
    for patient, frame, vol, gt in jobs:
        image, labels = _load_nifti(vol), _load_nifti(gt)
        if image.shape != labels.shape:
            raise CMRDataError(f"{vol} has shape {image.shape} but {gt} has {labels.shape}")
        labels = np.rint(labels).astype(np.int64)
        bad = np.unique(labels[(labels < 0) | (labels > 3)])
        if bad.size:
            raise CMRDataError(f"{gt} holds labels {bad.tolist()} outside 0..3")
        for z in range(image.shape[2]):
            lab2d = labels[:, :, z]
            if not lab2d.any():
                continue
            img2d = image[:, :, z].astype(np.float64)
            if orientation == "transpose":
                img2d, lab2d = img2d.T, lab2d.T
            img8, mask8 = convert_slice(img2d, lab2d, rng)
            name = f"{patient}_frame{frame:02d}_slice{z + 1:02d}"
            Image.fromarray(img8).save(image_dir / f"{name}.png")
            Image.fromarray(mask8).save(mask_dir / f"{name}_mask.png")
            manifest.append({
                "name": name, "patient": patient, "frame": f"{frame:02d}", "slice": z + 1,
                "counts": np.bincount(mask8.ravel(), minlength=4)[:4].tolist(),
            })
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _summarise(manifest, len(patients), len(jobs), out, mask_dir, log)
    return manifest


def _summarise(manifest: list[dict], n_patients: int, n_frames: int, out: Path,
               mask_dir: Path, log) -> None:
    """Print counts and where the RV lies relative to the LV."""
    counts = np.array([r["counts"] for r in manifest]).reshape(-1, 4)
    log(f"converted {n_patients} patients, {n_frames} frames, {len(manifest)} slices -> {out}")
    if len(manifest):
        present = (counts > 0).sum(axis=0)
        log(f"slices holding RV {present[1]}, Myo {present[2]}, LV {present[3]} "
            f"(of {len(manifest)})")
        side = {"left": 0, "right": 0, "above": 0, "below": 0}
        for r in manifest:
            if min(r["counts"][1], r["counts"][3]) < 20:
                continue
            m = np.array(Image.open(mask_dir / f"{r['name']}_mask.png"))
            dy, dx = np.mean(np.nonzero(m == 1), axis=1) - np.mean(np.nonzero(m == 3), axis=1)
            if abs(dx) >= abs(dy):
                side["left" if dx < 0 else "right"] += 1
            else:
                side["above" if dy < 0 else "below"] += 1
        if sum(side.values()):
            main_side = max(side, key=side.get)
            log(f"RV lies {main_side} of the LV in {side[main_side]} of {sum(side.values())} "
                "slices holding both (acdc96: left; coursework cmr: above)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cmr.prepare",
        description="Convert public cardiac MR data sets into the project's 96x96 PNG layout.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    acdc = sub.add_parser(
        "acdc", help="convert the ACDC release (NIfTI) into the flat layout",
        description=("Convert the ACDC release into OUT/image/*.png, OUT/mask/*_mask.png and "
                     "OUT/manifest.json: ED and ES frames, every slice holding a label, "
                     "downscaled by 0.85, cropped 96x96 around the heart with a random offset "
                     "(sd 5 px), intensities windowed to the 1st..99th percentile."))
    acdc.add_argument("src", metavar="SRC", help="folder holding patient001/, patient002/, ... "
                      "(e.g. ACDC/database/training)")
    acdc.add_argument("out", metavar="OUT", help="output folder (created if needed)")
    acdc.add_argument("--seed", type=int, default=0,
                      help="seed of the random crop offsets (default: 0)")
    acdc.add_argument("--orientation", choices=("transpose", "raw"), default="transpose",
                      help="'transpose' (default) writes volume[:, :, z].T, the acdc96 "
                      "orientation; 'raw' writes volume[:, :, z] as stored")
    acdc.add_argument("--overwrite", action="store_true",
                      help="replace PNGs and manifest already in OUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 error)."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "acdc":
            convert_acdc(args.src, args.out, seed=args.seed, orientation=args.orientation,
                         overwrite=args.overwrite)
    except (CMRDataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: {exc} (install it with: pip install nibabel)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
