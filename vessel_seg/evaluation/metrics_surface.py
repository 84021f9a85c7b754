"""Surface distance metrics in millimetres: HD95 and average symmetric surface distance (ASSD).

The surface ``∂M`` of a mask is the set of its voxels with at least one face-neighbour (6 in 3D,
4 in 2D) in the background; voxels outside the image count as background, so a vessel cut by the
field of view has a surface there too. Distances are Euclidean between voxel centres, scaled by the
spacing, from each surface voxel of one mask to the nearest surface voxel of the other (exact
nearest-neighbour search in a k-d tree of the surface points in mm, which costs in proportion to
the surface area rather than to the volume as a distance transform would).

Empty masks: both empty gives 0 mm. Exactly one empty gives the diagonal of the field of view in mm
(the largest distance possible inside the image), a finite penalty that keeps means meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from vessel_seg.evaluation.metrics_common import field_of_view_diagonal, spatial_view, union_bbox


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a 2D/3D binary mask: foreground voxels with a background face-neighbour.

    Voxels beyond the array edge count as background.
    """
    m = np.pad(mask.astype(bool, copy=False), 1)
    core = tuple(slice(1, -1) for _ in range(m.ndim))
    interior = m[core].copy()
    for axis in range(m.ndim):
        for shift in (0, 2):
            index = list(core)
            index[axis] = slice(shift, m.shape[axis] - 2 + shift)
            interior &= m[tuple(index)]
    return m[core] & ~interior


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty masks of equal shape.

    Parameters
    ----------
    pred, ref : ndarray of bool
        Non-empty masks, ideally cropped to their union bounding box with a margin of 1 voxel.
    spacing : sequence of float
        Voxel size in mm per axis.

    Returns
    -------
    pred_to_ref : ndarray of float
        For each surface voxel of ``pred``, the distance to the nearest surface voxel of ``ref``.
    ref_to_pred : ndarray of float
        The same from ``ref`` to ``pred``.
    """
    scale = np.asarray(spacing, dtype=np.float64)
    points_pred = np.argwhere(surface(pred)) * scale
    points_ref = np.argwhere(surface(ref)) * scale
    pred_to_ref = cKDTree(points_ref).query(points_pred)[0]
    ref_to_pred = cKDTree(points_pred).query(points_ref)[0]
    return pred_to_ref, ref_to_pred


def hd95_from_distances(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> float:
    """``max(P95(pred_to_ref), P95(ref_to_pred))`` with numpy's linear-interpolation percentile."""
    return float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)))


def assd_from_distances(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> float:
    """Mean of all directed surface distances of both directions pooled together."""
    return float((pred_to_ref.sum() + ref_to_pred.sum()) / (pred_to_ref.size + ref_to_pred.size))


def _empty_case(pred: np.ndarray, ref: np.ndarray, shape, spacing) -> float | None:
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return field_of_view_diagonal(shape, spacing)
    return None


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile Hausdorff distance in mm, the symmetric "maximum of the two directions" variant.

    ``HD95 = max(P95{d(p, ∂L) : p ∈ ∂P}, P95{d(l, ∂P) : l ∈ ∂L})`` where ``P95`` is numpy's
    95th percentile with linear interpolation and ``d`` the Euclidean distance in mm to the nearest
    surface voxel (surfaces as in :func:`surface`). Symmetric, ``>= 0``. Both empty: 0. Exactly one
    empty: the field-of-view diagonal in mm.
    """
    p, r, sp = spatial_view(pred, ref, spacing)
    if (value := _empty_case(p, r, p.shape, sp)) is not None:
        return value
    box = union_bbox([p, r])
    return hd95_from_distances(*surface_distances(p[box], r[box], sp))


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Average symmetric surface distance in mm.

    ``ASSD = (Σ_{p∈∂P} d(p, ∂L) + Σ_{l∈∂L} d(l, ∂P)) / (|∂P| + |∂L|)``. Symmetric, ``>= 0``. Both
    empty: 0. Exactly one empty: the field-of-view diagonal in mm.
    """
    p, r, sp = spatial_view(pred, ref, spacing)
    if (value := _empty_case(p, r, p.shape, sp)) is not None:
        return value
    box = union_bbox([p, r])
    return assd_from_distances(*surface_distances(p[box], r[box], sp))


def surface_summary(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], full_shape: Sequence[int]
) -> dict[str, float]:
    """``hd95_mm`` and ``assd_mm`` of masks already cropped (and 2D-squeezed) by the caller.

    ``full_shape`` is the uncropped shape, used for the empty-mask penalty.
    """
    if (value := _empty_case(pred, ref, full_shape, spacing)) is not None:
        return {"hd95_mm": value, "assd_mm": value}
    distances = surface_distances(pred, ref, spacing)
    return {"hd95_mm": hd95_from_distances(*distances), "assd_mm": assd_from_distances(*distances)}
