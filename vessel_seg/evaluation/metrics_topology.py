"""Topology metrics: clDice, Betti numbers and their errors, connected components.

Connectivity follows the usual digital-topology pairing: the foreground is 26-connected in 3D
(8-connected in 2D) and the background 6-connected (4-connected in 2D), so that components,
cavities and the Euler characteristic agree with each other.
"""

from __future__ import annotations

import itertools

import cc3d
import numpy as np

from vessel_seg.evaluation.metrics_common import as_binary, spatial_view, union_bbox
from vessel_seg.morphology import foreground_connectivity, skeleton


def cldice_from_skeletons(pred: np.ndarray, ref: np.ndarray, skel_pred: np.ndarray, skel_ref: np.ndarray) -> float:
    """clDice from binary masks and their skeletons (see :func:`cldice` for the definition)."""
    n_pred, n_ref = int(np.count_nonzero(skel_pred)), int(np.count_nonzero(skel_ref))
    if n_pred == 0 and n_ref == 0:
        return 1.0
    if n_pred == 0 or n_ref == 0:
        return 0.0
    t_prec = np.count_nonzero(skel_pred & ref) / n_pred
    t_sens = np.count_nonzero(skel_ref & pred) / n_ref
    return 0.0 if t_prec + t_sens == 0 else float(2.0 * t_prec * t_sens / (t_prec + t_sens))


def cldice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Centreline Dice (Shit et al., CVPR 2021).

    ``Tprec = |S(P) ∩ L| / |S(P)|`` (how much of the predicted centreline lies inside the reference),
    ``Tsens = |S(L) ∩ P| / |S(L)|`` (how much of the reference centreline is covered), and
    ``clDice = 2 Tprec Tsens / (Tprec + Tsens)``, where ``S`` is :func:`skeleton`. Symmetric, in
    ``[0, 1]``. Both masks empty: 1. Exactly one empty: 0. No overlap at all: 0.
    """
    p, r, _ = spatial_view(pred, ref, (1.0,) * pred.ndim)
    box = union_bbox([p, r])
    if box is None:
        return 1.0
    p, r = p[box], r[box]
    return cldice_from_skeletons(p, r, skeleton(p), skeleton(r))


def _background_connectivity(ndim: int) -> int:
    return 6 if ndim == 3 else 4


def euler_characteristic(mask: np.ndarray) -> int:
    """Euler characteristic of a 2D/3D mask with full (26/8) foreground connectivity.

    Each voxel is a closed unit cube; ``χ = Σ_k (−1)^k N_k`` where ``N_k`` counts the
    ``k``-dimensional cells (vertices, edges, faces, cubes) of their union, a cell existing when
    any voxel it bounds is set. Equals :func:`skimage.measure.euler_number` with
    ``connectivity=mask.ndim`` but needs only boolean shifts of the mask (no int64 convolution).
    """
    m = as_binary(mask)
    padded = np.pad(m, 1)
    chi = 0
    for k in range(m.ndim + 1):
        for spanned in itertools.combinations(range(m.ndim), k):
            free = [a for a in range(m.ndim) if a not in spanned]
            cells = None
            # A cell sits between voxels along its free axes: it exists if any of those 2^len(free) is set.
            for shift in itertools.product((0, 1), repeat=len(free)):
                offsets = dict(zip(free, shift, strict=True))
                index = tuple(
                    slice(1, -1) if a in spanned else slice(offsets[a], padded.shape[a] - 1 + offsets[a])
                    for a in range(m.ndim)
                )
                cells = padded[index].copy() if cells is None else np.logical_or(cells, padded[index], out=cells)
            chi += (-1) ** k * int(np.count_nonzero(cells))
    return chi


def _topology(mask: np.ndarray) -> tuple[int, int, int, float]:
    """``(β0, β1, β2, largest component share)`` of one mask, labelling its components once."""
    m = as_binary(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    box = union_bbox([m], margin=1)
    if box is None:
        return 0, 0, 0, 0.0
    cropped = m[box]
    labels, b0 = cc3d.connected_components(cropped, connectivity=foreground_connectivity(m.ndim), return_N=True)
    sizes = np.bincount(labels.ravel())[1:]
    share = float(sizes.max() / sizes.sum())
    # A one-voxel background frame makes "touches the border" mean "joins the outer background".
    background = np.pad(~cropped, 1, constant_values=True)
    n_background = cc3d.connected_components(background, connectivity=_background_connectivity(m.ndim), return_N=True)[
        1
    ]
    enclosed = int(n_background) - 1
    chi = euler_characteristic(cropped)
    if m.ndim == 2:
        return int(b0), int(b0) - chi, 0, share
    return int(b0), int(b0) + enclosed - chi, enclosed, share


def betti_numbers(mask: np.ndarray) -> tuple[int, int, int]:
    """Betti numbers ``(β0, β1, β2)`` of a 2D or 3D binary mask.

    ``β0`` is the number of 26-connected (2D: 8-connected) components. ``β2`` is the number of
    enclosed cavities: 6-connected (2D: 4-connected) background components that do not touch the
    image border (always 0 in 2D). ``β1`` (tunnels/loops; holes in 2D) follows from the Euler
    characteristic ``χ`` (:func:`euler_characteristic`, equal to
    :func:`skimage.measure.euler_number` with full connectivity):
    ``β1 = β0 + β2 − χ`` in 3D and ``β1 = β0 − χ`` in 2D. An empty mask has ``(0, 0, 0)``. A
    ``(1, Y, X)`` array is treated as 2D.
    """
    return _topology(mask)[:3]


def betti_errors(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    """Betti-0 and Betti-1 errors ``|β0(P) − β0(L)|`` and ``|β1(P) − β1(L)|`` (see :func:`betti_numbers`).

    Symmetric, ``>= 0``. Both masks empty: ``(0, 0)``; one empty: the other's ``(β0, β1)``.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    bp, br = betti_numbers(pred), betti_numbers(ref)
    return abs(bp[0] - br[0]), abs(bp[1] - br[1])


def component_stats(mask: np.ndarray) -> tuple[int, float]:
    """Number of 26-connected (2D: 8-connected) components and the largest one's share of the voxels.

    Returns
    -------
    count : int
        Number of components; 0 for an empty mask.
    largest_share : float
        ``|largest component| / |mask|`` in ``(0, 1]``; 1 means one connected piece. 0 for an
        empty mask.
    """
    b0, _, _, share = _topology(mask)
    return b0, share


def topology_summary(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Betti errors and component statistics of ``pred`` against ``ref``, as floats.

    Keys: ``betti0_error``, ``betti1_error`` (see :func:`betti_errors`), ``components_pred``,
    ``components_ref`` and ``largest_component_share`` (of the prediction; see
    :func:`component_stats`). Each mask is labelled once.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    p0, p1, _, share = _topology(pred)
    r0, r1, _, _ = _topology(ref)
    return {
        "betti0_error": float(abs(p0 - r0)),
        "betti1_error": float(abs(p1 - r1)),
        "components_pred": float(p0),
        "components_ref": float(r0),
        "largest_component_share": share,
    }
