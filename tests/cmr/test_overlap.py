"""Tests of cmr.overlap: finding one data set's slices in another."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cmr import data, overlap


def smooth_image(rng, size=96):
    """A random image with structure at several scales (as an MR slice has), 0..255."""
    noise = rng.normal(size=(size, size))
    image = ndimage.gaussian_filter(noise, 3) + 0.3 * ndimage.gaussian_filter(noise, 1)
    image -= image.min()
    return 255 * image / image.max()


def copy_of(image, scale, shift, gain=0.7, offset=20.0):
    """``image`` zoomed by ``scale`` about its centre, moved by ``shift`` and re-windowed."""
    moved = ndimage.shift(overlap._rescale(image, scale), shift, order=1, mode="nearest")
    return np.clip(gain * moved + offset, 0, 255)


def test_a_rescaled_shifted_rewindowed_copy_is_found():
    rng = np.random.default_rng(0)
    queries = np.stack([smooth_image(rng) for _ in range(3)])
    others = np.stack([smooth_image(rng) for _ in range(4)])
    # reference 2 is query 1 seen at 1.1x the scale: the reference rescaled by 1/1.1 is
    # query 1 again, moved by (5, -7)
    refs = np.concatenate([others[:2], copy_of(queries[1], 1.1, (5, -7))[None], others[2:]])
    ncc, scale, shift = overlap.best_matches(queries, refs)
    assert ncc.shape == scale.shape == (3, 5) and shift.shape == (3, 5, 2)
    assert ncc[1, 2] > 0.97 and abs(scale[1, 2] - 1 / 1.1) < 0.03
    assert np.abs(shift[1, 2] - np.round(np.array([5, -7]) / 1.1)).max() <= 1
    others_best = np.delete(ncc, (1 * 5 + 2), None)
    assert others_best.max() < 0.7                  # unrelated images stay far below
    assert np.all(ncc <= 1 + 1e-9)


def test_ncc_ignores_brightness_and_contrast():
    rng = np.random.default_rng(1)
    image = smooth_image(rng)[None]
    ncc, scale, shift = overlap.best_matches(image, 0.5 * image + 60, scales=(1.0,))
    assert ncc[0, 0] == pytest.approx(1.0, abs=1e-9) and shift[0, 0].tolist() == [0, 0]
    with pytest.raises(ValueError, match="image size"):
        overlap.best_matches(image, image[:, :80, :80])


def write(folder, name, image, mask=True):
    for sub, arr, suffix in (("image", image, ""), ("mask", np.zeros((96, 96)), "_mask")):
        if sub == "mask" and not mask:
            continue
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(arr, np.uint8)).save(folder / sub / f"{name}{suffix}.png")


def test_find_overlap_and_duplicates_on_small_folders(tmp_path, capsys):
    rng = np.random.default_rng(2)
    seen = [smooth_image(rng) for _ in range(3)]
    ref = tmp_path / "ref"
    records = []
    for p, image in zip((1, 2, 3), seen):                       # patients 1..3
        write(ref, f"patient{p:03d}_frame01_slice01", copy_of(image, 0.95, (3, 2)).T)
        records.append({"name": f"patient{p:03d}_frame01_slice01", "patient": f"patient{p:03d}"})
    write(ref, "patient004_frame01_slice01", smooth_image(rng).T)   # in no query split
    write(ref, "patient005_frame01_slice01", copy_of(seen[2], 0.95, (3, 2)).T)  # = patient003
    records += [{"name": f"patient00{p}_frame01_slice01", "patient": f"patient00{p}"}
                for p in (4, 5)]
    (ref / "manifest.json").write_text(json.dumps(records))
    root = tmp_path / "cw"
    write(root / "train", "cmr1", seen[0])
    write(root / "train", "cmr2", smooth_image(rng))
    write(root / "val", "cmr3", seen[1])
    write(root / "test", "cmr4", seen[2], mask=False)
    result = overlap.find_overlap(root, ref, transpose=True)
    assert result["patients"] == {"train": ["patient001"], "val": ["patient002"],
                                  "test": ["patient003", "patient005"]}
    assert result["reference_duplicates"] == [["patient003", "patient005"]]
    assert [m["query"] for m in result["matches"]] == ["cmr1", "cmr2", "cmr3", "cmr4"]
    assert result["matches"][1]["ncc"] < overlap.THRESHOLD <= result["matches"][0]["ncc"]
    out = tmp_path / "o.json"
    assert overlap.main([str(root), str(ref), "--transpose", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "val: 1 of 1 slices" in printed and "patient003 patient005" in printed
    assert json.loads(out.read_text())["patients"] == result["patients"]
    assert overlap.main([str(tmp_path / "nowhere"), str(ref)]) == 2


def _real_root():
    root = os.environ.get("CMR_DATA")
    if not root:
        pytest.skip("CMR_DATA not set: real-data test skipped")
    return Path(root)


def test_the_recorded_overlap_holds_on_the_real_data():
    """The shipped ``cmr/acdc_overlap.json``: its cmr/val patients found again by a full
    search (20 slices against all of acdc96), and every recorded match of a training slice
    measured again."""
    root = _real_root()
    recorded = json.loads(data.OVERLAP_FILE.read_text())
    acdc = data.load_manifest_folder(root / "acdc96").transposed()
    val = data.load_coursework(root / "cmr", "val")
    ncc, _, _ = overlap.best_matches(val.images, acdc.images)
    found = {acdc.patients[j] for j in np.flatnonzero(ncc.max(0) >= recorded["threshold"])}
    assert sorted(found, key=data.natural_key) == recorded["patients"]["val"]
    train = data.load_coursework(root / "cmr", "train")
    index = {n: i for i, n in enumerate(acdc.names)}
    for m in (m for m in recorded["matches"] if m["split"] == "train"):
        q = train.images[train.names.index(m["query"])][None]
        r = acdc.images[index[m["reference"]]][None]
        again, _, _ = overlap.best_matches(q, r, scales=(m["scale"],))
        assert again[0, 0] == pytest.approx(m["ncc"], abs=2e-4)
