"""Seed points for SeqSeg derived from the ground truth, so that the comparison is reproducible.

SeqSeg (Sveinsson Cepero et al., Ann. Biomed. Eng. 2024) traces a vessel tree from one seed per
case, given in its ``seeds.json`` as ``[[start x, y, z], [direction x, y, z], radius]`` in physical
coordinates of the image (ITK/LPS, here mm). A user would click the inlet; we derive it from the
reference label instead:

1. keep the largest 26-connected component of the vessel mask (all non-zero labels);
2. skeletonise it (:func:`~vessel_seg.morphology.skeleton`) and measure the radius
   at every skeleton voxel as its Euclidean distance in mm to the background (voxels beyond the
   image edge count as vessel, so a vessel cut by the field of view keeps its true radius);
3. the *root* is the skeleton end point (exactly one skeleton neighbour) with the largest radius:
   in a tapering tree that is the inlet of the trunk, usually where it enters the field of view;
4. the *direction point* is the skeleton voxel reached by walking along the skeleton from the root
   for about two radii (shortest path in mm), so the first step points into the tree;
5. the radius estimate is the root's radius in mm.

``inset_radii`` moves the seed that many root radii along the skeleton into the tree (the direction point
stays two radii further on). SeqSeg stops at its first step when that step's segmentation touches the
image border, so a root on the border (a vessel entering the field of view, as in our synthetic trees)
needs a seed whose first crop (``VOLUME_SIZE_RATIO`` radii wide) lies inside the image.

This gives SeqSeg the true inlet position and calibre, information the other methods do not get;
report it with the results. The seed costs one skeletonisation per case and is not counted in
SeqSeg's runtime.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import cc3d
import edt
import numpy as np
from scipy import ndimage

from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.metrics_common import union_bbox
from vessel_seg.imageio import ImageGeometry
from vessel_seg.morphology import skeleton


@dataclass(frozen=True)
class SeqSegSeed:
    """One SeqSeg seed: physical ``(x, y, z)`` points in mm and a radius in mm."""

    start: tuple[float, float, float]
    direction: tuple[float, float, float]
    radius: float

    def to_json(self) -> list:
        """The ``[[start], [direction], radius]`` triple of SeqSeg's ``seeds.json``."""
        return [list(self.start), list(self.direction), self.radius]


def _walk_along(skel: np.ndarray, start: tuple[int, ...], spacing: np.ndarray, length: float) -> tuple[int, ...]:
    """Skeleton voxel farthest from ``start`` along the skeleton, at most ``length`` mm away."""
    steps = [np.array(d) for d in itertools.product((-1, 0, 1), repeat=skel.ndim) if any(d)]
    best, best_distance = start, 0.0
    distance = {start: 0.0}
    queue = [(0.0, start)]
    while queue:
        d, voxel = heapq.heappop(queue)
        if d > distance.get(voxel, np.inf):
            continue
        if d > best_distance:
            best, best_distance = voxel, d
        for step in steps:
            nxt = tuple(int(v) for v in np.add(voxel, step))
            if any(c < 0 or c >= n for c, n in zip(nxt, skel.shape, strict=True)) or not skel[nxt]:
                continue
            nd = d + float(np.linalg.norm(step * spacing))
            if nd <= length and nd < distance.get(nxt, np.inf):
                distance[nxt] = nd
                heapq.heappush(queue, (nd, nxt))
    return best


def seed_from_label(
    label: np.ndarray, geometry: ImageGeometry, source: str = "reference", inset_radii: float = 0.0
) -> SeqSegSeed:
    """Derive a SeqSeg seed from a reference label map (see the module docstring).

    Parameters
    ----------
    label : ndarray
        ``(Z, Y, X)`` label map; every non-zero voxel is vessel.
    geometry : ImageGeometry
        Its geometry, to convert voxel indices to physical coordinates.
    source : str
        Name used in error messages (the reference file).
    inset_radii : float
        Distance of the seed from the root along the skeleton, in root radii (0: the root itself).

    Returns
    -------
    SeqSegSeed
    """
    if geometry.ndim != 3 or label.ndim != 3:
        raise VesselSegError(f"{source}: SeqSeg traces 3D images only; this reference is 2D")
    box = union_bbox([label != 0])
    if box is None:
        raise VesselSegError(f"{source}: reference is empty, so no SeqSeg seed can be derived; drop this case")
    components, _ = cc3d.connected_components(label[box] != 0, connectivity=26, return_N=True)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    mask = components == int(np.argmax(sizes))
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    skel = skeleton(mask)
    radius = np.minimum(
        edt.edt(mask, anisotropy=tuple(spacing), black_border=False), np.linalg.norm(mask.shape * spacing)
    )
    neighbours = ndimage.convolve(skel.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant") - 1
    candidates = np.argwhere(skel & (neighbours == 1))
    if candidates.size == 0:  # a closed loop or a single voxel: any centreline voxel will do
        candidates = np.argwhere(skel)
    root = tuple(int(v) for v in candidates[np.argmax(radius[tuple(candidates.T)])])
    root_radius = float(radius[root])
    start = _walk_along(skel, root, spacing, inset_radii * root_radius) if inset_radii > 0 else root
    target = _walk_along(skel, root, spacing, (inset_radii + 2.0) * root_radius)
    if target == start:  # a skeleton too short: aim at the component's centre of mass instead
        target = tuple(int(round(v)) for v in ndimage.center_of_mass(mask))
    offset = np.array([s.start for s in box])
    points = geometry.index_to_physical(np.array([np.add(start, offset), np.add(target, offset)]))
    if np.allclose(points[0], points[1]):
        points[1] = points[0] + geometry.index_to_physical(np.array([[1, 0, 0]]))[0] - geometry.origin
    return SeqSegSeed(
        start=tuple(float(v) for v in points[0]),
        direction=tuple(float(v) for v in points[1]),
        radius=float(radius[start]),
    )
