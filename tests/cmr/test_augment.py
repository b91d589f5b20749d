"""Tests of cmr.augment: label safety, alignment, reproducibility, speed."""

import time

import numpy as np
import pytest

from cmr.augment import (AugmentConfig, Augmenter, adjust_intensity, augment_batch,
                         sample_coordinate_maps, warp)
from cmr.phantom import make_phantom


@pytest.fixture(scope="module")
def batch():
    s = make_phantom(25, seed=4)
    return s.images, s.masks


def test_mask_values_stay_in_the_original_set(batch):
    images, masks = batch
    rng = np.random.default_rng(0)
    for cfg in (AugmentConfig(), AugmentConfig.strong(),
                AugmentConfig(rotation_deg=45, zoom_range=(0.7, 1.3), shift_px=5,
                              flip_horizontal=True, flip_vertical=True, elastic_alpha=200)):
        _, m = augment_batch(images, masks, rng, cfg)
        assert m.dtype == masks.dtype and m.shape == masks.shape
        assert set(np.unique(m)) <= set(np.unique(masks))
    sparse = np.where(masks == 2, 7, masks * 20).astype(np.uint8)   # labels {0, 7, 20, 60}
    _, m = augment_batch(images, sparse, rng, AugmentConfig())
    assert set(np.unique(m)) <= {0, 7, 20, 60}


def test_image_and_mask_are_warped_alike(batch):
    _, masks = batch
    images = masks.astype(np.float32) * 0.33
    cfg = AugmentConfig(rotation_deg=30, shift_px=3, elastic_alpha=120).geometric_only()
    x, y = augment_batch(images, masks, np.random.default_rng(1), cfg)
    assert not np.array_equal(y, masks)                        # something did move
    nearest = np.rint(x / 0.33).astype(np.uint8)
    assert (nearest == y).mean() > 0.97                       # same geometry


def test_channels_share_the_warp(batch):
    images, masks = batch
    two = np.stack([images, 1.0 - images], axis=1)
    x, y = augment_batch(two, masks, np.random.default_rng(2), AugmentConfig().geometric_only())
    assert x.shape == two.shape
    np.testing.assert_allclose(x[:, 1], 1.0 - x[:, 0], atol=1e-5)


def test_reproducible_by_seed(batch):
    images, masks = batch
    a = augment_batch(images, masks, np.random.default_rng(5), AugmentConfig())
    b = augment_batch(images, masks, np.random.default_rng(5), AugmentConfig())
    c = augment_batch(images, masks, np.random.default_rng(6), AugmentConfig())
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    aug1, aug2 = Augmenter(seed=9), Augmenter(seed=9)
    assert np.array_equal(aug1(images, masks)[0], aug2(images, masks)[0])


def test_disabled_config_returns_inputs_unchanged(batch):
    images, masks = batch
    x, y = augment_batch(images, masks, np.random.default_rng(0), AugmentConfig.none())
    assert x is images and y is masks
    zero = AugmentConfig(rotation_deg=0, zoom_range=(1.0, 1.0), elastic_alpha=0).geometric_only()
    x, y = augment_batch(images, masks, np.random.default_rng(0), zero)
    assert np.array_equal(x, images) and np.array_equal(y, masks) and x is not images


def test_identity_maps_reproduce_the_batch(batch):
    images, masks = batch
    cfg = AugmentConfig(rotation_deg=0, zoom_range=(1.0, 1.0), elastic_alpha=0)
    maps = sample_coordinate_maps(len(images), images.shape[1:], np.random.default_rng(0), cfg)
    np.testing.assert_allclose(warp(images, maps, order=1), images, atol=1e-6)
    assert np.array_equal(warp(masks, maps, order=0), masks)


def test_flips_are_exact(batch):
    images, masks = batch
    cfg = AugmentConfig(rotation_deg=0, zoom_range=(1.0, 1.0), elastic_alpha=0,
                        flip_horizontal=True).geometric_only()
    x, y = augment_batch(images, masks, np.random.default_rng(3), cfg)
    flipped = [np.array_equal(y[i], masks[i, :, ::-1]) for i in range(len(masks))]
    kept = [np.array_equal(y[i], masks[i]) for i in range(len(masks))]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    for i in np.flatnonzero(flipped):
        np.testing.assert_allclose(x[i], images[i, :, ::-1], atol=1e-6)


def test_warp_reads_source_positions_from_the_maps():
    img = np.random.default_rng(0).random((1, 9, 9)).astype(np.float32)
    cfg = AugmentConfig(rotation_deg=0, zoom_range=(1.0, 1.0), elastic_alpha=0)
    maps = sample_coordinate_maps(1, (9, 9), np.random.default_rng(0), cfg)
    c = 4.0
    # clockwise quarter turn: out[y, x] = img[8 - x, y]
    rotated = np.stack([2 * c - maps[:, 1], maps[:, 0]], axis=1)
    np.testing.assert_allclose(warp(img, rotated, order=1)[0], np.rot90(img[0], -1), atol=1e-6)


def test_intensity_jitter_touches_image_only(batch):
    images, masks = batch
    cfg = AugmentConfig(rotation_deg=0, zoom_range=(1.0, 1.0), elastic_alpha=0,
                        gamma_range=(0.5, 2.0), contrast=0.3, brightness=0.2, noise_std=0.05)
    x, y = augment_batch(images, masks, np.random.default_rng(0), cfg)
    assert np.array_equal(y, masks)
    assert not np.allclose(x, images)
    assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    out = adjust_intensity(images, np.random.default_rng(0), cfg)
    assert out.shape == images.shape


def test_images_without_masks(batch):
    images, _ = batch
    x, y = augment_batch(images, None, np.random.default_rng(0), AugmentConfig())
    assert y is None and x.shape == images.shape
    with pytest.raises(ValueError):
        augment_batch(images[0], None, np.random.default_rng(0), AugmentConfig())


def test_elastic_displacement_has_the_simard_size():
    cfg = AugmentConfig(rotation_deg=0, zoom_range=(1.0, 1.0), elastic_alpha=60, elastic_sigma=8)
    maps = sample_coordinate_maps(50, (96, 96), np.random.default_rng(0), cfg)
    grid = np.mgrid[0:96, 0:96].astype(np.float32)
    rms = np.sqrt(((maps - grid) ** 2).mean())
    assert 0.8 < rms < 2.2          # ~1.4 px per axis, same as Simard's full-resolution recipe


def test_speed(batch):
    images, masks = batch
    rng = np.random.default_rng(0)
    augment_batch(images, masks, rng, AugmentConfig())
    times = []
    for _ in range(5):
        t = time.perf_counter()
        augment_batch(images, masks, rng, AugmentConfig())
        times.append(time.perf_counter() - t)
    assert min(times) < 0.25        # typically ~35 ms on a slow 2-core machine


def test_named_configurations():
    assert AugmentConfig.named("default") == AugmentConfig() == AugmentConfig.named(True)
    assert AugmentConfig.named("none") == AugmentConfig.none() == AugmentConfig.named(False)
    strong = AugmentConfig.named("strong")
    assert strong.rotation_deg > AugmentConfig().rotation_deg and strong.shift_px > 0
    assert strong.has_geometry and strong.has_intensity and strong.noise_std > 0
    with pytest.raises(ValueError, match="unknown augmentation 'wild'"):
        AugmentConfig.named("wild")

