"""Resampling of images, label maps and probability maps between voxel spacings.

Conventions
-----------
* Images and probabilities are ``(C, Z, Y, X)``; label maps are ``(Z, Y, X)``; spacings are
  ``(z, y, x)`` in mm.
* Voxels are treated as cells (scikit-image's ``resize`` / ``scipy.ndimage.zoom(grid_mode=True)``
  convention): the outer faces of the first and last voxels stay in place, so a volume keeps its
  physical extent and resampling back to the original shape undoes the forward step up to
  interpolation error. Values beyond the border repeat the edge voxel.
* The new shape for a spacing change is ``round(shape * current_spacing / target_spacing)``, at least
  one voxel per axis.

Anisotropic data (nnU-Net's rule)
---------------------------------
When the largest spacing exceeds ``anisotropy_threshold`` times the smallest one (of the current
spacing, else of the target spacing), the coarse ("out-of-plane") axis is treated separately: each
slice is resampled in-plane with the requested spline order, then the out-of-plane axis with order 0
(nearest neighbour). Interpolating across thick slices with a cubic spline invents structures
between slices and rings at slice boundaries; nearest neighbour keeps slices crisp. The same slice-
by-slice path is used whenever one axis keeps its size (e.g. a 2D configuration, where only the
in-plane spacing changes), which is exact and cheaper. The slice-by-slice path also bounds memory:
one channel of the output plus one slice of work space.

Labels are resampled as one-hot maps (each label's indicator interpolated with ``order``, default 1)
and each output voxel takes the label of highest interpolated value (background included), which
for a binary map is a threshold at 0.5. Ties go to the foreground so that structures exactly one
voxel thick at a 0.5 coverage survive.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)


def compute_new_shape(
    shape: Sequence[int], current_spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, ...]:
    """Shape that covers the same physical extent at ``target_spacing``.

    Parameters
    ----------
    shape : sequence of int
        Current ``(Z, Y, X)`` shape.
    current_spacing, target_spacing : sequence of float
        Voxel size in mm, ``(z, y, x)``.

    Returns
    -------
    tuple of int
        ``round(shape * current_spacing / target_spacing)``, at least 1 per axis.
    """
    if not len(shape) == len(current_spacing) == len(target_spacing):
        raise ValueError(f"shape {shape}, spacing {current_spacing} and target {target_spacing} differ in length")
    ratio = np.asarray(current_spacing, dtype=np.float64) / np.asarray(target_spacing, dtype=np.float64)
    return tuple(max(1, int(round(s * r))) for s, r in zip(shape, ratio, strict=True))


def _lowres_axis(spacing: Sequence[float], threshold: float) -> int | None:
    """The single coarsest axis when ``max(spacing) / min(spacing) > threshold``, else ``None``."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.max() / spacing.min() <= threshold:
        return None
    coarse = np.flatnonzero(spacing == spacing.max())
    return int(coarse[0]) if len(coarse) == 1 else None  # two coarse axes: no single slice direction


def separate_axis(
    current_spacing: Sequence[float],
    target_spacing: Sequence[float],
    anisotropy_threshold: float = 3.0,
    old_shape: Sequence[int] | None = None,
    new_shape: Sequence[int] | None = None,
) -> int | None:
    """Axis to resample on its own (order 0), or ``None`` for a joint 3D interpolation.

    The coarse axis of ``current_spacing`` when it is anisotropic, else that of ``target_spacing``;
    when neither is and the shapes are given, an axis whose size does not change (no interpolation
    happens along it, so slice-by-slice processing is exact).
    """
    axis = _lowres_axis(current_spacing, anisotropy_threshold)
    if axis is None:
        axis = _lowres_axis(target_spacing, anisotropy_threshold)
    if axis is None and old_shape is not None and new_shape is not None:
        same = [a for a, (o, n) in enumerate(zip(old_shape, new_shape, strict=True)) if o == n]
        axis = same[0] if same else None
    return axis


def _zoom(volume: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resize a float32 array to ``new_shape`` with a spline of ``order`` (cell convention)."""
    if tuple(volume.shape) == tuple(new_shape):
        return volume.astype(np.float32, copy=True)
    factors = [n / o for n, o in zip(new_shape, volume.shape, strict=True)]
    out = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if out.shape != tuple(new_shape):  # guard against rounding in scipy's own shape computation
        raise RuntimeError(f"zoom produced {out.shape}, expected {tuple(new_shape)}")
    return out


def _nearest_indices(old: int, new: int) -> np.ndarray:
    """Source index of each output cell for nearest-neighbour resizing along one axis."""
    return np.minimum(((np.arange(new) + 0.5) * (old / new)).astype(np.int64), old - 1)


def _resample_volume(
    volume: np.ndarray, new_shape: Sequence[int], order: int, axis: int | None, out: np.ndarray
) -> None:
    """Resample one ``(Z, Y, X)`` volume into ``out`` (already of ``new_shape``)."""
    volume = volume.astype(np.float32, copy=False)  # scipy has no float16 kernels
    if axis is None:
        out[...] = _zoom(volume, new_shape, order)
        return
    src = np.moveaxis(volume, axis, 0)
    dst = np.moveaxis(out, axis, 0)
    plane_shape = tuple(s for a, s in enumerate(new_shape) if a != axis)
    if src.shape[0] == dst.shape[0]:
        for i in range(src.shape[0]):
            dst[i] = _zoom(src[i], plane_shape, order)
        return
    # Each output slice copies the in-plane resampling of its nearest input slice (order 0 across slices).
    picks = _nearest_indices(src.shape[0], dst.shape[0])
    done: dict[int, int] = {}
    for i, j in enumerate(picks):
        if j in done:
            dst[i] = dst[done[j]]
        else:
            dst[i] = _zoom(src[j], plane_shape, order)
            done[j] = i


def resample_to_shape(
    data: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    target_spacing: Sequence[float],
    order: int = 3,
    anisotropy_threshold: float = 3.0,
) -> np.ndarray:
    """Resample a ``(C, Z, Y, X)`` image or probability map to an exact shape.

    Parameters
    ----------
    data : ndarray, (C, Z, Y, X), float
        Intensities or class probabilities; float16 input is accepted.
    new_shape : sequence of int
        Output ``(Z, Y, X)`` shape, used exactly (e.g. the shape before a forward resampling).
    current_spacing, target_spacing : sequence of float
        Spacing of ``data`` and of the output in mm, ``(z, y, x)``; used only to decide whether the
        coarse axis is resampled separately (see the module docstring).
    order : int
        Spline order in-plane (0-5): 3 for images, 1 for probabilities.
    anisotropy_threshold : float
        Spacing ratio above which the coarse axis is resampled separately with order 0.

    Returns
    -------
    ndarray, (C, *new_shape)
        float16 when ``data`` is float16 (probabilities kept compact), else float32. Processed one
        channel at a time.
    """
    if data.ndim != 4:
        raise ValueError(f"expected a (C, Z, Y, X) array, got shape {data.shape}")
    new_shape = tuple(int(s) for s in new_shape)
    dtype = np.float16 if data.dtype == np.float16 else np.float32
    if tuple(data.shape[1:]) == new_shape:
        return data.astype(dtype, copy=True)
    axis = separate_axis(current_spacing, target_spacing, anisotropy_threshold, data.shape[1:], new_shape)
    log.debug("resample %s -> %s, order %d, separate axis %s", data.shape[1:], new_shape, order, axis)
    out = np.empty((data.shape[0], *new_shape), dtype=dtype)
    for c in range(data.shape[0]):
        if dtype == np.float32:
            _resample_volume(data[c], new_shape, order, axis, out[c])
        else:
            channel = np.empty(new_shape, np.float32)
            _resample_volume(data[c], new_shape, order, axis, channel)
            out[c] = channel
    return out


def resample_image(
    data: np.ndarray,
    current_spacing: Sequence[float],
    target_spacing: Sequence[float],
    order: int = 3,
    anisotropy_threshold: float = 3.0,
) -> np.ndarray:
    """Resample a ``(C, Z, Y, X)`` image from ``current_spacing`` to ``target_spacing`` (mm).

    The output shape is :func:`compute_new_shape`; see :func:`resample_to_shape` for the rest.
    """
    new_shape = compute_new_shape(data.shape[1:], current_spacing, target_spacing)
    return resample_to_shape(data, new_shape, current_spacing, target_spacing, order, anisotropy_threshold)


def resample_label_to_shape(
    seg: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    target_spacing: Sequence[float],
    labels: Sequence[int],
    order: int = 1,
    anisotropy_threshold: float = 3.0,
) -> np.ndarray:
    """Resample a ``(Z, Y, X)`` label map to an exact shape through one-hot interpolation.

    Parameters
    ----------
    seg : ndarray, (Z, Y, X), integer
        Label map.
    new_shape : sequence of int
        Output shape.
    current_spacing, target_spacing : sequence of float
        Spacings in mm, ``(z, y, x)``, deciding the separate axis as for images.
    labels : sequence of int
        Label values to keep (0 may be included; it is the background). Other values become 0.
    order : int
        Interpolation order of each indicator map; 0 means plain nearest neighbour.
    anisotropy_threshold : float
        As for :func:`resample_to_shape`.

    Returns
    -------
    ndarray, new_shape
        uint8 (int16 when a label exceeds 255). Each voxel holds the label whose interpolated
        indicator is highest; background wins only when strictly higher.
    """
    if seg.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) label map, got shape {seg.shape}")
    new_shape = tuple(int(s) for s in new_shape)
    foreground = sorted({int(v) for v in labels if int(v) != 0})
    dtype = np.uint8 if not foreground or max(foreground) < 256 else np.int16
    if tuple(seg.shape) == new_shape:
        keep = np.isin(seg, foreground)
        return np.where(keep, seg, 0).astype(dtype)
    if order == 0:
        index = [_nearest_indices(o, n) for o, n in zip(seg.shape, new_shape, strict=True)]
        picked = seg[np.ix_(*index)]
        return np.where(np.isin(picked, foreground), picked, 0).astype(dtype)
    axis = separate_axis(current_spacing, target_spacing, anisotropy_threshold, seg.shape, new_shape)

    best_value = np.zeros(new_shape, np.float32)
    best_label = np.zeros(new_shape, dtype)
    total = np.zeros(new_shape, np.float32)
    channel = np.empty(new_shape, np.float32)
    for value in foreground:
        _resample_volume((seg == value).astype(np.float32), new_shape, order, axis, channel)
        total += channel
        better = channel > best_value  # ties between labels go to the lower value
        best_value[better] = channel[better]
        best_label[better] = value
    if order <= 1:
        # Linear interpolation of a one-hot map sums to one, so the background indicator is 1 - total.
        background = np.subtract(1.0, total, out=total)
    else:
        background = channel
        _resample_volume((~np.isin(seg, foreground)).astype(np.float32), new_shape, order, axis, background)
    best_label[(best_value < background) | (best_value <= 0)] = 0
    return best_label


def resample_label(
    seg: np.ndarray,
    current_spacing: Sequence[float],
    target_spacing: Sequence[float],
    labels: Sequence[int],
    order: int = 1,
    anisotropy_threshold: float = 3.0,
) -> np.ndarray:
    """Resample a ``(Z, Y, X)`` label map from ``current_spacing`` to ``target_spacing`` (mm).

    The output shape is :func:`compute_new_shape`; see :func:`resample_label_to_shape`.
    """
    new_shape = compute_new_shape(seg.shape, current_spacing, target_spacing)
    return resample_label_to_shape(seg, new_shape, current_spacing, target_spacing, labels, order, anisotropy_threshold)
