"""Where a broken vessel may continue: the ends of a vessel piece, their directions, and the cones ahead of them.

CerebralDoc's connected-growth prediction (Nat. Commun. 2020) grows a vessel on along its own
direction; :func:`~vessel_seg.inference.postprocessing.bridge_gaps` uses this module to let a bridge
leave a piece only from one of its ends and roughly along the vessel there, so it continues a
broken vessel but never jumps sideways to a neighbour running beside it.

Coordinates are voxel indices of a crop ``(Z, Y, X)``; directions and distances are in mm
(``spacing`` in ``(z, y, x)`` order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vessel_seg.morphology import skeleton as vessel_skeleton

# A piece whose skeleton spans fewer voxels than this has no usable direction (a blob): it may be
# bridged in any direction, as before direction-awareness.
MIN_SKELETON_VOXELS = 3


@dataclass(frozen=True)
class PieceEnd:
    """An end of a vessel piece: skeleton end voxel ``point`` (crop indices) and unit outward ``direction`` (mm)."""

    point: np.ndarray
    direction: np.ndarray


def _skeleton_endpoints(skeleton: np.ndarray) -> np.ndarray:
    """``(N, 3)`` indices of skeleton voxels with exactly one 26-neighbour on the skeleton."""
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant") - 1
    return np.argwhere(skeleton & (neighbours == 1))


def _axis_extremes(points: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The two points of ``points`` (indices) farthest apart along their principal axis (in mm)."""
    physical = points * spacing
    centred = physical - physical.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    projection = centred @ axis
    return points[[int(np.argmin(projection)), int(np.argmax(projection))]]


def piece_ends(piece: np.ndarray, spacing: np.ndarray, radius_mm: float) -> list[PieceEnd] | None:
    """The ends of the piece ``piece`` (bool crop) with the vessel's outward direction at each.

    The direction at an end runs from the mean of the skeleton voxels within ``max(2 radius,
    3 voxels)`` of the end voxel to the end voxel itself: the local course of the vessel, not its
    overall axis, so a curved vessel is followed along its curve.

    A skeleton two voxels thick (the medial ridge of an even-width tube, see
    :func:`vessel_seg.morphology.skeleton`) has no voxel with a single neighbour; its ends are then
    the two extremes along its principal axis.

    Returns
    -------
    list of PieceEnd, or None
        None for a blob without direction (skeleton of fewer than :data:`MIN_SKELETON_VOXELS`
        voxels).
    """
    skeleton = vessel_skeleton(piece)
    points = np.argwhere(skeleton)
    if len(points) < MIN_SKELETON_VOXELS:
        return None
    reach = max(2.0 * radius_mm, 3.0 * float(spacing.max()))
    candidates = _skeleton_endpoints(skeleton)
    if len(candidates) == 0:
        candidates = _axis_extremes(points, spacing)
    ends = []
    for end in candidates:
        offsets = (points - end) * spacing
        near = points[np.linalg.norm(offsets, axis=1) <= reach]
        outward = (end - near.mean(axis=0)) * spacing
        length = float(np.linalg.norm(outward))
        if length > 0.25 * float(spacing.min()):
            ends.append(PieceEnd(end, outward / length))
    return ends


def cones_ahead(
    shape: tuple[int, ...], ends: list[PieceEnd], spacing: np.ndarray, half_angle_deg: float, tip_radius_mm: float
) -> np.ndarray:
    """Bool mask of the voxels a bridge may cross: ahead of an end, within ``half_angle_deg`` of its direction.

    Each cone's apex sits ``tip_radius_mm / tan(half_angle)`` behind the end voxel, so that the cone
    is as wide as the vessel (``tip_radius_mm``) where the vessel ends: a bridge may leave a thick
    vessel's end face anywhere, but never its side.
    """
    allowed = np.zeros(shape, dtype=bool)
    grid = np.indices(shape, dtype=np.float32).reshape(len(shape), -1).T * spacing.astype(np.float32)
    angle = np.radians(half_angle_deg)
    for end in ends:
        apex = end.point * spacing - end.direction * (tip_radius_mm / np.tan(angle))
        offsets = grid - apex
        distance = np.linalg.norm(offsets, axis=1)
        allowed |= (offsets @ end.direction >= np.cos(angle) * distance).reshape(shape)
    return allowed
