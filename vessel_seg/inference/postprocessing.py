"""Postprocessing of predicted vessel label maps: debris removal, keep-largest and gap bridging.

Every function takes a label map ``seg`` of shape ``(Z, Y, X)`` (a 2D image is ``(1, Y, X)``),
returns a new array of the same shape and dtype, and never modifies its input. Components are
26-connected (8-connected in a single slice). Sizes and distances are physical: ``spacing`` is the
voxel size in mm in ``(z, y, x)`` order, volumes are in mm³ and lengths in mm.

:func:`apply_postprocessing` runs a :class:`PostprocessingRecipe`, the form in which
``vs_find_best_configuration`` stores its choice and ``vs_predict`` applies it.
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


@dataclass
class PostprocessingRecipe:
    """Which postprocessing steps to run; ``None``/``False`` switches a step off.

    Attributes
    ----------
    min_component_mm3 : float or None
        Remove components smaller than this volume in mm³, per label (:func:`remove_small_components`).
    keep_largest : bool
        Keep only the largest component of each label (:func:`keep_largest_component`).
    bridge_gaps_mm : float or None
        Reconnect pieces separated by at most this many mm of background (:func:`bridge_gaps`);
        needs the foreground probabilities.
    """

    min_component_mm3: float | None = None
    keep_largest: bool = False
    bridge_gaps_mm: float | None = None

    @property
    def is_identity(self) -> bool:
        """True when no step is switched on."""
        return self.min_component_mm3 is None and not self.keep_largest and self.bridge_gaps_mm is None

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``"bridge gaps <= 2 mm, remove components < 10 mm³"``."""
        steps = []
        if self.bridge_gaps_mm is not None:
            steps.append(f"bridge gaps <= {self.bridge_gaps_mm:g} mm")
        if self.min_component_mm3 is not None:
            steps.append(f"remove components < {self.min_component_mm3:g} mm³")
        if self.keep_largest:
            steps.append("keep the largest component")
        return ", ".join(steps) if steps else "none"


def _foreground_labels(label_values: Sequence[int]) -> list[int]:
    return sorted({int(v) for v in label_values if int(v) != 0})


def remove_small_components(
    seg: np.ndarray, label_values: Sequence[int], min_volume_mm3: float, spacing: Sequence[float]
) -> np.ndarray:
    """Remove debris: components of each label smaller than ``min_volume_mm3``.

    Parameters
    ----------
    seg : ndarray of int
        Label map ``(Z, Y, X)``.
    label_values : sequence of int
        Labels to clean (0 is ignored).
    min_volume_mm3 : float
        A component survives when ``voxels x voxel volume >= min_volume_mm3``.
    spacing : sequence of float
        Voxel size in mm, ``(z, y, x)``.

    Returns
    -------
    ndarray
        Copy of ``seg`` with the removed voxels set to 0.
    """
    out = seg.copy()
    voxel_mm3 = float(np.prod(spacing))
    for label in _foreground_labels(label_values):
        mask = seg == label
        if not mask.any():
            continue
        components, count = cc3d.connected_components(mask, connectivity=CONNECTIVITY, return_N=True)
        volumes = np.bincount(components.ravel(), minlength=count + 1) * voxel_mm3
        small = volumes < min_volume_mm3
        small[0] = False  # background
        if small.any():
            out[small[components]] = 0
            log.debug("label %d: removed %d of %d components < %g mm³", label, int(small.sum()), count, min_volume_mm3)
    return out


# The default without a recipe: debris is small *and* far. A piece near the tree is more likely a
# broken branch (which a bridge or a better model reconnects) than noise, so it is always kept.
DEBRIS_MAX_SHARE = 0.02  # of the largest component's volume
DEBRIS_MIN_DISTANCE_MM = 3.0  # from the largest component's surface


@dataclass
class DebrisReport:
    """Components of the foreground before and after :func:`remove_detached_debris`, and the voxels removed."""

    components_before: int
    components_after: int
    voxels_removed: int


def remove_detached_debris(
    seg: np.ndarray, spacing: Sequence[float], max_share: float = DEBRIS_MAX_SHARE,
    min_distance_mm: float = DEBRIS_MIN_DISTANCE_MM,
) -> tuple[np.ndarray, DebrisReport]:
    """Remove foreground components that are both small and far from the main tree.

    A component other than the largest goes when its volume is below ``max_share`` of the
    largest's **and** its nearest voxel lies more than ``min_distance_mm`` from the largest
    (physical distance, spacing-aware EDT). Sizes are relative to the tree, so the rule holds at any
    resolution and scale; the distance keeps broken branches next to the tree. Works on ``seg > 0``
    (all labels together, as a vessel tree may change label along its length).

    Returns the new label map and a :class:`DebrisReport`.
    """
    out = seg.copy()
    components, count = cc3d.connected_components(seg > 0, connectivity=CONNECTIVITY, return_N=True)
    if count < 2:
        return out, DebrisReport(count, count, 0)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    main = int(sizes.argmax())
    distance = edt.edt(components != main, anisotropy=tuple(float(s) for s in spacing), parallel=0)
    others = (components > 0) & (components != main)  # usually few voxels: index them, not the volume
    nearest = np.full(count + 1, np.inf)
    np.minimum.at(nearest, components[others], distance[others])
    debris = (sizes < max_share * sizes[main]) & (nearest > min_distance_mm)
    debris[[0, main]] = False
    removed = int(sizes[debris].sum())
    if removed:
        out[debris[components]] = 0
    return out, DebrisReport(count, count - int(debris.sum()), removed)


def count_components(seg: np.ndarray) -> int:
    """Connected components of the foreground (``seg > 0``, all labels together)."""
    return int(cc3d.connected_components(seg > 0, connectivity=CONNECTIVITY, return_N=True)[1])


def keep_largest_component(seg: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Keep only the largest component (by voxel count) of each label; ties keep the first found."""
    out = seg.copy()
    for label in _foreground_labels(label_values):
        mask = seg == label
        if not mask.any():
            continue
        largest = cc3d.largest_k(mask, k=1, connectivity=CONNECTIVITY).astype(bool)
        out[mask & ~largest] = 0
    return out


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
    out = seg.copy()
    vessel = seg > 0
    components, count = cc3d.connected_components(vessel, connectivity=CONNECTIVITY, return_N=True)
    if count < 2:
        return out
    stats = cc3d.statistics(components)
    sizes = np.asarray(stats["voxel_counts"], dtype=np.int64)
    sizes[0] = 0  # background
    order = np.argsort(sizes, kind="stable")[::-1]
    main = components == order[0]
    sp = np.asarray(spacing, dtype=np.float64)
    margin = [math.ceil(max_gap_mm / s) + 2 for s in sp]
    limits = BridgeLimits(max_gap_mm, min_probability, min_mean_probability, max_angle_deg)
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
        log.debug("bridged %d gap(s) of at most %g mm", bridged, max_gap_mm)  # the case summary line counts components
    return out


def apply_postprocessing(
    seg: np.ndarray,
    recipe: PostprocessingRecipe,
    spacing: Sequence[float],
    label_values: Sequence[int],
    probabilities_fg: np.ndarray | None = None,
) -> np.ndarray:
    """Run the steps of ``recipe`` on ``seg`` in a fixed order and return a new label map.

    Order: bridge gaps first (so pieces that a bridge reconnects are not removed as debris), then
    debris removal, then keep-largest. Bridging needs ``probabilities_fg``; without it the step is
    skipped with a log message (the other steps still run).

    Parameters
    ----------
    seg : ndarray of int
        Label map ``(Z, Y, X)`` in the geometry that ``spacing`` describes.
    recipe : PostprocessingRecipe
    spacing : sequence of float
        Voxel size in mm, ``(z, y, x)``.
    label_values : sequence of int
        Labels the component steps work on (0 is ignored).
    probabilities_fg : ndarray of float, optional
        Foreground probability per voxel, same shape as ``seg``.
    """
    out = seg.copy()
    if recipe.bridge_gaps_mm is not None:
        if probabilities_fg is None:
            log.info("gap bridging skipped: no probabilities available")
        else:
            out = bridge_gaps(out, probabilities_fg, spacing, recipe.bridge_gaps_mm)
    if recipe.min_component_mm3 is not None:
        out = remove_small_components(out, label_values, recipe.min_component_mm3, spacing)
    if recipe.keep_largest:
        out = keep_largest_component(out, label_values)
    return out
