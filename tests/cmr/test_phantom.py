"""Tests of cmr.phantom: shapes, labels, anatomy and determinism."""

import time

import numpy as np
from scipy import ndimage

from cmr.data import Split
from cmr.phantom import make_phantom, phantom_slice


def test_shapes_types_and_names():
    s = make_phantom(6, size=96, seed=0)
    assert isinstance(s, Split) and len(s) == 6
    assert s.images.shape == (6, 96, 96) and s.images.dtype == np.float32
    assert s.masks.shape == (6, 96, 96) and s.masks.dtype == np.uint8
    assert s.names[0] == "phantom0000" and s.names[-1] == "phantom0005"
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0


def test_every_class_present_in_every_slice():
    s = make_phantom(40, seed=3)
    assert set(np.unique(s.masks)) == {0, 1, 2, 3}
    for m in s.masks:
        counts = np.bincount(m.ravel(), minlength=4)
        assert counts.size == 4 and (counts > 20).all()


def test_anatomy():
    """The myocardium surrounds the LV, and the RV touches the myocardium."""
    s = make_phantom(10, seed=1)
    for m in s.masks:
        lv, myo, rv = m == 3, m == 2, m == 1
        ring = ndimage.binary_dilation(lv) & ~lv
        assert myo[ring].mean() > 0.95                          # LV enclosed by Myo
        assert (ndimage.binary_dilation(myo) & rv).any()        # RV next to Myo
        assert not (ndimage.binary_dilation(lv) & rv).any()     # RV never touches LV
        assert ndimage.label(lv)[1] == 1                        # one LV blob


def test_contrast_blood_brighter_than_myocardium():
    s = make_phantom(10, seed=2)
    for img, m in zip(s.images, s.masks):
        assert img[m == 3].mean() > img[m == 2].mean() + 0.2
        assert img[m == 1].mean() > img[m == 2].mean() + 0.1


def test_deterministic_per_seed_and_prefix_stable():
    a, b = make_phantom(8, seed=11), make_phantom(8, seed=11)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    c = make_phantom(8, seed=12)
    assert not np.array_equal(a.masks, c.masks)
    short = make_phantom(3, seed=11)
    assert np.array_equal(short.images, a.images[:3])


def test_single_slice_and_other_size():
    img, mask = phantom_slice(np.random.default_rng(0), size=64)
    assert img.shape == mask.shape == (64, 64)
    assert set(np.unique(mask)) == {0, 1, 2, 3}
    assert len(make_phantom(0)) == 0


def test_speed():
    t = time.perf_counter()
    make_phantom(300, seed=0)
    assert time.perf_counter() - t < 5.0
