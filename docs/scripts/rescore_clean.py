"""Re-score evaluations made before the acdc96 split knew about the coursework set.

    python docs/scripts/rescore_clean.py EVAL.json [EVAL.json ...] --data DIR

Until git 2e68f8f the acdc96 split (``--split-seed 0``) put 5 of the 10 ``cmr/val``
patients into acdc96's training part, and 14 ``cmr/train`` patients and patient076 (a
copy of the training patient074) into its held-out part (``python -m cmr.overlap``,
``cmr/acdc_overlap.json``). Each ``EVAL.json`` (``cmr.evaluate --json``, with per-image
results) of a model trained that way is scored again on the images that model had not
seen: for ``cmr/val``, the slices whose patient was not in that training part; for the
acdc96 held-out part, the patients that are neither in ``cmr/train`` nor copies of a
training patient. The kind of each file is told by its image names (``cmr*`` or
``patient*``). Prints, per file, the mean Dice (per image, the original convention) on all
images, on the unseen ones, and on the seen ones.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cmr import data  # noqa: E402

CLASSES = ("RV", "Myo", "LV")


def mean_dice(records):
    """Per class the mean over images, then the mean of the three (cmr.metrics' convention)."""
    per_class = [np.mean([r["dice"][c] for r in records]) for c in CLASSES]
    return float(np.mean(per_class)), [float(v) for v in per_class]


def seen_images(records, overlap, old_train, copies):
    """The names among ``records`` that a model trained on cmr/train + the old acdc96
    training part had seen (as the same patient)."""
    if records[0]["name"].startswith("cmr"):
        # a coursework slice's patient: any acdc96 patient matching it or its pair partner
        # (cmr 2k-1 and 2k are the ED and ES frames of one slice)
        patient_of = {m["query"]: m["patient"] for m in overlap["matches"]
                      if m["ncc"] >= overlap["threshold"]}
        seen = set()
        for r in records:
            k = int(r["name"][3:])
            partner = f"cmr{k + 1 if k % 2 else k - 1}"
            if {patient_of.get(r["name"]), patient_of.get(partner)} & old_train:
                seen.add(r["name"])
        return seen
    cmr_train = set(overlap["patients"]["train"])
    return {r["name"] for r in records
            if (p := r["name"].split("_")[0]) in cmr_train or p in copies}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("evals", nargs="+", help="cmr.evaluate --json outputs with per_image")
    p.add_argument("--data", required=True, help="folder holding acdc96/")
    p.add_argument("--split-seed", type=int, default=0, help="the old split's seed (0)")
    args = p.parse_args(argv)
    overlap = json.loads(data.OVERLAP_FILE.read_text())
    acdc = data.load_manifest_folder(Path(args.data) / "acdc96")
    old_train = data.split_by_patient(acdc, seed=args.split_seed)[0]        # no rules
    old_train = set(old_train.patients)
    copies = {p for g in overlap["reference_duplicates"] for p in g
              if p not in old_train and set(g) & old_train}
    for path in args.evals:
        records = json.loads(Path(path).read_text())["per_image"]
        seen = seen_images(records, overlap, old_train, copies)
        unseen = [r for r in records if r["name"] not in seen]
        parts = [("all", records), ("unseen", unseen),
                 ("seen", [r for r in records if r["name"] in seen])]
        print(path)
        for label, rs in parts:
            if rs:
                mean, per = mean_dice(rs)
                patients = len({r["name"].split("_")[0] for r in rs})
                who = f", {patients} patients" if rs[0]["name"].startswith("patient") else ""
                print(f"  {label:6s} {len(rs):3d} images{who}: RV {per[0]:.3f} Myo {per[1]:.3f} "
                      f"LV {per[2]:.3f} mean {mean:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
