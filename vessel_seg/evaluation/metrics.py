"""All segmentation metrics of one case, per label: :func:`compute_metrics`.

Each label ``l`` is scored as the binary pair ``(pred == l, ref == l)``. The individual metrics live
in small modules and are re-exported here:

======================== ======================================================= ==========
key                      definition                                              better
======================== ======================================================= ==========
dice                     ``2|P∩L| / (|P|+|L|)``                                  higher
recall                   ``|P∩L| / |L|``                                         higher
precision                ``|P∩L| / |P|``                                         higher
cldice                   centreline Dice (Shit et al. 2021)                      higher
vscore                   radius-weighted recall (CerebralDoc)                    higher
hd95_mm                  max of the two directed 95th-percentile surface         lower
                         distances, mm
assd_mm                  average symmetric surface distance, mm                  lower
betti0_error             ``|β0(P) − β0(L)|``                                     lower
betti1_error             ``|β1(P) − β1(L)|``                                     lower
components_pred          26-connected components of the prediction              (info)
components_ref           26-connected components of the reference               (info)
largest_component_share  largest predicted component / predicted volume         higher
======================== ======================================================= ==========

The docstrings of :func:`dice`, :func:`cldice`, :func:`vscore`, :func:`hd95`, :func:`betti_numbers`
and friends state the exact definitions and the empty-mask conventions; no metric returns NaN.
Skeletons and distance transforms run on the union bounding box of ``pred == l`` and ``ref == l``
(plus a 1-voxel margin), and each skeleton is computed once and shared by clDice and the V-score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from vessel_seg.evaluation.metrics_common import spatial_view, union_bbox
from vessel_seg.evaluation.metrics_overlap import (
    _dice,
    _precision,
    _recall,
    dice,
    overlap_counts,
    precision,
    recall,
)
from vessel_seg.evaluation.metrics_surface import assd, hd95, surface_summary
from vessel_seg.evaluation.metrics_topology import (
    betti_errors,
    betti_numbers,
    cldice,
    cldice_from_skeletons,
    component_stats,
    skeleton,
    topology_summary,
)
from vessel_seg.evaluation.metrics_vscore import vessel_weight_map, vscore, vscore_from_weights

__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_NAMES",
    "assd",
    "betti_errors",
    "betti_numbers",
    "cldice",
    "component_stats",
    "compute_metrics",
    "dice",
    "hd95",
    "labels_present",
    "overlap_counts",
    "precision",
    "recall",
    "skeleton",
    "vessel_weight_map",
    "vscore",
]

METRIC_NAMES: tuple[str, ...] = (
    "dice",
    "recall",
    "precision",
    "cldice",
    "vscore",
    "hd95_mm",
    "assd_mm",
    "betti0_error",
    "betti1_error",
    "components_pred",
    "components_ref",
    "largest_component_share",
)

# True: higher is better; False: lower is better; None: descriptive only.
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "dice": True,
    "recall": True,
    "precision": True,
    "cldice": True,
    "vscore": True,
    "hd95_mm": False,
    "assd_mm": False,
    "betti0_error": False,
    "betti1_error": False,
    "components_pred": None,
    "components_ref": None,
    "largest_component_share": True,
}


def labels_present(*arrays: np.ndarray) -> list[int]:
    """Sorted non-zero values found in any of ``arrays``."""
    values: set[int] = set()
    for array in arrays:
        if array.size == 0:
            continue
        low, high = array.min(), array.max()
        if array.dtype.kind in "uib" and low >= 0 and high <= 64:
            # Few labels: one comparison per value beats sorting hundreds of millions of voxels.
            values.update(v for v in range(1, int(high) + 1) if (array == v).any())
        else:
            values.update(int(v) for v in np.unique(array) if v != 0)
    return sorted(values)


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` for one pair of binary masks (non-zero is foreground).

    Parameters
    ----------
    pred, ref : ndarray
        Masks of equal shape, ``(Z, Y, X)``, ``(1, Y, X)`` (scored as 2D) or ``(Y, X)``.
    spacing : sequence of float
        Voxel size in mm in array order.

    Returns
    -------
    dict
        Metric name to value (floats; counts are whole numbers).
    """
    p, r, sp = spatial_view(pred, ref, spacing)
    tp, fp, fn = overlap_counts(p, r)
    result = {"dice": _dice(tp, fp, fn), "recall": _recall(tp, fp, fn), "precision": _precision(tp, fp, fn)}
    box = union_bbox([p, r])
    if box is None:  # both empty
        result.update({"cldice": 1.0, "vscore": 1.0})
        result.update(surface_summary(p, r, sp, p.shape))
        result.update(topology_summary(p, r))
        return {name: float(result[name]) for name in METRIC_NAMES}
    pc, rc = p[box], r[box]
    skel_pred, skel_ref = skeleton(pc), skeleton(rc)
    result["cldice"] = cldice_from_skeletons(pc, rc, skel_pred, skel_ref)
    result["vscore"] = vscore_from_weights(pc, rc, vessel_weight_map(rc, sp, skel_ref))
    result.update(surface_summary(pc, rc, sp, p.shape))
    result.update(topology_summary(pc, rc))
    return {name: float(result[name]) for name in METRIC_NAMES}


def compute_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    labels: Iterable[int] | None = None,
) -> dict[int, dict[str, float]]:
    """Per-label metrics of a predicted label map against a reference label map.

    Parameters
    ----------
    pred, ref : ndarray of int
        Label maps of equal shape (``(Z, Y, X)``; ``(1, Y, X)`` is scored as 2D).
    spacing : sequence of float
        Voxel size in mm in array order ``(z, y, x)``; used by the distance metrics and the V-score.
    labels : iterable of int, optional
        Labels to score. Default: every non-zero value in ``ref`` or ``pred``, or ``[1]`` when both
        are empty (a binary vessel mask with nothing in it).

    Returns
    -------
    dict
        ``{label: {metric: value}}`` with the keys of :data:`METRIC_NAMES`.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    labels = [int(v) for v in labels] if labels is not None else (labels_present(ref, pred) or [1])
    return {label: binary_metrics(pred == label, ref == label, spacing) for label in labels}
