"""Shared helpers for the metrics: input checks, 2D handling and cropping to the union bounding box.

Every metric works on binary masks. Volumes that came from 2D files are stored as ``(1, Y, X)``;
they are evaluated as 2D images (2D skeletons, 8/4-connectivity) rather than as one-voxel-thick slabs.
Cropping to the bounding box of ``pred | ref`` (plus a background margin) before skeletonising and
distance transforms keeps the cost proportional to the vessels' extent, not the scan's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vessel_seg.morphology import bounding_box


def as_binary(mask: np.ndarray) -> np.ndarray:
    """``mask`` as a boolean array (non-zero is foreground), without a copy when already boolean."""
    return mask if mask.dtype == np.bool_ else mask != 0


def spatial_view(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Check shapes and spacing, and drop a singleton ``Z`` axis of 2D images.

    Parameters
    ----------
    pred, ref : ndarray
        Masks of equal shape, 2D ``(Y, X)`` or 3D ``(Z, Y, X)``.
    spacing : sequence of float
        Voxel size in mm in array order, one value per array axis.

    Returns
    -------
    pred, ref : ndarray
        Boolean masks, 2D when the input was ``(1, Y, X)``.
    spacing : tuple of float
        The spacing of the returned axes.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, got {pred.ndim}D")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {pred.ndim}D mask")
    if min(spacing) <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    pred, ref = as_binary(pred), as_binary(ref)
    if pred.ndim == 3 and pred.shape[0] == 1:
        return pred[0], ref[0], spacing[1:]
    return pred, ref, spacing


def union_bbox(masks: Sequence[np.ndarray], margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of the union of ``masks`` grown by ``margin`` voxels (clipped), or ``None`` if all empty."""
    union = np.logical_or.reduce([as_binary(m) for m in masks]) if len(masks) > 1 else as_binary(masks[0])
    return bounding_box(union, margin)


def field_of_view_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of an image of ``shape`` voxels of size ``spacing`` mm."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))
