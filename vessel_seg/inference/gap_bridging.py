"""Gap bridging: reconnect vessel pieces cut off from the tree, along the vessel's direction, through probable voxels.

One of the postprocessing steps (:mod:`vessel_seg.inference.postprocessing` chains them); conventions are
that module's: label maps ``(Z, Y, X)``, 26-connected components, spacing in mm in ``(z, y, x)`` order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import edt
import numpy as np
from skimage.graph import MCP_Geometric

from vessel_seg.inference.bridge_directions import PieceEnd, cones_ahead, piece_ends

log = logging.getLogger(__name__)

CONNECTIVITY = 26
_EPS = 1e-3  # keeps the path cost finite where the probability is 1


def _grow_box(box: Sequence[slice], margin: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` voxels per axis, clipped to ``shape``."""
    return tuple(
        slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, shape, strict=True)
    )


def _gap_length_mm(path: np.ndarray, in_gap: np.ndarray, spacing: np.ndarray) -> float:
    """Width of the background crossed by ``path``, in mm.

    Full steps between consecutive gap voxels count whole, the steps entering and leaving the
    vessel pieces count half: three empty voxels in a row at 1 mm spacing measure 3 mm.
    """
    steps = np.linalg.norm(np.diff(path, axis=0) * spacing, axis=1)
    weight = 0.5 * (in_gap[:-1].astype(float) + in_gap[1:].astype(float))
    return float(np.sum(steps * weight))


def _local_radius(dist: np.ndarray, piece: np.ndarray, point: np.ndarray, half: Sequence[int]) -> float:
    """Largest distance-to-wall (mm) of ``piece`` voxels in a window of ``half`` voxels around ``point``."""
    window = tuple(slice(max(int(p) - h, 0), int(p) + h + 1) for p, h in zip(point, half, strict=True))
    values = dist[window][piece[window]]
    return float(values.max()) if values.size else 0.0


@dataclass(frozen=True)
class BridgeLimits:
    """What a bridge may be: gap length, voxel and mean probability, and its angle to the vessel's end.

    Attributes
    ----------
    max_gap_mm : float
        Widest background gap crossed, in mm.
    min_probability : float
        Voxels below this foreground probability are never crossed.
    min_mean_probability : float
        The gap voxels' mean probability must reach this (the probability budget of a bridge).
    max_angle_deg : float or None
        A bridge leaves a piece only from one of its ends, within this angle of the vessel's
        direction there (:mod:`~vessel_seg.inference.bridge_directions`); None: from anywhere.
    """

    max_gap_mm: float
    min_probability: float = 0.2
    min_mean_probability: float = 0.25
    max_angle_deg: float | None = 40.0


def _passable(piece: np.ndarray, main: np.ndarray, vessel: np.ndarray, prob: np.ndarray, spacing: np.ndarray,
              limits: BridgeLimits, piece_radius: float) -> tuple[np.ndarray | None, list[PieceEnd] | None]:
    """Voxels a bridge from ``piece`` may use (vessel, or probable enough and, if directed, ahead of an end), and the ends.

    The mask is None when the piece has a skeleton but no usable end: nothing to continue. The ends
    are None when direction does not apply (switched off, or a blob without a skeleton line).
    """
    passable = vessel | (prob >= limits.min_probability)
    if limits.max_angle_deg is None:
        return passable, None
    ends = piece_ends(piece, spacing, piece_radius)
    if ends is None:  # a blob: no direction to respect
        return passable, None
    if not ends:
        return None, ends
    tip = piece_radius + 0.5 * float(spacing.max())
    return passable & (cones_ahead(piece.shape, ends, spacing, limits.max_angle_deg, tip) | piece | main), ends


def _points_ahead(ends: list[PieceEnd] | None, target: np.ndarray, spacing: np.ndarray, max_angle_deg: float) -> bool:
    """True when ``target`` (crop index) lies within ``max_angle_deg`` of some end's direction, seen from that end."""
    if ends is None:
        return True
    for end in ends:
        offset = (target - end.point) * spacing
        length = float(np.linalg.norm(offset))
        if length == 0 or offset @ end.direction >= np.cos(np.radians(max_angle_deg)) * length:
            return True
    return False


def _bridge_one(
    piece: np.ndarray, main: np.ndarray, vessel: np.ndarray, prob: np.ndarray, spacing: np.ndarray, limits: BridgeLimits,
) -> np.ndarray | None:
    """Voxels (bool mask, crop-sized) that join ``piece`` to ``main`` in one crop, or ``None``."""
    if prob.dtype == np.uint8:  # quantised by the streamed predictor: 255 = 1
        prob = prob.astype(np.float32) / 255.0
    dist = edt.edt(vessel, anisotropy=tuple(spacing), black_border=False)
    piece_radius = float(dist[piece].max())
    passable, directions = _passable(piece, main, vessel, prob, spacing, limits, piece_radius)
    if passable is None:
        return None
    costs = np.where(vessel, 1.0, 1.0 / (prob.astype(np.float64) + _EPS))
    costs[~passable] = np.inf  # MCP never enters infinite-cost voxels
    mcp = MCP_Geometric(costs, sampling=tuple(spacing))
    ends = np.argwhere(main)
    cumulative, _ = mcp.find_costs(np.argwhere(piece), ends, find_all_ends=False)
    reached = cumulative[tuple(ends.T)]
    if not np.isfinite(reached).any():
        return None
    path = np.asarray(mcp.traceback(tuple(ends[int(np.argmin(reached))])))
    in_gap = ~vessel[tuple(path.T)]
    if not in_gap.any() or _gap_length_mm(path, in_gap, spacing) > limits.max_gap_mm:
        return None
    if float(prob[tuple(path[in_gap].T)].mean()) < limits.min_mean_probability:
        return None
    gap_idx = np.flatnonzero(in_gap)
    first, last = path[max(gap_idx[0] - 1, 0)], path[min(gap_idx[-1] + 1, len(path) - 1)]
    # The cones bound each step; the whole bridge must point ahead too, or a zig-zag inside a wide
    # cone could still reach a vessel beside the piece.
    if limits.max_angle_deg is not None and not _points_ahead(directions, last, spacing, limits.max_angle_deg):
        return None
    # Thicken the bridge to the smaller local radius of the two pieces at its ends, so that the
    # reconnected vessel keeps its calibre; a radius of one voxel leaves the 26-connected path itself.
    half = np.ceil(2 * piece_radius / spacing).astype(int) + 1
    radius = min(piece_radius, _local_radius(dist, main, last, half) or piece_radius)
    bridge = np.zeros(vessel.shape, dtype=bool)
    bridge[tuple(path[in_gap].T)] = True
    if radius > float(spacing.min()):
        to_path = edt.edt(~bridge, anisotropy=tuple(spacing), black_border=False)
        bridge |= (to_path < radius) & passable
    log.debug("bridged a gap at %s (radius %.2f mm)", tuple(first), radius)
    return bridge & ~vessel


def bridge_gaps(
    seg: np.ndarray,
    probabilities_fg: np.ndarray,
    spacing: Sequence[float],
    max_gap_mm: float,
    min_probability: float = 0.2,
    *,
    min_mean_probability: float = 0.25,
    max_angle_deg: float | None = 40.0,
) -> np.ndarray:
    """Reconnect vessel pieces cut off from the main tree by a short gap, along the vessel's own direction.

    In the spirit of CerebralDoc's connected-growth prediction: a break in a vessel usually lies
    where the network was unsure, not where it saw background. For every component of the
    foreground (``seg > 0``) other than the largest, from the largest piece down:

    1. Crop a box around the piece, grown by ``ceil(max_gap_mm / spacing) + 2`` voxels per axis
       (the bridge cannot leave it, which keeps the search small). Skip the piece when the main
       component is not in the box.
    2. Find the cheapest path from the piece to the main component by Dijkstra on the voxel grid
       (:class:`skimage.graph.MCP_Geometric`, 26-neighbourhood, steps weighted by their length in
       mm). Foreground voxels cost 1 per mm, other voxels ``1 / (p + 0.001)`` per mm, and voxels
       with ``p < min_probability`` are impassable. Direction (CerebralDoc's connected growth):
       background voxels are passable only in the cones of half-angle ``max_angle_deg`` ahead of
       the piece's skeleton ends (and at the tips), so a piece continues where its vessel points
       and never joins a vessel running beside it; blobs without a skeleton line are not directed.
    3. Accept the path when the background it crosses is at most ``max_gap_mm`` wide (full steps
       between gap voxels plus half of the steps into and out of the pieces) and its gap voxels'
       mean probability is at least ``min_mean_probability``.
    4. Fill the gap voxels of the path, thickened to the local vessel radius: the smaller of the
       piece's largest distance-to-wall and the main component's largest distance-to-wall near
       the path's end (spacing-aware EDT). Only passable voxels are added; a radius of at most one
       voxel adds the path alone. The piece then counts as part of the main component.

    Parameters
    ----------
    seg : ndarray of int
        Label map ``(Z, Y, X)``.
    probabilities_fg : ndarray of float, or uint8
        Foreground probability (0..1) per voxel, same shape as ``seg``; uint8 means 0..255 for 0..1
        (what the streamed predictor keeps).
    spacing : sequence of float
        Voxel size in mm, ``(z, y, x)``.
    max_gap_mm : float
        Widest gap that is bridged, in mm.
    min_probability : float
        Voxels below this probability are never added.
    min_mean_probability : float
        Smallest mean probability of the gap a bridge crosses.
    max_angle_deg : float or None
        Largest angle (degrees) between a bridge and the vessel's direction at the end it leaves;
        None bridges from anywhere on the piece.

    Returns
    -------
    ndarray
        Copy of ``seg`` with the bridges added; each bridge takes the most frequent label of the
        piece it reconnects.
    """
    if probabilities_fg.shape != seg.shape:
        raise ValueError(f"probabilities shape {probabilities_fg.shape} differs from segmentation shape {seg.shape}")
    limits = BridgeLimits(max_gap_mm, min_probability, min_mean_probability, max_angle_deg)
    return _bridge_pieces(seg, probabilities_fg, np.asarray(spacing, dtype=np.float64), limits)


def _bridge_pieces(seg: np.ndarray, probabilities_fg: np.ndarray, sp: np.ndarray, limits: BridgeLimits) -> np.ndarray:
    """Every piece other than the largest, from the largest down, joined to the growing main component if it can be."""
    out = seg.copy()
    components, count = cc3d.connected_components(seg > 0, connectivity=CONNECTIVITY, return_N=True)
    if count < 2:
        return out
    stats = cc3d.statistics(components)
    sizes = np.asarray(stats["voxel_counts"], dtype=np.int64)
    sizes[0] = 0  # background
    order = np.argsort(sizes, kind="stable")[::-1]
    main = components == order[0]
    margin = [math.ceil(limits.max_gap_mm / s) + 2 for s in sp]
    bridged = 0
    for component_id in order[1:count]:
        box = _grow_box(stats["bounding_boxes"][component_id], margin, seg.shape)
        if not main[box].any():
            continue
        piece = components[box] == component_id
        vessel_box = out[box] > 0
        added = _bridge_one(piece, main[box], vessel_box, probabilities_fg[box], sp, limits)
        if added is None:
            continue
        label = int(np.bincount(seg[box][piece].astype(np.int64)).argmax())
        out[box][added] = label
        main[box] |= added | piece
        bridged += 1
    if bridged:
        log.debug("bridged %d gap(s) of at most %g mm", bridged, limits.max_gap_mm)  # the case line counts components
    return out
