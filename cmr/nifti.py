"""Segment whole NIfTI volumes with a U-Net trained on 96x96 crops.

A scanner's short-axis volume covers the whole chest; the models of ``cmr.train`` saw 96x96
crops around the heart, downscaled by 0.85 in-plane (the recipe of the coursework set and of
``cmr.prepare``), with each crop's intensities clipped to its 1st..99th percentile. So a
volume is segmented in four steps, each a function below:

1. ``scale_slices``: every slice ``volume[:, :, z]`` (the coursework orientation: the array
   as stored) downscaled by ``scale``;
2. ``find_heart``: the model itself finds the heart. It segments each whole scaled slice
   (the U-Net is fully convolutional), the centroid of everything it labels, over the volume,
   is a first centre; then it segments 96x96 crops around that centre and the centroid of
   those labels is the centre used (one centre for the volume, as in ``acdc96vol``, so that
   neighbouring slices line up);
3. ``segment_crops``: the 96x96 crop of every slice around that centre, normalised as the
   training crops were, segmented (one model or an ensemble, as ``cmr.predict``);
4. ``paste_back``: the crop's labels written into the scaled slice and mapped back onto the
   input's pixel grid (nearest neighbour), so that the label volume has the input's shape.

``predict_file`` writes the labels as a NIfTI file with the input's affine and header (data
type uint8, no intensity scaling): a viewer overlays it on the input as it is.
Needs ``nibabel`` (``pip install ".[acdc]"``); imported only when a NIfTI file is read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .data import CMRDataError
from .predict import predict_masks
from .prepare import CROP, SCALE

__all__ = ["is_nifti", "stem", "nifti_inputs", "scale_slices", "normalise_crop", "crop_at",
           "find_heart", "segment_crops", "paste_back", "segment_volume", "predict_file"]

DEPTH_MULTIPLE = 16        # the U-Net halves the size four times: sizes must divide by 16


def is_nifti(path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def stem(path) -> str:
    """A NIfTI file's name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    return name[:-7] if name.lower().endswith(".nii.gz") else name[:-4]


def nifti_inputs(path) -> list[Path]:
    """The NIfTI files that ``--input`` names: one file, or every ``.nii``/``.nii.gz`` of a
    folder (sorted); empty if it names neither."""
    path = Path(path)
    if path.is_file():
        return [path] if is_nifti(path) else []
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
    return []


def scale_slices(volume: np.ndarray, scale: float = SCALE) -> np.ndarray:
    """``(Z, H', W')`` float64: every slice ``volume[:, :, z]`` downscaled by ``scale``
    (bilinear, as ``cmr.prepare``)."""
    return np.stack([ndimage.zoom(volume[:, :, z].astype(np.float64), scale, order=1)
                     for z in range(volume.shape[2])])


def normalise_crop(crop: np.ndarray) -> np.ndarray:
    """A crop's intensities as the training images had them: clipped to its 1st..99th
    percentile, scaled to 0..255, rounded (the PNG's 8 bits), then to float32 in [0, 1]."""
    lo, hi = np.percentile(crop, [1.0, 99.0])
    if not hi > lo:
        return np.zeros(crop.shape, np.float32)
    return (np.round(np.clip((crop - lo) / (hi - lo), 0.0, 1.0) * 255.0) / 255.0).astype(
        np.float32)


def _overlap(corner, size, shape):
    """``(in the slice, in the crop)``: the index pairs of the part of a ``size`` x ``size``
    window at ``corner`` (top, left) that lies inside a slice of ``shape`` (H, W)."""
    (top, left), (h, w) = corner, shape
    r0, r1 = max(top, 0), min(top + size, h)
    c0, c1 = max(left, 0), min(left + size, w)
    r1, c1 = max(r0, r1), max(c0, c1)            # empty, not negative, when outside
    return ((slice(None), slice(r0, r1), slice(c0, c1)),
            (slice(None), slice(r0 - top, r1 - top), slice(c0 - left, c1 - left)))


def crop_at(slices: np.ndarray, centre, size: int = CROP) -> tuple[np.ndarray, tuple[int, int]]:
    """``(crops (Z, size, size), (top, left))``: the ``size`` x ``size`` window of every slice
    centred on ``centre`` (row, column), zero outside the slice; ``top, left`` may be
    negative or reach past the slice."""
    corner = tuple(int(round(c - size / 2)) for c in centre)
    out = np.zeros((slices.shape[0], size, size), slices.dtype)
    inside, window = _overlap(corner, size, slices.shape[1:])
    out[window] = slices[inside]
    return out, corner


def _centroid(masks: np.ndarray, offset=(0, 0)):
    """The mean (row, column) of the labelled pixels of ``masks`` (Z, H, W) plus ``offset``;
    None if nothing is labelled."""
    _, rows, cols = np.nonzero(masks)
    if rows.size == 0:
        return None
    return (rows.mean() + offset[0], cols.mean() + offset[1])


def find_heart(models, slices: np.ndarray, **predict) -> tuple[float, float]:
    """The heart's centre (row, column) in the scaled slices, found by the model: the centroid
    of its labels on the whole slices (padded to a multiple of 16), then of its labels on the
    crops around that first centre. The slices' centre when it labels nothing."""
    z, h, w = slices.shape
    ph, pw = -h % DEPTH_MULTIPLE, -w % DEPTH_MULTIPLE
    whole = np.pad(slices, ((0, 0), (0, ph), (0, pw)))
    images = np.stack([normalise_crop(s) for s in whole])
    centre = _centroid(predict_masks(models, images, **predict)[:, :h, :w])
    if centre is None:
        return ((h - 1) / 2, (w - 1) / 2)
    crops, corner = crop_at(slices, centre)
    refined = _centroid(predict_masks(models, np.stack([normalise_crop(c) for c in crops]),
                                 **predict), corner)
    return centre if refined is None else refined


def segment_crops(models, slices: np.ndarray, centre, **predict):
    """``(labels (Z, 96, 96) uint8, images (Z, 96, 96) float32, (top, left))``: the crops of
    every slice around ``centre``, normalised, and the model's labels of them."""
    crops, corner = crop_at(slices, centre)
    images = np.stack([normalise_crop(c) for c in crops])
    return predict_masks(models, images, **predict), images, corner


def paste_back(labels: np.ndarray, corner, scaled_shape, shape) -> np.ndarray:
    """The crops' ``labels`` (Z, 96, 96) as a label volume of the input's ``shape`` (H, W, Z):
    written into zero slices of ``scaled_shape`` (H', W') at ``corner`` (top, left), then
    mapped back onto the input grid by nearest neighbour, with the coordinates that
    ``scipy.ndimage.zoom`` used to scale the input down (input pixel i <-> scaled pixel
    i (H'-1)/(H-1))."""
    z = labels.shape[0]
    (hs, ws), (h, w) = scaled_shape, shape[:2]
    scaled = np.zeros((z, hs, ws), np.uint8)
    inside, window = _overlap(corner, labels.shape[1], (hs, ws))
    scaled[inside] = labels[window]
    rows = np.rint(np.arange(h) * ((hs - 1) / (h - 1) if h > 1 else 0)).astype(int)
    cols = np.rint(np.arange(w) * ((ws - 1) / (w - 1) if w > 1 else 0)).astype(int)
    return np.ascontiguousarray(scaled[:, rows][:, :, cols].transpose(1, 2, 0))


def segment_volume(models, volume: np.ndarray, scale: float = SCALE, centre=None,
                   **predict) -> np.ndarray:
    """The label volume (uint8, the shape of ``volume``: H, W, Z) of a 3-D short-axis volume.
    ``centre`` (row, column in the scaled slices) skips ``find_heart``; ``predict`` goes to
    ``cmr.predict.predict_masks`` (batch_size, device, flip_tta, keep_largest,
    min_confidence)."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise CMRDataError(f"expected a 3-D volume (x, y, slices), got shape {volume.shape}")
    slices = scale_slices(volume, scale)
    if centre is None:
        centre = find_heart(models, slices, **predict)
    labels, _, corner = segment_crops(models, slices, centre, **predict)
    return paste_back(labels, corner, slices.shape[1:], volume.shape)


def load_nifti(path):
    """``(volume (H, W, Z) float64, image)`` of a NIfTI file (a 4-D file with one frame is
    taken as 3-D); a clear CMRDataError for anything else."""
    try:
        import nibabel as nib
    except ImportError:
        raise CMRDataError("reading NIfTI needs nibabel: pip install \".[acdc]\"") from None
    try:
        image = nib.load(str(path))
        volume = np.asanyarray(image.dataobj).astype(np.float64)
    except Exception as err:                 # nibabel raises many kinds of errors
        raise CMRDataError(f"cannot read NIfTI file {path}: {err}") from None
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise CMRDataError(f"{path} holds a {volume.ndim}-D array of shape {volume.shape}; "
                           "expected one 3-D volume (x, y, slices)")
    return volume, image


def predict_file(models, path, out, scale: float = SCALE, **predict) -> np.ndarray:
    """Segment the NIfTI volume ``path`` and write its labels to ``out`` (a NIfTI file with
    the input's affine and header, uint8, no scaling); returns the labels."""
    import nibabel as nib
    volume, image = load_nifti(path)
    labels = segment_volume(models, volume, scale, **predict)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    if image.ndim == 4:
        labels_out = labels[..., None]
    else:
        labels_out = labels
    result = type(image)(labels_out.astype(np.uint8), image.affine, header)
    result.header.set_slope_inter(1.0, 0.0)
    nib.save(result, str(out))
    return labels
