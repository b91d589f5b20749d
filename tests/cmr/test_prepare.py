"""Tests of the ACDC converter (python -m cmr.prepare acdc) on tiny NIfTI volumes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

nib = pytest.importorskip("nibabel")

from cmr import data, prepare  # noqa: E402
from cmr.data import CMRDataError  # noqa: E402
from cmr.phantom import phantom_slice  # noqa: E402

FRAMES = {"ED": 1, "ES": 3}


def write_patient(src: Path, number: int, shape=(120, 120, 4), gt=True) -> Path:
    """A patient folder with Info.cfg and ED/ES volumes (slice 0 unlabelled)."""
    rng = np.random.default_rng(number)
    pdir = src / f"patient{number:03d}"
    pdir.mkdir(parents=True)
    (pdir / "Info.cfg").write_text(
        f"ED: {FRAMES['ED']}\nES: {FRAMES['ES']}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\n")
    for frame in FRAMES.values():
        img = np.zeros(shape, np.int16)
        lab = np.zeros(shape, np.uint8)
        for z in range(shape[2]):
            side = min(shape[:2])
            im2d, m2d = phantom_slice(rng, size=side)
            img[:side, :side, z] = (im2d * 800).astype(np.int16)
            if z > 0:
                lab[:side, :side, z] = m2d
        name = f"patient{number:03d}_frame{frame:02d}"
        nib.save(nib.Nifti1Image(img, np.eye(4)), pdir / f"{name}.nii.gz")
        if gt:
            nib.save(nib.Nifti1Image(lab, np.eye(4)), pdir / f"{name}_gt.nii.gz")
    return pdir


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    src = tmp_path_factory.mktemp("acdc")
    write_patient(src, 1)
    write_patient(src, 2, shape=(80, 90, 4))   # smaller than the crop: needs padding
    return src


def test_convert(acdc, tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare.main(["acdc", str(acdc), str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "converted 2 patients, 4 frames, 12 slices" in printed

    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest) == 12                                  # 2 patients x 2 frames x 3 slices
    names = {r["name"] for r in manifest}
    assert "patient001_frame01_slice02" in names and "patient002_frame03_slice04" in names
    assert not any(r["slice"] == 1 for r in manifest)           # the unlabelled slice is skipped
    assert {r["frame"] for r in manifest} == {"01", "03"}
    for r in manifest:
        img = np.array(Image.open(out / "image" / f"{r['name']}.png"))
        mask = np.array(Image.open(out / "mask" / f"{r['name']}_mask.png"))
        assert img.shape == mask.shape == (96, 96) and img.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2, 3} and mask.any()
        assert img.max() == 255 and img.min() == 0
        assert np.bincount(mask.ravel(), minlength=4).tolist() == r["counts"]
        ys, xs = np.nonzero(mask)                               # heart near the centre
        assert abs(ys.mean() - 48) < 25 and abs(xs.mean() - 48) < 25

    split = data.load_manifest_folder(out)                      # readable by cmr.data
    assert len(split) == 12 and set(split.patients) == {"patient001", "patient002"}
    assert data.detect_layout(out) == "flat"


def test_convert_is_reproducible_and_seeded(acdc, tmp_path):
    a = prepare.convert_acdc(acdc, tmp_path / "a", seed=0, log=lambda *_: None)
    b = prepare.convert_acdc(acdc, tmp_path / "b", seed=0, log=lambda *_: None)
    c = prepare.convert_acdc(acdc, tmp_path / "c", seed=1, log=lambda *_: None)
    assert a == b
    first = "patient001_frame01_slice02_mask.png"
    ma, mb, mc = (np.array(Image.open(tmp_path / d / "mask" / first)) for d in "abc")
    assert np.array_equal(ma, mb) and not np.array_equal(ma, mc)


def test_orientation_option(acdc, tmp_path):
    prepare.convert_acdc(acdc, tmp_path / "raw", orientation="raw", log=lambda *_: None)
    prepare.convert_acdc(acdc, tmp_path / "tr", orientation="transpose", log=lambda *_: None)
    name = "patient001_frame01_slice03_mask.png"
    raw = np.array(Image.open(tmp_path / "raw" / "mask" / name))
    tr = np.array(Image.open(tmp_path / "tr" / "mask" / name))
    # same pixel counts, different layout (the crops differ by the seeded offset only)
    assert np.array_equal(np.bincount(raw.ravel(), minlength=4), np.bincount(tr.ravel(), minlength=4))


def test_convert_slice_scales_and_crops():
    rng = np.random.default_rng(0)
    labels = np.zeros((200, 200), np.uint8)
    labels[90:110, 120:140] = 3
    image = np.random.default_rng(1).normal(100, 10, (200, 200))
    img, mask = prepare.convert_slice(image, labels, rng, offset_sd=0.0)
    assert img.shape == mask.shape == (96, 96)
    assert (mask == 3).sum() == pytest.approx(400 * 0.85 ** 2, rel=0.15)   # downscaled by 0.85
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() - 47.5) <= 1 and abs(xs.mean() - 47.5) <= 1      # centred


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cmr.prepare", *map(str, args)],
                          capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])


def test_cli_missing_src(tmp_path):
    res = run_cli("acdc", tmp_path / "nope", tmp_path / "out")
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: ACDC folder not found: {tmp_path / 'nope'}"
    assert "Traceback" not in res.stderr


def test_cli_help():
    res = run_cli("acdc", "--help")
    assert res.returncode == 0 and "--seed" in res.stdout and "SRC" in res.stdout


def test_no_patients(tmp_path, capsys):
    (tmp_path / "empty" / "training").mkdir(parents=True)
    assert prepare.main(["acdc", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no patientXXX folders in") and "training" in err
    assert err.count("\n") == 1


def test_frame_without_gt(tmp_path):
    write_patient(tmp_path / "src", 5, shape=(40, 40, 2), gt=False)
    with pytest.raises(CMRDataError, match=r"patient005_frame01\.nii\.gz has no label volume "
                                           r"patient005_frame01_gt\.nii\.gz"):
        prepare.convert_acdc(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()           # nothing written on error


def test_missing_or_bad_info(tmp_path):
    pdir = write_patient(tmp_path / "src", 7, shape=(40, 40, 2))
    (pdir / "Info.cfg").write_text("Group: NOR\n")
    with pytest.raises(CMRDataError, match=r"Info\.cfg has no valid 'ED"):
        prepare.convert_acdc(tmp_path / "src", tmp_path / "out")
    (pdir / "Info.cfg").unlink()
    with pytest.raises(CMRDataError, match=r"missing .*patient007.Info\.cfg"):
        prepare.convert_acdc(tmp_path / "src", tmp_path / "out")


def test_refuses_to_overwrite(acdc, tmp_path):
    out = tmp_path / "out"
    prepare.convert_acdc(acdc, out, log=lambda *_: None)
    with pytest.raises(CMRDataError, match="already holds converted data"):
        prepare.convert_acdc(acdc, out, log=lambda *_: None)
    assert len(prepare.convert_acdc(acdc, out, overwrite=True, log=lambda *_: None)) == 12
