"""V-score: a recall weighted towards large, proximal vessels (CerebralDoc, Nat. Commun. 2020).

CerebralDoc defines ``V = Σ w·(P ∩ L) / Σ w·L`` with weights that grow with the clinical importance
of a vessel position (proximal segments above distal ones) but publishes no weight map. Ours is
computed from the reference label alone:

1. ``S`` = skeleton of ``L`` (:func:`~vessel_seg.morphology.skeleton`);
2. ``r(s)`` = Euclidean distance in mm from each skeleton voxel ``s`` to the background, the
   radius of the largest sphere centred on the centreline there (voxels beyond the image edge
   count as vessel, so a vessel cut by the field of view keeps its true radius);
3. every voxel ``x`` of ``L`` takes the radius of the skeleton voxel nearest to it *inside the
   vessel* (a breadth-first, 26-connected wave from ``S`` restricted to ``L``; where two waves
   meet the larger radius wins): ``w(x) = r(nearest s)``.

So ``w`` is the local vessel radius in mm. Vessels taper from root to leaves, so proximal trunks
weigh more than distal branches: per unit length a segment of radius ``r`` holds about ``πr²``
voxels of weight ``r``, i.e. it counts ``∝ r³`` instead of the ``∝ r²`` of plain recall. Missing
a trunk therefore costs more than missing distal branches of the same voxel count.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import edt
import numpy as np

from vessel_seg.evaluation.metrics_common import field_of_view_diagonal, spatial_view, union_bbox
from vessel_seg.morphology import skeleton


def vessel_weight_map(ref: np.ndarray, spacing: Sequence[float], skel: np.ndarray | None = None) -> np.ndarray:
    """Local vessel radius in mm at every voxel of ``ref`` (0 outside it); the V-score weights.

    Parameters
    ----------
    ref : ndarray
        Binary 2D or 3D reference mask, ideally cropped to its bounding box plus a 1-voxel margin.
    spacing : sequence of float
        Voxel size in mm per axis.
    skel : ndarray of bool, optional
        Precomputed skeleton of ``ref``; computed when omitted.

    Returns
    -------
    ndarray of float32
        ``w(x)`` as defined in the module docstring.
    """
    ref = ref.astype(bool, copy=False)
    weights = np.zeros(ref.shape, dtype=np.float32)
    if not ref.any():
        return weights
    skel = skeleton(ref) if skel is None else skel & ref
    radius = edt.edt(ref, anisotropy=tuple(float(s) for s in spacing), black_border=False).astype(np.float32)
    # A mask that fills its whole box has no background to measure from: cap at the box diagonal.
    np.minimum(radius, field_of_view_diagonal(ref.shape, spacing), out=radius)
    weights[skel] = radius[skel]
    _propagate_max(weights, ref & ~skel)
    # A component without skeleton voxels cannot occur (see skeleton()); keep its own depth if it does.
    unreached = ref & (weights == 0)
    weights[unreached] = radius[unreached]
    return weights


def _propagate_max(weights: np.ndarray, pending: np.ndarray) -> None:
    """Breadth-first fill of ``pending`` voxels from the non-zero ``weights``, in place.

    Each pass assigns every pending voxel that touches (26-/8-neighbourhood) an assigned voxel the
    largest assigned value among its neighbours, so a voxel gets the value of its nearest source
    (chessboard steps inside ``pending``). Only pending voxels are visited, so the cost scales with
    the vessel volume, not the image. Voxels that no wave reaches keep 0.
    """
    padded = np.pad(weights, 1)
    flat = padded.reshape(-1)
    strides = np.array(padded.strides) // padded.itemsize
    offsets = [int(np.dot(d, strides)) for d in itertools.product((-1, 0, 1), repeat=padded.ndim) if any(d)]
    todo = np.flatnonzero(np.pad(pending, 1))
    while todo.size:
        best = np.zeros(todo.size, dtype=flat.dtype)
        for offset in offsets:
            np.maximum(best, flat[todo + offset], out=best)
        reached = best > 0
        if not reached.any():
            break
        flat[todo[reached]] = best[reached]
        todo = todo[~reached]
    weights[...] = padded[tuple(slice(1, -1) for _ in range(weights.ndim))]


def vscore_from_weights(pred: np.ndarray, ref: np.ndarray, weights: np.ndarray) -> float:
    """``Σ w·(P ∩ L) / Σ w·L`` for a weight map from :func:`vessel_weight_map`; empty cases as :func:`vscore`."""
    total = float(weights[ref].sum(dtype=np.float64))
    if total == 0.0:
        return 0.0 if pred.any() else 1.0
    return float(weights[ref & pred].sum(dtype=np.float64) / total)


def vscore(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """V-score ``Σ w·(P ∩ L) / Σ w·L`` with ``w`` the local vessel radius of the reference.

    A weighted recall in ``[0, 1]`` (see the module docstring for the weight map). Not symmetric.
    Empty reference: 1 when the prediction is empty too, else 0 (as :func:`recall`). Non-empty
    reference and empty prediction: 0.
    """
    p, r, sp = spatial_view(pred, ref, spacing)
    box = union_bbox([r])
    if box is None:
        return 0.0 if p.any() else 1.0
    return vscore_from_weights(p[box], r[box], vessel_weight_map(r[box], sp))
