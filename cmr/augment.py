"""Random data augmentation for image/mask batches.

Geometric augmentation (rotation, zoom, shift, flips and elastic deformation)
is composed into ONE coordinate map per image: for every output pixel ``p``
the map gives the source position

    src(p) = c + A (p - c) + t + d(p)

where ``c`` is the image centre, ``A`` = rotation / zoom (with optional
flips), ``t`` a shift and ``d`` a smooth random elastic displacement field.
The image is resampled with bilinear interpolation and the mask with
nearest-neighbour interpolation *at the same positions*, so the two stay
aligned and the mask keeps exactly its original label values.  Composing the
transforms means each image is interpolated only once (no repeated blurring).

Intensity augmentation (gamma, contrast, brightness, optional noise) touches
the image only.

All randomness comes from the ``np.random.Generator`` passed in, so a batch
is reproducible from its seed.

Typical use::

    aug = Augmenter(AugmentConfig(), seed=0)
    x_aug, y_aug = aug(x, y)        # x: (B, H, W) or (B, C, H, W); y: (B, H, W)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "augment_batch",
    "sample_coordinate_maps",
    "warp",
    "adjust_intensity",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of every augmentation; ``AugmentConfig.none()`` disables all.

    Attributes:
        enabled: master switch; if False inputs are returned untouched.
        rotation_deg: rotation angle drawn uniformly in +-rotation_deg.
        zoom_range: scale factor drawn uniformly in this range (>1 enlarges).
        shift_px: shift drawn uniformly in +-shift_px pixels along each axis.
        flip_horizontal: mirror left-right with probability 1/2.  Off by
            default: in short-axis views left and right have anatomical
            meaning (the RV lies on one side of the LV), so flipped images
            are not realistic.
        flip_vertical: mirror up-down with probability 1/2 (off by default).
        elastic_alpha: elastic deformation strength in the convention of
            Simard et al. (2003): the displacement field is uniform noise in
            [-1, 1] smoothed by a Gaussian of sd ``elastic_sigma`` and
            multiplied by ``alpha``.  The default 60 with sigma 8 moves
            pixels by about 1.4 px (RMS, per axis), smoothly.  0 disables it.
        elastic_sigma: smoothness (pixels) of the elastic displacement field.
        gamma_range: gamma exponent drawn log-uniformly in this range.
        contrast: contrast factor drawn uniformly in 1 +- contrast
            (applied around the image mean).
        brightness: offset drawn uniformly in +-brightness.
        noise_std: sd of added Gaussian noise (0 = none).
        fill_mode: how positions outside the image are filled, a
            ``scipy.ndimage`` mode ("reflect", "nearest", "constant", ...).
            The same mode is used for image and mask, so they stay aligned.
    """

    enabled: bool = True
    rotation_deg: float = 15.0
    zoom_range: tuple[float, float] = (0.9, 1.1)
    shift_px: float = 0.0
    flip_horizontal: bool = False
    flip_vertical: bool = False
    elastic_alpha: float = 60.0
    elastic_sigma: float = 8.0
    gamma_range: tuple[float, float] = (0.8, 1.25)
    contrast: float = 0.15
    brightness: float = 0.1
    noise_std: float = 0.0
    fill_mode: str = "reflect"

    @classmethod
    def none(cls) -> "AugmentConfig":
        """A configuration that leaves batches unchanged."""
        return cls(enabled=False)

    @classmethod
    def strong(cls) -> "AugmentConfig":
        """Wider ranges than the defaults (``cmr.train --augment strong``): rotation +-30 deg,
        zoom 0.8-1.25, shift +-8 px, gamma 0.7-1.4, contrast +-25 %, brightness +-0.15,
        noise sd 0.02; the same elastic field."""
        return cls(rotation_deg=30.0, zoom_range=(0.8, 1.25), shift_px=8.0,
                   gamma_range=(0.7, 1.4), contrast=0.25, brightness=0.15, noise_std=0.02)

    @classmethod
    def named(cls, name) -> "AugmentConfig":
        """The configuration called ``name``: "default", "strong" or "none" (True and False,
        as older training configs say, are "default" and "none")."""
        name = {True: "default", False: "none"}.get(name, name)
        if name not in ("default", "strong", "none"):
            raise ValueError(f"unknown augmentation {name!r}: expected default, strong or none")
        return {"default": cls, "strong": cls.strong, "none": cls.none}[name]()

    def geometric_only(self) -> "AugmentConfig":
        """The same geometry with every intensity change switched off."""
        return replace(self, gamma_range=(1.0, 1.0), contrast=0.0, brightness=0.0, noise_std=0.0)

    @property
    def has_geometry(self) -> bool:
        """True if some geometric transform is switched on."""
        return (self.rotation_deg != 0 or tuple(self.zoom_range) != (1.0, 1.0)
                or self.shift_px != 0 or self.flip_horizontal or self.flip_vertical
                or self.elastic_alpha != 0)

    @property
    def has_intensity(self) -> bool:
        """True if some intensity change is switched on."""
        return (tuple(self.gamma_range) != (1.0, 1.0) or self.contrast != 0
                or self.brightness != 0 or self.noise_std != 0)


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def _interp_matrix(n_out: int, n_in: int, factor: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation from a coarse grid.

    Output pixel ``i`` sits at coarse coordinate ``i / factor``.
    """
    pos = np.arange(n_out) / factor
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1.0 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def _elastic_fields(n: int, shape: tuple[int, int], rng: np.random.Generator,
                    alpha: float, sigma: float) -> np.ndarray:
    """Random smooth displacement fields of shape (n, 2, H, W), in pixels.

    Simard's recipe (uniform noise, Gaussian smoothing, times alpha) is
    carried out on a grid ``f`` times coarser (white noise averaged over
    f x f pixels has 1/f of the sd, hence the division by ``f``) and then
    upsampled bilinearly with two small matrix products: same statistics,
    a fraction of the cost of filtering at full resolution.
    """
    h, w = shape
    f = max(1, int(sigma // 2))
    hc, wc = (h, w) if f == 1 else (-(-h // f) + 1, -(-w // f) + 1)
    noise = rng.uniform(-1.0, 1.0, size=(n, 2, hc, wc)).astype(np.float32)
    field = ndimage.gaussian_filter(noise, (0, 0, sigma / f, sigma / f), mode="reflect")
    field *= np.float32(alpha / f)
    if f > 1:
        field = _interp_matrix(h, hc, f) @ field @ _interp_matrix(w, wc, f).T
    return field


def sample_coordinate_maps(n: int, shape: tuple[int, int], rng: np.random.Generator,
                           config: AugmentConfig) -> np.ndarray:
    """Draw ``n`` random coordinate maps, shape (n, 2, H, W), float32.

    ``maps[i, :, y, x]`` is the (row, column) source position that output
    pixel (y, x) of image ``i`` is read from.  With a configuration without
    geometry the maps are the identity.
    """
    h, w = shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    angle = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg, size=n))
    zoom = rng.uniform(config.zoom_range[0], config.zoom_range[1], size=n)
    shift = rng.uniform(-config.shift_px, config.shift_px, size=(n, 2))
    flip_y = np.where(config.flip_vertical & (rng.random(n) < 0.5), -1.0, 1.0)
    flip_x = np.where(config.flip_horizontal & (rng.random(n) < 0.5), -1.0, 1.0)

    # A = R(angle) / zoom, then flips act on the output coordinates.
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    a = np.empty((n, 2, 2))
    a[:, 0, 0], a[:, 0, 1] = cos * flip_y, -sin * flip_x
    a[:, 1, 0], a[:, 1, 1] = sin * flip_y, cos * flip_x

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rel = np.stack([yy - cy, xx - cx])                        # (2, H, W)
    maps = np.einsum("nij,jhw->nihw", a.astype(np.float32), rel)
    maps[:, 0] += np.float32(cy) + shift[:, 0, None, None].astype(np.float32)
    maps[:, 1] += np.float32(cx) + shift[:, 1, None, None].astype(np.float32)
    if config.elastic_alpha:
        maps += _elastic_fields(n, shape, rng, config.elastic_alpha, config.elastic_sigma)
    return maps


def warp(batch: np.ndarray, maps: np.ndarray, order: int, mode: str = "reflect") -> np.ndarray:
    """Resample each image of ``batch`` at its coordinate map.

    Args:
        batch: (B, H, W) or (B, C, H, W); every channel of image ``i`` is
            resampled with ``maps[i]``.
        maps: (B, 2, H, W) source positions from :func:`sample_coordinate_maps`.
        order: 1 bilinear (images), 0 nearest neighbour (masks: no new labels).
        mode: ``scipy.ndimage`` boundary mode.

    Returns:
        An array of the same shape and dtype as ``batch``.
    """
    out = np.empty_like(batch)
    flat_in = batch.reshape(batch.shape[0], -1, *batch.shape[-2:])
    flat_out = out.reshape(flat_in.shape)
    for i in range(flat_in.shape[0]):
        for c in range(flat_in.shape[1]):
            ndimage.map_coordinates(flat_in[i, c], maps[i], output=flat_out[i, c],
                                    order=order, mode=mode, prefilter=False)
    return out


# ---------------------------------------------------------------------------
# Intensity
# ---------------------------------------------------------------------------


def adjust_intensity(images: np.ndarray, rng: np.random.Generator,
                     config: AugmentConfig) -> np.ndarray:
    """Random gamma, contrast, brightness and noise; result clipped to [0, 1].

    One set of values is drawn per image (shared by its channels).
    Images are expected in [0, 1].
    """
    n = images.shape[0]
    shape = (n,) + (1,) * (images.ndim - 1)
    lg0, lg1 = np.log(config.gamma_range[0]), np.log(config.gamma_range[1])
    gamma = np.exp(rng.uniform(lg0, lg1, size=n)).reshape(shape).astype(np.float32)
    contrast = rng.uniform(1 - config.contrast, 1 + config.contrast, size=n).reshape(shape)
    bright = rng.uniform(-config.brightness, config.brightness, size=n).reshape(shape)
    out = np.power(np.clip(images, 0.0, 1.0), gamma)
    mean = out.mean(axis=tuple(range(1, images.ndim)), keepdims=True)
    out = (out - mean) * contrast.astype(np.float32) + mean + bright.astype(np.float32)
    if config.noise_std:
        out = out + rng.normal(0.0, config.noise_std, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(images.dtype, copy=False)


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def augment_batch(images: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator,
                  config: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray | None]:
    """Augment one batch.

    Args:
        images: float array (B, H, W) or (B, C, H, W), values in [0, 1].
        masks: integer labels (B, H, W), or None.
        rng: the random generator (its state advances).
        config: strengths; with ``config.enabled`` False the very same input
            arrays are returned.

    Returns:
        ``(images, masks)``: new arrays of the input shapes and dtypes.
    """
    if not config.enabled:
        return images, masks
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (B, H, W) or (B, C, H, W), got {images.shape}")
    if masks is not None and (masks.shape[0] != images.shape[0]
                              or masks.shape[-2:] != images.shape[-2:]):
        raise ValueError(f"masks {masks.shape} do not match images {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32)
    if config.has_geometry:
        maps = sample_coordinate_maps(images.shape[0], images.shape[-2:], rng, config)
        images = warp(images, maps, order=1, mode=config.fill_mode)
        if masks is not None:
            masks = warp(masks, maps, order=0, mode=config.fill_mode)
    else:
        images = images.copy()
        masks = None if masks is None else masks.copy()
    if config.has_intensity:
        images = adjust_intensity(images, rng, config)
    return images, masks


class Augmenter:
    """Callable that augments batches with its own random generator.

    Args:
        config: augmentation strengths (default :class:`AugmentConfig`).
        seed: seed of the generator; or pass ``rng`` to share one.
        rng: an existing ``np.random.Generator`` (takes precedence over seed).
    """

    def __init__(self, config: AugmentConfig | None = None, seed: int | None = 0,
                 rng: np.random.Generator | None = None) -> None:
        self.config = AugmentConfig() if config is None else config
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def __call__(self, images: np.ndarray,
                 masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        return augment_batch(images, masks, self.rng, self.config)

    def __repr__(self) -> str:
        return f"Augmenter({self.config!r})"
