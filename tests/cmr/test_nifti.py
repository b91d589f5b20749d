"""cmr.nifti: whole NIfTI volumes in, label volumes on the input's grid out."""
import os
from pathlib import Path

import numpy as np
import pytest

import minicnn
from cmr import nifti
from cmr.predict import predict_masks
from cmr.unet import UNet


class BrightIsLV:
    """A stand-in model: labels LV (3) where the image is brighter than 0.5, else
    background; lets find_heart be tested without a trained network."""

    def __call__(self, x):
        img = x.numpy()[:, :1]
        logits = np.concatenate([0.5 - img, img - 10, img - 10, img - 0.5], axis=1)
        return minicnn.Tensor(logits.astype(np.float32))

    def eval(self):
        return self


def tiny_unet(seed=0):
    minicnn.manual_seed(seed)
    return UNet(1, 4, base=4, depth=4, init="he").eval()


def test_find_heart_finds_a_bright_disc_off_centre():
    h, w, z = 150, 170, 5
    rows, cols = np.mgrid[:h, :w]
    disc = (rows - 100) ** 2 + (cols - 40) ** 2 < 15 ** 2
    volume = np.repeat(np.where(disc, 200.0, 20.0)[:, :, None], z, axis=2)
    volume += np.random.default_rng(0).normal(0, 2, volume.shape)
    slices = nifti.scale_slices(volume, 0.85)
    centre = nifti.find_heart(BrightIsLV(), slices)
    assert np.allclose(centre, (100 * slices.shape[1] / h, 40 * slices.shape[2] / w), atol=1.5)
    labels = nifti.segment_volume(BrightIsLV(), volume, 0.85)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    found = labels[:, :, 2] == 3
    dice = 2 * (found & disc).sum() / (found.sum() + disc.sum())
    assert dice > 0.95                      # the disc, mapped back onto the input grid


def test_crop_and_paste_back_are_exact_inverses_at_scale_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (3, 96, 96)).astype(np.uint8)
    for corner in ((10, 20), (-30, 70), (80, -5)):          # inside, over two edges
        volume = nifti.paste_back(labels, corner, (120, 140), (120, 140, 3))
        assert volume.shape == (120, 140, 3)
        back, got = nifti.crop_at(volume.transpose(2, 0, 1), (corner[0] + 48, corner[1] + 48))
        assert got == corner
        top, left = corner
        inside = np.zeros((96, 96), bool)
        inside[max(0, -top):min(96, 120 - top), max(0, -left):min(96, 140 - left)] = True
        np.testing.assert_array_equal(back[:, inside], labels[:, inside])
        assert volume.sum() == back.sum()                  # nothing written outside


def test_volume_prediction_equals_slicewise_prediction_on_the_same_crops():
    """96x96 crops set into a larger field at a known place (scale 1, centre given): the
    volume's labels there are the model's labels of those crops, slice by slice, and zero
    elsewhere."""
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (4, 96, 96)).astype(np.float64)
    crops[:, 30:60, 30:60] += 200
    volume = np.zeros((130, 150, 4))
    volume[20:116, 35:131] = crops.transpose(1, 2, 0)
    model = tiny_unet()
    labels = nifti.segment_volume(model, volume, scale=1.0, centre=(20 + 48, 35 + 48))
    expected = predict_masks(model, np.stack([nifti.normalise_crop(c) for c in crops]))
    assert len(np.unique(expected)) > 1                    # a test that can fail
    np.testing.assert_array_equal(labels[20:116, 35:131].transpose(2, 0, 1), expected)
    outside = labels.copy()
    outside[20:116, 35:131] = 0
    assert not outside.any()


def test_predict_file_keeps_the_inputs_geometry(tmp_path):
    nib = pytest.importorskip("nibabel", reason="reading NIfTI needs nibabel (the test extra)")
    rng = np.random.default_rng(3)
    volume = rng.normal(100, 20, (131, 117, 6)).astype(np.float32)
    affine = np.array([[0.0, -1.4, 0.1, 80.0], [1.37, 0.0, 0.0, -110.0],
                       [0.0, 0.2, 9.5, 33.3], [0.0, 0.0, 0.0, 1.0]])
    image = nib.Nifti1Image(volume, affine)
    image.header.set_zooms((1.37, 1.4, 9.5))
    image.header.set_slope_inter(2.0, 5.0)
    src, out = tmp_path / "patient_frame01.nii.gz", tmp_path / "seg.nii.gz"
    nib.save(image, str(src))
    labels = nifti.predict_file(tiny_unet(), src, out)
    seg = nib.load(str(out))
    assert seg.shape == volume.shape and seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(seg.affine, nib.load(str(src)).affine)
    assert seg.header.get_zooms() == nib.load(str(src)).header.get_zooms()
    np.testing.assert_array_equal(np.asanyarray(seg.dataobj), labels)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}


def test_bad_nifti_inputs_say_what_is_wrong(tmp_path):
    nib = pytest.importorskip("nibabel", reason="reading NIfTI needs nibabel (the test extra)")
    from cmr.data import CMRDataError
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    with pytest.raises(CMRDataError, match="cannot read NIfTI file"):
        nifti.load_nifti(broken)
    flat = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(flat))
    with pytest.raises(CMRDataError, match="expected one 3-D volume"):
        nifti.load_nifti(flat)
    assert nifti.nifti_inputs(tmp_path) == [broken, flat]
    assert nifti.is_nifti("a/B.NII.GZ") and not nifti.is_nifti("a.png")


def test_acdc96vol_volume_through_the_pipeline_matches_its_crops():
    """A real acdc96vol volume (whole stack, coursework orientation) set into a larger field:
    with scale 1 and the known centre, the pipeline segments exactly the stored crops."""
    root = os.environ.get("CMR_DATA")
    if not root or not (Path(root) / "acdc96vol").is_dir():
        pytest.skip("CMR_DATA with acdc96vol/ not set: real-data test skipped")
    from cmr import data
    split = data.load_manifest_folder(Path(root) / "acdc96vol")
    rows = [i for i, n in enumerate(split.names) if n.startswith("patient003_frame01_")]
    rows.sort(key=lambda i: split.names[i])
    crops = split.images[rows].astype(np.float64)
    volume = np.zeros((160, 176, len(rows)))
    volume[40:136, 50:146] = crops.transpose(1, 2, 0)
    model = tiny_unet(1)
    labels = nifti.segment_volume(model, volume, scale=1.0, centre=(40 + 48, 50 + 48))
    expected = predict_masks(model, np.stack([nifti.normalise_crop(c) for c in crops]))
    np.testing.assert_array_equal(labels[40:136, 50:146].transpose(2, 0, 1), expected)


# ------------------------------------------------------------------ python -m cmr.predict
def _volume_file(path, shape=(131, 117, 4), seed=3):
    nib = pytest.importorskip("nibabel", reason="reading NIfTI needs nibabel (the test extra)")
    volume = np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
    affine = np.diag([1.3, 1.3, 8.0, 1.0])
    affine[:3, 3] = (-70.0, 12.5, 3.0)
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return nib


def test_predict_command_segments_one_volume_and_a_folder(tmp_path, capsys):
    from cmr import checkpoint, predict
    model = tiny_unet()
    ckpt = tmp_path / "tiny.npz"
    checkpoint.save(ckpt, model, {"train": {}})
    src = tmp_path / "in" / "case1_frame01.nii.gz"
    src.parent.mkdir()
    nib = _volume_file(src)
    _volume_file(tmp_path / "in" / "case2.nii", shape=(100, 120, 3), seed=4)
    out = tmp_path / "seg.nii.gz"
    assert predict.main(["--checkpoint", str(ckpt), "--input", str(src), "--out", str(out),
                         "--no-progress"]) == 0
    seg = nib.load(str(out))
    assert seg.shape == (131, 117, 4) and seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(seg.affine, nib.load(str(src)).affine)
    expected = nifti.predict_file(model, src, tmp_path / "direct.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(seg.dataobj), expected)
    assert "case1_frame01.nii.gz: (131, 117, 4) ->" in capsys.readouterr().out
    # a folder of volumes: one NAME_seg.nii.gz each, in the --out folder
    assert predict.main(["--checkpoint", str(ckpt), "--input", str(tmp_path / "in"),
                         "--out", str(tmp_path / "segs"), "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == [
        "case1_frame01_seg.nii.gz", "case2_seg.nii.gz"]
    assert nib.load(str(tmp_path / "segs" / "case2_seg.nii.gz")).shape == (100, 120, 3)


def test_predict_command_refuses_nifti_misuse_in_one_line(tmp_path, capsys):
    from cmr import checkpoint, predict
    ckpt = tmp_path / "tiny.npz"
    checkpoint.save(ckpt, tiny_unet(), {"train": {}})
    (tmp_path / "in").mkdir()
    _volume_file(tmp_path / "in" / "a.nii.gz")
    _volume_file(tmp_path / "in" / "b.nii.gz")
    for argv, says in (
            (["--input", str(tmp_path / "in"), "--out", str(tmp_path / "one.nii.gz")],
             "names one NIfTI file, but --input holds 2 volumes"),
            (["--input", str(tmp_path / "in" / "a.nii.gz"), "--out", str(tmp_path / "o"),
              "--scale", "0"], "--scale must be > 0")):
        with pytest.raises(SystemExit) as exit_:
            predict.main(["--checkpoint", str(ckpt), *argv, "--no-progress"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "one.nii.gz").exists()


def test_the_shipped_model_segments_a_held_out_acdc96vol_volume_with_no_checkpoint(tmp_path,
                                                                                   capsys):
    """From a fresh clone, no training: a whole volume of a held-out acdc96vol patient (the
    test split of cmr.train's seed 0), set into a larger field of view, through
    ``python -m cmr.predict`` without --checkpoint (the shipped model finds the heart
    itself); the label volume's 3-D Dice against the ground truth, per structure."""
    root = os.environ.get("CMR_DATA")
    if not root or not (Path(root) / "acdc96vol").is_dir():
        pytest.skip("CMR_DATA with acdc96vol/ not set: real-data test skipped")
    nib = pytest.importorskip("nibabel", reason="reading NIfTI needs nibabel (the test extra)")
    from cmr import predict
    from cmr.evaluate import load_split
    split = load_split(Path(root) / "acdc96vol", "test")
    volume_name = sorted(split.names)[0].rsplit("_slice", 1)[0]
    rows = sorted((i for i, n in enumerate(split.names) if n.startswith(volume_name + "_")),
                  key=lambda i: split.names[i])
    volume = np.zeros((150, 170, len(rows)), np.float32)
    truth = np.zeros(volume.shape, np.uint8)
    volume[30:126, 60:156] = split.images[rows].transpose(1, 2, 0)
    truth[30:126, 60:156] = split.masks[rows].transpose(1, 2, 0)
    src, out = tmp_path / f"{volume_name}.nii.gz", tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(src))
    assert predict.main(["--input", str(src), "--out", str(out), "--scale", "1",
                         "--no-progress"]) == 0
    assert "model: the shipped cpu16-acdc-ds (" in capsys.readouterr().out
    labels = np.asanyarray(nib.load(str(out)).dataobj)
    for c, name in ((1, "RV"), (2, "Myo"), (3, "LV")):
        p, t = labels == c, truth == c
        dice = 2 * (p & t).sum() / (p.sum() + t.sum())
        assert dice > 0.75, (volume_name, name, dice)
