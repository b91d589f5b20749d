"""Tests of cmr.metrics on hand-made cases."""

import json
import math

import numpy as np
import pytest

from cmr.metrics import (dice_per_class, evaluate_masks, hd95_per_class, surface,
                         surface_distances)


def square(top, left, side=20, label=1, size=64):
    m = np.zeros((size, size), np.uint8)
    m[top:top + side, left:left + side] = label
    return m


def three_class_mask():
    m = np.zeros((64, 64), np.uint8)
    m[10:30, 10:30] = 1
    m[30:50, 30:50] = 2
    m[35:45, 35:45] = 3
    return m


def test_identical_masks():
    m = three_class_mask()
    assert dice_per_class(m, m) == {1: 1.0, 2: 1.0, 3: 1.0}
    assert hd95_per_class(m, m) == {1: 0.0, 2: 0.0, 3: 0.0}


def test_disjoint_masks():
    a, b = square(0, 0), square(40, 40)
    assert dice_per_class(a, b, classes=(1,)) == {1: 0.0}
    assert hd95_per_class(a, b, classes=(1,))[1] > 20


def test_partial_overlap_dice():
    a, b = square(0, 0, side=10), square(0, 5, side=10)   # overlap 50 of 100 + 100
    assert dice_per_class(a, b, classes=(1,))[1] == pytest.approx(0.5)


@pytest.mark.parametrize("shift", [1, 3, 5])
def test_square_shifted_gives_hd95_equal_to_shift(shift):
    a, b = square(20, 20), square(20, 20 + shift)
    assert hd95_per_class(a, b, classes=(1,))[1] == pytest.approx(shift)
    assert hd95_per_class(b, a, classes=(1,))[1] == pytest.approx(shift)   # symmetric


def test_diagonal_shift():
    # boundary to boundary, the sides are 3 and 4 px apart; only the corners are 5 apart
    a, b = square(10, 10, side=30), square(13, 14, side=30)
    assert hd95_per_class(a, b, classes=(1,))[1] == pytest.approx(4.0)
    d = surface_distances(a == 1, b == 1)
    assert d.max() == pytest.approx(5.0)


def test_empty_cases():
    empty = np.zeros((32, 32), np.uint8)
    some = square(5, 5, side=8, size=32)
    assert dice_per_class(empty, empty) == {1: 1.0, 2: 1.0, 3: 1.0}
    assert hd95_per_class(empty, empty) == {1: 0.0, 2: 0.0, 3: 0.0}
    assert dice_per_class(some, empty, classes=(1,)) == {1: 0.0}
    assert dice_per_class(empty, some, classes=(1,)) == {1: 0.0}
    assert math.isnan(hd95_per_class(some, empty, classes=(1,))[1])
    assert math.isnan(hd95_per_class(empty, some, classes=(1,))[1])


def test_spacing_scales_distances():
    a, b = square(20, 20), square(20, 23)
    assert hd95_per_class(a, b, (1,), spacing=1.5)[1] == pytest.approx(4.5)


def test_surface_of_a_square():
    s = surface(square(2, 2, side=5, size=9))
    assert s.sum() == 16 and not s[4, 4]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        dice_per_class(np.zeros((4, 4)), np.zeros((4, 5)))


def test_evaluate_masks_averages_per_image():
    t = np.stack([three_class_mask(), three_class_mask()])
    p = t.copy()
    p[1][p[1] == 1] = 0                      # second image: RV missed completely
    res = evaluate_masks(p, t, names=["a", "b"])
    assert res["n_images"] == 2
    assert res["dice"]["RV"] == pytest.approx(0.5)
    assert res["dice"]["Myo"] == pytest.approx(1.0) and res["dice"]["LV"] == pytest.approx(1.0)
    assert res["dice"]["mean"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert res["hd95"]["RV"] == 0.0 and res["hd95_undefined"]["RV"] == 1
    assert res["hd95"]["mean"] == 0.0
    assert [r["name"] for r in res["per_image"]] == ["a", "b"]
    assert res["per_image"][1]["dice"]["RV"] == 0.0
    assert math.isnan(res["per_image"][1]["hd95"]["RV"])
    assert set(res["dice"]) == set(res["hd95"]) == {"RV", "Myo", "LV", "mean"}
    json.dumps(res)                          # JSON friendly


def test_evaluate_masks_all_undefined_gives_nan_without_warning():
    t = np.zeros((1, 16, 16), np.uint8)
    p = t.copy()
    p[0, 2:6, 2:6] = 3
    with np.errstate(all="raise"):
        res = evaluate_masks(p, t)
    assert math.isnan(res["hd95"]["LV"]) and res["dice"]["LV"] == 0.0
    assert res["dice"]["RV"] == 1.0 and res["per_image"][0]["name"] == "0"


def test_all_present_scores_only_slices_with_every_structure():
    full = three_class_mask()
    no_rv = full.copy()
    no_rv[no_rv == 1] = 0                    # an apical slice: no RV in the ground truth
    t = np.stack([full, full, no_rv])
    p = np.stack([full, full, full])         # the third prediction invents an RV: Dice 0
    p[1][p[1] == 2] = 0                      # the second misses the myocardium
    res = evaluate_masks(p, t)
    assert res["dice"]["RV"] == pytest.approx(2 / 3)
    sub = res["all_present"]
    assert sub["n_images"] == 2
    assert sub["dice"]["RV"] == 1.0 and sub["dice"]["Myo"] == pytest.approx(0.5)
    assert sub["dice"]["mean"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert evaluate_masks(p[:2], t[:2])["all_present"]["n_images"] == 2
    assert res["presence"] == {"RV": {"absent": 1, "invented": 1, "missed": 0},
                               "Myo": {"absent": 0, "invented": 0, "missed": 1},
                               "LV": {"absent": 0, "invented": 0, "missed": 0}}


def test_absent_structures_counted_at_the_ends_of_their_stacks():
    from cmr.metrics import at_stack_ends
    names = [f"patient001_frame01_slice{i:02d}" for i in (3, 1, 9, 2, 5, 8)] + \
        ["patient002_frame12_slice04", "patient002_frame12_slice07"]
    # patient001's stack here is 1 2 3 5 8 9: ends 1 2 8 9; patient002 has only two slices
    assert at_stack_ends(names).tolist() == [False, True, True, True, False, True, True, True]
    assert at_stack_ends(["0", "1"]) is None and at_stack_ends([]) is None
    from cmr.metrics import stack_positions
    assert stack_positions(names[:2]) == [("patient001_frame01", 3), ("patient001_frame01", 1)]
    full = three_class_mask()
    no_rv = full.copy()
    no_rv[no_rv == 1] = 0
    t = np.stack([no_rv, full, no_rv, full, full, full, full, full])   # RV absent: slices 3, 9
    p = np.stack([full] * 8)                                           # RV drawn everywhere
    pres = evaluate_masks(p, t, names)["presence"]["RV"]
    assert pres == {"absent": 2, "invented": 2, "missed": 0, "absent_at_ends": 1,
                    "invented_at_ends": 1}
    assert "absent_at_ends" not in evaluate_masks(p, t)["presence"]["RV"]   # names "0", "1", ..


# ------------------------------------------------------------------ ACDC's per-volume metric
def _volume_case():
    """Patient p1, frames 01 and 02, three slices each; frame 01 has the larger LV (ED)."""
    names, targets, preds = [], [], []
    for frame, lv_side in (("01", 8), ("02", 4)):
        for s in (1, 2, 3):
            t = np.zeros((16, 16), np.uint8)
            t[2:2 + lv_side, 2:2 + lv_side] = 3
            t[12:15, 12:15] = 1 if s != 3 else 0        # no RV on the last slice
            p = t.copy()
            if s == 2:
                p[2:2 + lv_side, 2] = 0                  # one LV column missed on slice 2
            names.append(f"p1_frame{frame}_slice{s}")
            targets.append(t)
            preds.append(p)
    return names, np.stack(preds), np.stack(targets)


def test_volume_dice_is_computed_over_each_volume_then_averaged():
    from cmr.metrics import volume_metrics
    names, preds, targets = _volume_case()
    order = [5, 0, 3, 1, 4, 2]                          # the slices' order must not matter
    vol = volume_metrics(preds[order], targets[order], [names[i] for i in order])
    assert vol["n_volumes"] == 2 and vol["complete"]
    by_name = {v["volume"]: v for v in vol["per_volume"]}
    for frame, side in (("01", 8), ("02", 4)):
        v = by_name[f"p1_frame{frame}"]
        truth, found = 3 * side * side, 3 * side * side - side
        assert v["dice"]["LV"] == pytest.approx(2 * found / (truth + found))
        assert v["dice"]["RV"] == 1.0 and v["dice"]["Myo"] == 1.0    # Myo: empty in both
        assert v["n_slices"] == 3 and v["patient"] == "p1"
    assert by_name["p1_frame01"]["phase"] == "ED" and by_name["p1_frame02"]["phase"] == "ES"
    lv = [by_name[f"p1_frame{f}"]["dice"]["LV"] for f in ("01", "02")]
    assert vol["dice"]["LV"] == pytest.approx(np.mean(lv))
    assert vol["dice"]["mean"] == pytest.approx((1 + 1 + np.mean(lv)) / 3)
    assert vol["phases"]["ED"]["dice"]["LV"] == pytest.approx(lv[0])
    assert vol["phases"]["ES"]["n_volumes"] == 1
    assert "hd95" not in vol and "hd95" not in vol["per_volume"][0]
    json.dumps(vol, allow_nan=False)


def test_volume_metrics_flag_gaps_and_unnamed_slices():
    from cmr.metrics import volume_metrics
    names, preds, targets = _volume_case()
    keep = [0, 2, 3, 4, 5]                              # frame 01 loses its slice 2
    vol = volume_metrics(preds[keep], targets[keep], [names[i] for i in keep])
    assert not vol["complete"]
    assert volume_metrics(preds, targets, [f"img{i}" for i in range(6)]) is None
    one = volume_metrics(preds[:3], targets[:3], names[:3])   # one frame: phase unknown
    assert one["per_volume"][0]["phase"] is None and one["phases"] == {}


def test_volume_hd95_against_brute_force():
    from cmr.metrics import volume_metrics
    rng = np.random.default_rng(0)
    t = np.zeros((4, 12, 12), np.uint8)
    t[1:3, 3:9, 3:8] = 2
    p = t.copy()
    p[0, 4:6, 4:6] = 2                                  # an extra blob one slice up
    p[2, 3:5, 3:9] = 0
    p = np.where(rng.random(p.shape) < 0.03, 2, p).astype(np.uint8)
    spacing = 2.5
    names = [f"q_frame01_slice{s}" for s in range(1, 5)]
    got = volume_metrics(p, t, names, slice_spacing=spacing)["per_volume"][0]["hd95"]["Myo"]

    def boundary(m):
        pts = []
        for z, y, x in zip(*np.nonzero(m)):
            for dz, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                zz, yy, xx = z + dz, y + dy, x + dx
                inside = 0 <= zz < m.shape[0] and 0 <= yy < m.shape[1] and 0 <= xx < m.shape[2]
                if not inside or not m[zz, yy, xx]:
                    pts.append((z * spacing, y, x))
                    break
        return np.array(pts, float)
    a, b = boundary(p == 2), boundary(t == 2)
    d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    expected = np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)
    assert got == pytest.approx(expected)


def test_acdc96vol_volumes_are_whole_and_their_phases_are_acdcs():
    """On the real acdc96vol, ground truth scored against itself: 140 whole volumes (70
    patients x ED/ES), Dice 1, and the frame with the larger LV is frame01 (in the ACDC
    release every patient's ED frame is its first)."""
    import os
    from pathlib import Path
    from cmr import data
    from cmr.metrics import volume_metrics
    root = os.environ.get("CMR_DATA")
    if not root or not (Path(root) / "acdc96vol").is_dir():
        pytest.skip("CMR_DATA with acdc96vol/ not set: real-data test skipped")
    split = data.load_manifest_folder(Path(root) / "acdc96vol")
    vol = volume_metrics(split.masks, split.masks, split.names)
    assert vol["n_volumes"] == 140 and vol["complete"]
    assert vol["dice"]["mean"] == 1.0
    assert vol["phases"]["ED"]["n_volumes"] == vol["phases"]["ES"]["n_volumes"] == 70
    assert all((v["frame"] == "01") == (v["phase"] == "ED") for v in vol["per_volume"])


def test_evaluate_prints_the_volume_scores_and_says_when_volumes_are_incomplete():
    from cmr.evaluate import format_table
    names, preds, targets = _volume_case()
    result = evaluate_masks(preds, targets, names)
    from cmr.metrics import volume_metrics
    result["volumes"] = volume_metrics(preds, targets, names, slice_spacing=2.0)
    text = format_table(result)
    assert "per 3-D volume (ACDC's metric), mean over 2 volumes" in text
    assert "Dice 3D" in text and "HD95 3D" in text and "  ED" in text and "  ES" in text
    assert "not ACDC's figures" not in text
    keep = [0, 2, 3, 4, 5]
    result["volumes"] = volume_metrics(preds[keep], targets[keep], [names[i] for i in keep])
    assert "not ACDC's figures" in format_table(result)
