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

LABEL_SLAB_VOXELS = 1 << 22  # output voxels per slab of label resampling (16 MB per float32 work array)


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


def _zoom(volume: np.ndarray, new_shape: Sequence[int], order: int, output: np.ndarray | None = None) -> np.ndarray:
    """Resize a float32 array to ``new_shape`` with a spline of ``order`` (cell convention).

    ``output`` (float32, ``new_shape``, C-contiguous) receives the result without a temporary volume.
    """
    if tuple(volume.shape) == tuple(new_shape):
        if output is None:
            return volume.astype(np.float32, copy=True)
        output[...] = volume
        return output
    factors = [n / o for n, o in zip(new_shape, volume.shape, strict=True)]
    if output is not None and not output.flags.c_contiguous:
        output[...] = _zoom(volume, new_shape, order)
        return output
    out = ndimage.zoom(volume, factors, output=output, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
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
        _zoom(volume, new_shape, order, out)  # straight into ``out``: no second output-sized array
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
    slab_voxels: int = LABEL_SLAB_VOXELS,
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
    slab_voxels : int
        Output voxels per slab of z-slices (see below); any value gives the same result.

    Returns
    -------
    ndarray, new_shape
        uint8 (int16 when a label exceeds 255). Each voxel holds the label whose interpolated
        indicator is highest; background wins only when strictly higher.

    Notes
    -----
    With ``order <= 1`` and z either the separate axis or interpolated jointly with y and x, the
    output is built in slabs of z-slices: each output slice is a weighted sum of the in-plane
    resampling of the one or two input slices it reads (nearest neighbour along a separate z,
    linear otherwise, with the weights of scipy's cell-centred zoom), and only those input slices
    are converted to indicators. This is the same tensor-product interpolation as a whole-volume
    zoom (equal up to float rounding), and every slice depends on its own input slices only, so
    the result does not depend on ``slab_voxels`` and no output-sized float array exists: the
    memory is the uint8 result plus a slab. Other cases (a coarse y or x axis that changes size, ``order > 1``)
    interpolate each label over the whole volume (three float32 volumes of the output size).
    """
    if seg.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) label map, got shape {seg.shape}")
    new_shape = tuple(int(s) for s in new_shape)
    foreground = sorted({int(v) for v in labels if int(v) != 0})
    dtype = np.uint8 if not foreground or max(foreground) < 256 else np.int16
    if tuple(seg.shape) == new_shape:
        return _keep_labels(seg, foreground, dtype, slab_voxels)
    if order == 0:
        index = [_nearest_indices(o, n) for o, n in zip(seg.shape, new_shape, strict=True)]
        return _keep_labels(seg[np.ix_(*index)], foreground, dtype, slab_voxels)
    axis = separate_axis(current_spacing, target_spacing, anisotropy_threshold, seg.shape, new_shape)
    if axis in (1, 2) and seg.shape[axis] == new_shape[axis]:
        axis = None  # an axis that keeps its size is not interpolated: the joint slab path is the same
    if order > 1 or axis in (1, 2):
        return _labels_whole_volume(seg, new_shape, foreground, dtype, order, axis)
    taps = _z_taps(seg.shape[0], new_shape[0], linear=axis is None)
    out = np.empty(new_shape, dtype)
    step = max(1, slab_voxels // max(1, new_shape[1] * new_shape[2]))
    for z0 in range(0, new_shape[0], step):
        rows = taps[z0 : z0 + step]
        needed = sorted({i for row in rows for i, _ in row})
        position = {i: n for n, i in enumerate(needed)}
        source = seg[needed]  # the input slices this slab reads (a copy, of uint8 size)
        out[z0 : z0 + len(rows)] = _labels_of_slab(source, rows, position, new_shape[1:], foreground, dtype, order)
    return out


def _keep_labels(seg: np.ndarray, foreground: list[int], dtype: type, slab_voxels: int) -> np.ndarray:
    """``seg`` with values outside ``foreground`` set to 0, as ``dtype``, in z-slabs.

    ``np.isin`` and ``np.where`` on a whole volume allocate several bytes per voxel (index and
    mask arrays); slab by slab the transient is a slab.
    """
    out = np.empty(seg.shape, dtype)
    step = max(1, slab_voxels // max(1, int(np.prod(seg.shape[1:]))))
    for z0 in range(0, seg.shape[0], step):
        slab = seg[z0 : z0 + step]
        out[z0 : z0 + step] = np.where(np.isin(slab, foreground), slab, 0)
    return out


def _z_taps(old: int, new: int, linear: bool) -> list[list[tuple[int, float]]]:
    """Per output z-slice, the input slices it reads and their weights.

    Nearest neighbour picks one slice (weight 1). Linear uses scipy's cell-centred coordinate
    ``(k + 0.5) * old / new - 0.5`` clamped to the volume (mode ``"nearest"``) and the two
    neighbouring slices with weights ``1 - t`` and ``t``.
    """
    if old == new:
        return [[(k, 1.0)] for k in range(new)]
    if not linear:
        return [[(int(j), 1.0)] for j in _nearest_indices(old, new)]
    zoom = old / new
    taps = []
    for k in range(new):
        c = min(max((k + 0.5) * zoom - 0.5, 0.0), old - 1.0)
        i = min(int(np.floor(c)), old - 1)
        t = c - i
        taps.append([(i, 1.0 - t), (min(i + 1, old - 1), t)] if t > 0 else [(i, 1.0)])
    return taps


def _labels_of_slab(
    source: np.ndarray,
    rows: list[list[tuple[int, float]]],
    position: dict[int, int],
    plane_shape: tuple[int, int],
    foreground: list[int],
    dtype: type,
    order: int,
) -> np.ndarray:
    """Labels of the output slices ``rows`` (see :func:`_z_taps`) from the input slices ``source``."""
    shape = (len(rows), *plane_shape)
    best_value = np.zeros(shape, np.float32)
    best_label = np.zeros(shape, dtype)
    total = np.zeros(shape, np.float32)
    # float64 planes: the value is rounded to float32 once, after the z weights, as scipy's joint
    # interpolation does, so ties at exactly 0.5 coverage come out the same.
    plane = np.empty((source.shape[0], *plane_shape), np.float64)
    for value in foreground:
        indicator = (source == value).astype(np.float32)
        for n in range(source.shape[0]):
            _zoom_plane(indicator[n], plane_shape, order, plane[n])
        channel = np.stack([sum(w * plane[position[i]] for i, w in row) for row in rows]).astype(np.float32)
        total += channel
        better = channel > best_value  # ties between labels go to the lower value
        best_value[better] = channel[better]
        best_label[better] = value
    background = np.subtract(1.0, total, out=total)  # linear weights of a one-hot map sum to one
    best_label[(best_value < background) | (best_value <= 0)] = 0
    return best_label


def _zoom_plane(plane: np.ndarray, new_shape: tuple[int, int], order: int, output: np.ndarray) -> None:
    """In-plane resize of one float32 slice into the float64 ``output`` (cell convention, no prefilter)."""
    if tuple(plane.shape) == tuple(new_shape):
        output[...] = plane
        return
    factors = [n / o for n, o in zip(new_shape, plane.shape, strict=True)]
    ndimage.zoom(plane, factors, output=output, order=order, mode="nearest", grid_mode=True, prefilter=False)


def _labels_whole_volume(
    seg: np.ndarray, new_shape: tuple[int, ...], foreground: list[int], dtype: type, order: int, axis: int | None
) -> np.ndarray:
    """One-hot resampling of each label over the whole volume (see :func:`resample_label_to_shape`)."""
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
