"""Synthetic cardiac short-axis slices ("phantoms") with exact labels.

The phantoms are cartoons of a mid-ventricular short-axis cine MR slice:

* a bright, roughly elliptical left-ventricle blood pool (label 3, LV);
* a darker myocardial ring around it whose thickness varies around the
  circumference (label 2, Myo);
* a bright crescent-shaped right ventricle wrapping part of the myocardium
  on one side (label 1, RV), with a thin dark free wall (background);
* textured surrounding tissue inside a body outline, with a few bright
  blobs (fat, liver) - all background (label 0);
* partial-volume blur, a smooth multiplicative bias field and Gaussian
  noise, then the same 1st..99th percentile windowing as the real data.

Size, position, rotation, shape and contrast are random.  Everything is
drawn from ``np.random.default_rng`` streams derived from the seed; image
``i`` depends only on ``(seed, i)``, so ``make_phantom(10, seed=s)`` starts
with the same 5 slices as ``make_phantom(5, seed=s)``.

They are useful for unit tests, for a quick demo without real data and for
checking that a network can learn at all.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .data import Split

__all__ = ["make_phantom", "phantom_slice"]


_CHUNK = 128  # images rendered together (vectorised over the chunk)


def _interp_matrix(n_out: int, n_in: int, factor: int) -> np.ndarray:
    """(n_out, n_in) matrix doing 1-D linear interpolation of a coarse grid.

    Output pixel ``i`` sits at coarse coordinate ``i / factor``.
    """
    pos = np.arange(n_out) / factor
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def _smooth_fields(noise: np.ndarray, size: int, factor: int, sigma: float) -> np.ndarray:
    """Turn white noise (B, c, c) into zero-mean, unit-std smooth fields (B, size, size).

    For wide kernels the noise lives on a grid ``factor`` times coarser; it is
    filtered there and upsampled bilinearly (two small matrix products),
    which is much cheaper than filtering at full resolution and looks the same.
    """
    field = ndimage.gaussian_filter(noise, (0.0, sigma / factor, sigma / factor), mode="wrap")
    if factor > 1:
        m = _interp_matrix(size, noise.shape[-1], factor).astype(np.float32)
        field = m @ field @ m.T
    field = field - field.mean(axis=(1, 2), keepdims=True)
    return field / (field.std(axis=(1, 2), keepdims=True) + np.float32(1e-12))


#: (name, smoothing sigma for a 96x96 slice) of each random texture field.
_FIELDS = (("tissue", 3.0), ("grain", 1.0), ("blobs", 6.0), ("bias", 20.0))

#: Uniformly drawn parameters: name -> (low, high).  Lengths are for 96x96.
_UNIFORM = {
    "theta": (0.0, 2 * np.pi),     # orientation of the heart
    "a": (7.0, 13.0),              # LV semi-axis (pixels)
    "b_ratio": (0.8, 1.0),         # second semi-axis / first
    "wobble": (0.0, 2 * np.pi),    # phase of the LV boundary wobble
    "t0": (3.0, 7.0),              # mean myocardial thickness (pixels)
    "t1": (0.1, 0.3),              # relative thickness variation
    "t1_phase": (0.0, 2 * np.pi),
    "t2_phase": (0.0, 2 * np.pi),
    "rv_turn": (-0.3, 0.3),        # RV direction relative to the heart axis
    "rv_d": (0.55, 0.85),          # RV centre distance / epicardial radius
    "rv_a": (1.05, 1.45),          # RV half-length along the septum / epi radius
    "rv_b": (0.65, 0.95),          # RV half-width / epi radius
    "body_ry": (0.5, 0.75),        # body outline semi-axes / image size
    "body_rx": (0.55, 0.85),
    "blob_level": (1.0, 1.6),      # threshold of the bright fat/liver blobs
    "blob_value": (0.55, 0.8),
    "blood": (0.7, 0.9),           # blood-pool brightness
    "wall_value": (0.15, 0.25),    # RV free wall
    "rv_factor": (0.85, 1.0),      # RV blood relative to LV blood
    "myo_value": (0.18, 0.3),      # myocardium
    "bias_strength": (0.1, 0.3),   # log-amplitude of the bias field
    "noise_sd": (0.015, 0.05),     # Gaussian noise
}
#: Normally drawn offsets (sd in pixels for 96x96): heart and body centre.
_NORMAL = {"cy": 4.0, "cx": 4.0, "body_cy": 3.0, "body_cx": 3.0}


def _factor(sigma: float) -> int:
    """Coarsening factor of the noise grid for a field smoothed with ``sigma``."""
    return max(1, int(sigma // 1.5))


def _draw(rng: np.random.Generator, size: int) -> dict:
    """Draw every random number of one phantom slice from ``rng``.

    Returns a dictionary of scalars (see ``_UNIFORM`` and ``_NORMAL``) plus the
    white noise behind each texture field and the pixel noise.
    """
    lows, highs = np.array(list(_UNIFORM.values())).T
    p = dict(zip(_UNIFORM, lows + (highs - lows) * rng.random(len(_UNIFORM))))
    p.update(zip(_NORMAL, np.array(list(_NORMAL.values())) * rng.standard_normal(len(_NORMAL))))
    for name, sigma in _FIELDS:
        f = _factor(sigma * size / 96.0)
        c = size if f == 1 else -(-size // f) + 1
        p["noise_" + name] = rng.standard_normal((c, c), dtype=np.float32)
    p["noise_pixel"] = rng.standard_normal((size, size), dtype=np.float32)
    return p


def _render(params: list[dict], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a chunk of phantoms, vectorised over the chunk.

    Everything is computed on (B, size, size) arrays; per-image parameters
    are (B, 1, 1) columns that broadcast against the pixel grid.
    """
    s = size / 96.0
    f32 = np.float32

    def col(key, scale=1.0):  # per-image scalar as a (B, 1, 1) float32 column
        return (np.array([p[key] for p in params]) * scale).astype(f32)[:, None, None]

    fields = {name: _smooth_fields(np.stack([p["noise_" + name] for p in params]), size,
                                   _factor(sigma * s), sigma * s)
              for name, sigma in _FIELDS}
    yy, xx = np.mgrid[0:size, 0:size].astype(f32)
    yy, xx = yy[None], xx[None]

    # --- left ventricle and myocardium, in polar coordinates around the LV ---
    cy, cx = size / 2 + col("cy", s), size / 2 + col("cx", s)
    theta = col("theta")
    a = col("a", s)
    b = a * col("b_ratio")
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)      # along the LV long axis
    v = -dx * np.sin(theta) + dy * np.cos(theta)     # across it
    r = np.sqrt(u * u + v * v)
    # cos/sin of the polar angle phi, and of its multiples, without trig calls
    c1 = np.divide(u, r, out=np.ones_like(r), where=r > 0)
    s1 = np.divide(v, r, out=np.zeros_like(r), where=r > 0)
    c2, s2 = c1 * c1 - s1 * s1, 2 * s1 * c1

    def sin_shift(sin_k, cos_k, key):  # sin(k*phi + phase)
        ph = col(key)
        return sin_k * np.cos(ph) + cos_k * np.sin(ph)

    # radius of the LV ellipse in direction phi, with a slight 3-fold wobble
    r_lv = a * b / np.sqrt((b * c1) ** 2 + (a * s1) ** 2)
    s3, c3 = s1 * (3 - 4 * s1 * s1), c1 * (4 * c1 * c1 - 3)
    r_lv = r_lv * (1.0 + 0.06 * sin_shift(s3, c3, "wobble"))
    # the myocardial thickness varies smoothly around the circumference
    t0 = col("t0", s)
    thickness = t0 * (1.0 + col("t1") * sin_shift(s1, c1, "t1_phase")
                      + 0.1 * sin_shift(s2, c2, "t2_phase"))
    lv = r <= r_lv
    heart = r <= r_lv + thickness
    myo = heart & ~lv

    # --- right ventricle: an ellipse beside the LV, minus the LV and myo ---
    mean_epi = (a + b) / 2 + t0
    rv_dir = theta + np.pi + col("rv_turn")          # the RV lies on one side
    d, ra, rb = mean_epi * col("rv_d"), mean_epi * col("rv_a"), mean_epi * col("rv_b")
    ry, rx = cy + d * np.sin(rv_dir), cx + d * np.cos(rv_dir)
    pp = (xx - rx) * np.cos(rv_dir) + (yy - ry) * np.sin(rv_dir)   # away from the LV
    qq = -(xx - rx) * np.sin(rv_dir) + (yy - ry) * np.cos(rv_dir)  # along the septum
    rv_ell = (pp / rb) ** 2 + (qq / ra) ** 2
    rv = (rv_ell <= 1.0) & ~heart
    # thin dark RV free wall (labelled background, as in real data)
    wall = (rv_ell > 1.0) & (rv_ell <= (1.0 + 2.2 * s / rb) ** 2) & ~heart

    mask = np.zeros(lv.shape, dtype=np.uint8)
    mask[rv] = 1
    mask[myo] = 2
    mask[lv] = 3

    # --- intensities ---------------------------------------------------------
    body = ((xx - size / 2 - col("body_cx", s)) / col("body_rx", size)) ** 2 \
        + ((yy - size / 2 - col("body_cy", s)) / col("body_ry", size)) ** 2 <= 1.0
    tissue = 0.32 + 0.07 * fields["tissue"] + 0.03 * fields["grain"]
    img = np.where(body, tissue, f32(0.04))
    blobs = (fields["blobs"] > col("blob_level")) & body & ~heart & ~rv
    img = np.where(blobs, col("blob_value"), img)
    blood = col("blood")
    img = np.where(wall, col("wall_value"), img)
    img = np.where(rv, blood * col("rv_factor"), img)
    img = np.where(myo, col("myo_value"), img)
    img = np.where(lv, blood, img)
    # papillary-muscle-like dark specks inside the LV blood pool
    specks = (fields["grain"] > 1.8) & lv & (r > 0.5 * r_lv)
    img = np.where(specks, img * f32(0.6), img)

    img = ndimage.gaussian_filter(img, (0.0, 0.75 * s, 0.75 * s))     # partial volume
    img *= np.exp(col("bias_strength") * fields["bias"])             # coil shading
    img += col("noise_sd") * np.stack([p["noise_pixel"] for p in params])

    # window to the 1st..99th percentile, as the real data were
    flat = img.reshape(len(params), -1)
    k1, k99 = int(0.01 * (flat.shape[1] - 1)), int(0.99 * (flat.shape[1] - 1))
    part = np.partition(flat, (k1, k99), axis=1)
    lo, hi = part[:, k1, None, None], part[:, k99, None, None]
    img = np.clip((img - lo) / np.maximum(hi - lo, f32(1e-6)), 0.0, 1.0)
    return img.astype(f32), mask


def phantom_slice(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom slice from ``rng``.

    Returns:
        ``(image, mask)``: float32 image in [0, 1] and uint8 labels 0..3,
        both of shape (size, size).
    """
    img, mask = _render([_draw(rng, size)], size)
    return img[0], mask[0]


def make_phantom(n: int, size: int = 96, seed: int = 0) -> Split:
    """Generate ``n`` synthetic short-axis slices.

    Args:
        n: number of slices.
        size: side length in pixels (shapes scale with it).
        seed: image ``i`` is a deterministic function of ``(seed, i)``.

    Returns:
        A :class:`~cmr.data.Split` with names ``phantom0000``...,
        float32 images in [0, 1] of shape (n, size, size), uint8 masks with
        labels 0 background, 1 RV, 2 Myo, 3 LV (each present in every slice),
        and one pseudo-patient per slice.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    # One independent random stream per image: image i depends on (seed, i) only.
    children = np.random.SeedSequence(seed).spawn(n)
    images = np.empty((n, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        params = [_draw(np.random.default_rng(c), size) for c in children[start:start + _CHUNK]]
        images[start:start + len(params)], masks[start:start + len(params)] = _render(params, size)
    names = [f"phantom{i:04d}" for i in range(n)]
    return Split(names=names, images=images, masks=masks, patients=list(names))
