"""Tests of cmr.data: layouts, bad-data errors, splits and batching."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmr import data
from cmr.data import CMRDataError, Split


# --------------------------------------------------------------------------- helpers

def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def write_pair(folder: Path, name: str, rng, size=(12, 12), mask=True, mask_size=None) -> None:
    """Write folder/image/NAME.png and (optionally) folder/mask/NAME_mask.png."""
    write_png(folder / "image" / f"{name}.png", rng.integers(0, 256, size))
    if mask:
        write_png(folder / "mask" / f"{name}_mask.png", rng.integers(0, 4, mask_size or size))


def make_folder(folder: Path, names, seed=0, **kw) -> Path:
    rng = np.random.default_rng(seed)
    for n in names:
        write_pair(folder, n, rng, **kw)
    return folder


def make_coursework(root: Path) -> Path:
    make_folder(root / "train", [f"cmr{i}" for i in range(1, 11)], seed=1)
    make_folder(root / "val", [f"cmr{i}" for i in range(11, 14)], seed=2)
    make_folder(root / "test", [f"cmr{i}" for i in range(14, 17)], seed=3, mask=False)
    return root


def make_flat(root: Path, n_patients=10, slices=3, manifest=True) -> Path:
    names, records = [], []
    for p in range(1, n_patients + 1):
        for s in range(1, slices + 1):
            name = f"patient{p:03d}_frame01_slice{s:02d}"
            names.append(name)
            records.append({"name": name, "patient": f"patient{p:03d}", "frame": "01",
                            "slice": s, "counts": [0, 0, 0, 0]})
    make_folder(root, names)
    if manifest:
        (root / "manifest.json").write_text(json.dumps(records))
    return root


# --------------------------------------------------------------------------- load_png

def test_load_png_image_and_mask(tmp_path):
    write_png(tmp_path / "a.png", np.full((5, 7), 200))
    write_png(tmp_path / "m.png", np.array([[0, 1], [2, 3]]))
    img = data.load_png(tmp_path / "a.png", "image")
    assert img.shape == (5, 7) and img.dtype == np.uint8 and img.max() == 200
    assert data.load_png(tmp_path / "m.png", "mask").tolist() == [[0, 1], [2, 3]]


def test_load_png_rgb_image_is_converted(tmp_path):
    Image.fromarray(np.full((4, 4, 3), 90, np.uint8)).save(tmp_path / "rgb.png")
    with pytest.warns(data.CMRDataWarning, match=r"rgb\.png is RGB rather than grayscale"):
        assert data.load_png(tmp_path / "rgb.png").tolist() == np.full((4, 4), 90).tolist()


def test_colour_images_in_a_folder_are_reported_once(tmp_path):
    """issue 27, item 9: the conversion is said, once per folder, with the count."""
    import warnings
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((4, 4, 3), 90, np.uint8)).save(tmp_path / f"{name}.png")
    write_png(tmp_path / "d.png", np.full((4, 4), 90))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = data.load_images(sorted(tmp_path.glob("*.png")))
    assert images.shape == (4, 4, 4) and (images == 90).all()
    assert [str(w.message) for w in caught] == [
        f"3 of 4 images (the first: {tmp_path / 'a.png'}) are RGB rather than grayscale: "
        "converted to grayscale (luminance)"]


def test_many_bad_mask_values_are_counted_not_listed(tmp_path):
    """issue 27, item 6: a mask with 252 bad values names five and the count."""
    write_png(tmp_path / "m.png", np.arange(256).reshape(16, 16))
    with pytest.raises(CMRDataError) as err:
        data.load_png(tmp_path / "m.png", "mask")
    assert "holds values [4, 5, 6, 7, 8 and 247 more] outside the labels 0..3" in str(err.value)
    assert len(str(err.value)) < 200 + len(str(tmp_path))


def test_mask_value_out_of_range_names_file_and_values(tmp_path):
    write_png(tmp_path / "bad_mask.png", np.array([[0, 7], [3, 9]]))
    with pytest.raises(CMRDataError, match=r"bad_mask\.png.*\[7, 9\]"):
        data.load_png(tmp_path / "bad_mask.png", "mask")


def test_corrupt_png_names_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a png at all")
    with pytest.raises(CMRDataError, match="broken.png"):
        data.load_png(tmp_path / "broken.png")


def test_truncated_png_names_file(tmp_path):
    write_png(tmp_path / "t.png", np.arange(400).reshape(20, 20) % 256)
    raw = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CMRDataError, match="t.png"):
        data.load_png(tmp_path / "t.png")


def test_16bit_png_is_rejected(tmp_path):
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(CMRDataError, match="deep.png"):
        data.load_png(tmp_path / "deep.png")


def test_missing_png_names_file(tmp_path):
    with pytest.raises(CMRDataError, match="nothere.png"):
        data.load_png(tmp_path / "nothere.png", "mask")


# --------------------------------------------------------------------------- load_folder

def test_load_folder_natural_order_scaling_and_types(tmp_path):
    folder = make_folder(tmp_path / "f", ["cmr10", "cmr2", "cmr1"])
    split = data.load_folder(folder)
    assert split.names == ["cmr1", "cmr2", "cmr10"]
    assert len(split) == 3
    assert split.images.shape == (3, 12, 12) and split.images.dtype == np.float32
    assert 0.0 <= split.images.min() and split.images.max() <= 1.0
    assert split.masks.dtype == np.uint8 and split.masks.max() <= 3
    raw = np.array(Image.open(folder / "image" / "cmr2.png"))
    np.testing.assert_allclose(split.images[1], raw / 255.0, atol=1e-6)
    assert split.patients is None


def test_image_without_mask(tmp_path):
    folder = make_folder(tmp_path / "f", ["cmr1", "cmr2"])
    (folder / "mask" / "cmr2_mask.png").unlink()
    with pytest.raises(CMRDataError, match=r"cmr2\.png has no mask.*cmr2_mask\.png"):
        data.load_folder(folder)


def test_mask_without_image(tmp_path):
    folder = make_folder(tmp_path / "f", ["cmr1", "cmr2"])
    (folder / "image" / "cmr1.png").unlink()
    with pytest.raises(CMRDataError, match=r"cmr1_mask\.png has no image"):
        data.load_folder(folder)


def test_image_and_mask_sizes_differ(tmp_path):
    folder = make_folder(tmp_path / "f", ["cmr1"])
    write_pair(folder, "cmr2", np.random.default_rng(0), size=(12, 12), mask_size=(10, 12))
    with pytest.raises(CMRDataError, match=r"cmr2_mask\.png is 10x12 but its image .*cmr2\.png"):
        data.load_folder(folder)


def test_images_of_different_sizes(tmp_path):
    folder = make_folder(tmp_path / "f", ["cmr1"])
    write_pair(folder, "cmr2", np.random.default_rng(0), size=(16, 16))
    with pytest.raises(CMRDataError, match=r"cmr2\.png is 16x16"):
        data.load_folder(folder)


def test_bad_mask_value_inside_folder(tmp_path):
    folder = make_folder(tmp_path / "f", ["cmr1", "cmr2"])
    write_png(folder / "mask" / "cmr2_mask.png", np.full((12, 12), 7))
    with pytest.raises(CMRDataError, match=r"cmr2_mask\.png.*\[7\]"):
        data.load_folder(folder)


def test_garbage_image_inside_folder(tmp_path):
    folder = make_folder(tmp_path / "f", ["cmr1", "cmr2"])
    (folder / "image" / "cmr2.png").write_bytes(os.urandom(64))
    with pytest.raises(CMRDataError, match=r"cmr2\.png"):
        data.load_folder(folder)


def test_empty_image_folder(tmp_path):
    (tmp_path / "f" / "image").mkdir(parents=True)
    (tmp_path / "f" / "mask").mkdir()
    with pytest.raises(CMRDataError, match=r"no \.png images in .*image"):
        data.load_folder(tmp_path / "f")


def test_missing_folders(tmp_path):
    with pytest.raises(CMRDataError, match="nowhere"):
        data.load_folder(tmp_path / "nowhere")
    (tmp_path / "f").mkdir()
    with pytest.raises(CMRDataError, match=r"image folder not found: .*f.image"):
        data.load_folder(tmp_path / "f")
    make_folder(tmp_path / "g", ["cmr1"], mask=False)
    with pytest.raises(CMRDataError, match=r"mask folder not found: .*g.mask"):
        data.load_folder(tmp_path / "g")


def test_badly_named_mask(tmp_path):
    folder = make_folder(tmp_path / "f", ["cmr1"])
    write_png(folder / "mask" / "cmr1.png", np.zeros((12, 12)))
    with pytest.raises(CMRDataError, match=r"mask.cmr1\.png is not named"):
        data.load_folder(folder)


def test_optional_masks(tmp_path):
    folder = make_folder(tmp_path / "f", ["cmr1", "cmr2"], mask=False)
    assert data.load_folder(folder, require_masks=False).masks is None
    folder = make_folder(tmp_path / "g", ["cmr1", "cmr2"])
    assert data.load_folder(folder, require_masks=False).masks.shape == (2, 12, 12)


# --------------------------------------------------------------------------- layouts

def test_coursework_layout(tmp_path):
    root = make_coursework(tmp_path / "cw")
    assert data.detect_layout(root) == "coursework"
    train, val = data.load_dataset(root)
    assert (len(train), len(val)) == (10, 3)
    assert train.names[:3] == ["cmr1", "cmr2", "cmr3"] and val.names[0] == "cmr11"
    test = data.load_coursework(root, "test")
    assert len(test) == 3 and test.masks is None
    ev = data.load_eval_split(root)
    assert ev.names == val.names
    with pytest.raises(ValueError):
        data.load_coursework(root, "training")


def test_flat_layout_with_manifest(tmp_path):
    root = make_flat(tmp_path / "flat", n_patients=10, slices=3)
    assert data.detect_layout(root) == "flat"
    split = data.load_manifest_folder(root)
    assert len(split) == 30 and split.patients[0] == "patient001"
    train, val = data.load_dataset(root, seed=0)
    # ACDC patients 3, 4, 5, 6, 9 and 10 have slices in cmr/train: coursework_rules keeps
    # them in the training part, one more than its half of the ten
    assert set(train.patients) == {f"patient{p:03d}" for p in (3, 4, 5, 6, 9, 10)}
    assert len(set(val.patients)) == 1 and not set(train.patients) & set(val.patients)
    assert data.load_eval_split(root).patients == split.patients


def test_manifest_patient_ids_are_used(tmp_path):
    root = make_flat(tmp_path / "flat", n_patients=2, slices=2, manifest=False)
    records = [{"name": n, "patient": "subjectA" if "001" in n else "subjectB"}
               for n in ("patient001_frame01_slice01", "patient001_frame01_slice02",
                         "patient002_frame01_slice01", "patient002_frame01_slice02")]
    (root / "manifest.json").write_text(json.dumps(records))
    assert data.load_manifest_folder(root).patients == ["subjectA"] * 2 + ["subjectB"] * 2


def test_flat_layout_without_manifest_parses_names(tmp_path):
    root = make_flat(tmp_path / "flat", n_patients=4, slices=2, manifest=False)
    assert data.detect_layout(root) == "folder"
    split = data.load_manifest_folder(root)
    assert split.patients == ["patient001"] * 2 + ["patient002"] * 2 + ["patient003"] * 2 \
        + ["patient004"] * 2


def test_broken_or_incomplete_manifest(tmp_path):
    root = make_flat(tmp_path / "flat", n_patients=2, slices=2)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(CMRDataError, match="manifest.json"):
        data.load_manifest_folder(root)
    (root / "manifest.json").write_text(json.dumps([{"name": "patient001_frame01_slice01",
                                                      "patient": "patient001"}]))
    with pytest.raises(CMRDataError, match="patient001_frame01_slice02.*manifest.json"):
        data.load_manifest_folder(root)


def test_plain_folder_splits_by_slice(tmp_path):
    root = make_folder(tmp_path / "plain", [f"img{i}" for i in range(20)])
    assert data.detect_layout(root) == "folder"
    train, val = data.load_dataset(root, seed=3)
    assert (len(train), len(val)) == (10, 2)
    assert not set(train.names) & set(val.names)
    again = data.load_dataset(root, seed=3)
    assert again[0].names == train.names and again[1].names == val.names


def test_unrecognised_layout(tmp_path):
    (tmp_path / "x" / "something").mkdir(parents=True)
    with pytest.raises(CMRDataError, match="not a recognised data folder"):
        data.load_dataset(tmp_path / "x")
    with pytest.raises(CMRDataError, match="missing_dir"):
        data.load_dataset(tmp_path / "missing_dir")
    with pytest.raises(CMRDataError, match="x"):
        data.load_eval_split(tmp_path / "x")


# --------------------------------------------------------------------------- splits

def _toy_split(n_patients=23, rng=None):
    rng = rng or np.random.default_rng(0)
    per = rng.integers(1, 8, n_patients)
    patients = [f"patient{p:03d}" for p, k in enumerate(per) for _ in range(k)]
    n = len(patients)
    return Split(names=[f"s{i}" for i in range(n)], images=np.zeros((n, 2, 2), np.float32),
                 masks=np.zeros((n, 2, 2), np.uint8), patients=patients)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_patient_split_never_shares_a_patient(seed):
    split = _toy_split(70, np.random.default_rng(seed))
    parts = data.split_by_patient(split, (0.5, 0.1, 0.4), seed=seed)
    sets = [set(p.patients) for p in parts]
    assert [len(s) for s in sets] == [35, 7, 28]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(len(p) for p in parts) == len(split)
    assert sorted(n for p in parts for n in p.names) == sorted(split.names)


def test_patient_split_is_reproducible_and_seed_dependent():
    split = _toy_split(30)
    a = data.split_by_patient(split, seed=5)
    b = data.split_by_patient(split, seed=5)
    c = data.split_by_patient(split, seed=6)
    assert [p.names for p in a] == [p.names for p in b]
    assert [p.names for p in a] != [p.names for p in c]


def test_small_patient_split_keeps_every_part_non_empty():
    parts = data.split_by_patient(_toy_split(3), seed=0)
    assert [len(set(p.patients)) for p in parts] == [1, 1, 1]


def test_split_needs_patients_and_valid_fractions():
    split = _toy_split(5)
    with pytest.raises(ValueError):
        data.split_by_patient(Split(split.names, split.images, split.masks, None))
    with pytest.raises(ValueError):
        data.split_by_slice(split, (0.5, 0.6))


def test_patient_split_with_fixed_patients_and_copies():
    split = _toy_split(20, np.random.default_rng(4))
    patients = sorted(set(split.patients))
    fixed = {patients[0]: 2, patients[1]: 2, patients[2]: 0, "patient999": 1}   # 999: absent
    same = [[patients[5], patients[6]], [patients[7], "patient998"]]
    for seed in range(4):
        parts = data.split_by_patient(split, seed=seed, fixed=fixed, same=same)
        sets = [set(p.patients) for p in parts]
        assert {patients[0], patients[1]} <= sets[2] and patients[2] in sets[0]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        assert patients[6] not in set().union(*sets)            # a copy of patients[5]
        assert patients[5] in set().union(*sets) and patients[7] in set().union(*sets)
        assert [len(s) for s in sets] == [9, 2, 8]              # 19 patients at 50/10/40
        assert sum(len(p) for p in parts) == len(split) - split.patients.count(patients[6])
    with pytest.raises(ValueError, match="two parts"):
        data.split_by_patient(split, fixed={patients[5]: 0, patients[6]: 1}, same=same)


def test_coursework_rules_keep_coursework_patients_out_of_the_acdc_test_part():
    rules = data.coursework_rules()
    found = json.loads(data.OVERLAP_FILE.read_text())["patients"]
    assert rules["fixed"] == {**{p: 0 for p in found["train"]}, **{p: 1 for p in found["val"]}}
    assert ["patient074", "patient076"] in rules["same"]
    split = _toy_split(101, np.random.default_rng(0))          # patient000 .. patient100
    train, val, test = (set(p.patients) for p in data.split_by_patient(split, **rules))
    assert set(found["train"]) <= train and set(found["val"]) <= val
    assert not test & (set(found["train"]) | set(found["val"])) and "patient076" not in test


def test_split_helpers():
    split = _toy_split(4)
    sub = split.subset([2, 0])
    assert sub.names == ["s2", "s0"] and len(sub) == 2
    both = Split.concatenate([sub, split])
    assert len(both) == len(split) + 2 and both.patients[:2] == [split.patients[2], split.patients[0]]
    assert split.class_counts().tolist() == [split.masks.size, 0, 0, 0]
    img = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    t = Split(["a", "b"], img, (img % 4).astype(np.uint8)).transposed()
    assert np.array_equal(t.images[0], img[0].T) and np.array_equal(t.masks[1], (img[1] % 4).T)
    with pytest.raises(ValueError):
        Split(["a"], np.zeros((2, 3, 3), np.float32))


# --------------------------------------------------------------------------- batching

def test_iterate_minibatches_covers_everything_once():
    batches = list(data.iterate_minibatches(10, 4, np.random.default_rng(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    again = list(data.iterate_minibatches(10, 4, np.random.default_rng(0)))
    assert all(np.array_equal(x, y) for x, y in zip(batches, again))
    ordered = list(data.iterate_minibatches(_toy_split(2), 3, None, shuffle=False))
    assert np.array_equal(np.concatenate(ordered), np.arange(sum(len(b) for b in ordered)))
    with pytest.raises(ValueError):
        list(data.iterate_minibatches(5, 2, None, shuffle=True))


# --------------------------------------------------------------------------- real data

def _real_root():
    root = os.environ.get("CMR_DATA")
    if not root:
        pytest.skip("CMR_DATA not set: real-data test skipped")
    return Path(root)


def test_real_data_loads():
    root = _real_root()
    train, val = data.load_dataset(root / "cmr")
    assert (len(train), len(val)) == (100, 20)
    assert train.images.shape == (100, 96, 96) and val.masks.shape == (20, 96, 96)
    assert set(np.unique(train.masks)) == {0, 1, 2, 3}
    assert len(data.load_coursework(root / "cmr", "test")) == 80

    acdc = data.load_manifest_folder(root / "acdc96")
    assert len(acdc) == 1269 and acdc.images.shape[1:] == (96, 96)
    parts = data.split_by_patient(acdc, seed=0)
    sets = [set(p.patients) for p in parts]
    assert [len(s) for s in sets] == [35, 7, 28]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    # the split every command uses: coursework patients kept out of the held-out part, the
    # cmr/val ones out of training, patient076 (a copy of patient074) left out
    rules = data.coursework_rules()
    parts = data.split_by_patient(acdc, seed=0, **rules)
    sets = [set(p.patients) for p in parts]
    assert [len(s) for s in sets] == [34, 8, 27] and [len(p) for p in parts] == [603, 151, 499]
    cmr_train = {p for p, part in rules["fixed"].items() if part == 0}
    assert not sets[2] & cmr_train and "patient076" not in set().union(*sets)
    tr, va = data.load_dataset(root / "acdc96", seed=0)
    assert tr.names == parts[0].names and va.names == parts[1].names
