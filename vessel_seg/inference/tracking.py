"""Seeded vessel tracking: follow the tree from a seed with local patches (SeqSeg's idea, our own code).

Full-volume prediction costs the whole image; tracking costs the vessels. From each seed the
tracker predicts one network patch around the current centreline point with a trained vessel_seg
model (:func:`~vessel_seg.inference.predictor.predict_original_probabilities` on a crop of the
input, so preprocessing, normalisation and resampling are the model's own), and then:

1. keeps the connected vessel component at the point (foreground probability >= 0.5), with the pieces
   within :data:`GAP_VOXELS` of it (a vessel the network broke is followed beyond the break);
2. finds where that component leaves the sphere inscribed in the patch: every cluster of vessel
   voxels on the shell between :data:`SHELL_INNER` and :data:`SHELL_OUTER` of the sphere's radius
   is an exit, its centroid the next centreline point and its distance to the background the local
   radius. Two or more forward exits are a bifurcation: each becomes a branch in the queue;
3. drops exits that point straight back (more than ~135 degrees from the way the branch came), lie within
   :data:`BORDER_VOXELS` of the image border, or fall into the explored region (the vessel each earlier
   step walked along, from its parent step to its centre, out to :data:`WALKED_RADII` local radii, so
   branches never loop or run twice while siblings beside them stay open; checked again when an
   exit leaves the queue); a branch stops when no exit is left or the vessel fades (no component at
   its point).

Probabilities of all patches are merged by maximum into one uint8 map in the input grid; the mask
is that map thresholded at 0.5, restricted to the components that tracking reached, so the result
is connected to the seeds by construction. Coordinates: seeds in physical mm (ITK/LPS ``x, y, z``,
as the image header), steps in voxel indices ``(z, y, x)`` of the input image.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import edt
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from vessel_seg.errors import VesselSegError
from vessel_seg.imageio import ImageGeometry
from vessel_seg.inference.predictor import TrainedModel, predict_original_probabilities
from vessel_seg.planners.preprocessing import target_spacing

log = logging.getLogger(__name__)

SHELL_INNER = 0.6  # exits are looked for on the shell between these fractions of the patch's inscribed radius
SHELL_OUTER = 0.9
WALKED_RADII = 1.5  # each step marks the vessel it walked along, out to this many local radii (+1 voxel), as explored
BORDER_VOXELS = 2  # exits closer than this to the image border are not followed
MIN_EXIT_VOXELS = 2  # smaller shell clusters are noise, not a vessel leaving the patch
REUSE_COVERED = 0.9  # a patch this much covered by earlier patches reuses their merged probabilities
BACKWARD_COS = -0.7  # exits more than ~135 degrees from the incoming direction are the way back
GAP_VOXELS = 2  # pieces of the patch at most this many background voxels from the followed vessel belong to it
MAX_JOINS = 3  # rounds of joining such pieces per patch


@dataclass(frozen=True)
class TrackingSeed:
    """Where tracking starts: a physical point (mm, ITK/LPS ``x, y, z``) and optionally a radius in mm."""

    point_mm: tuple[float, float, float]
    radius_mm: float | None = None


@dataclass
class TrackingOptions:
    """Budget and thresholds of a tracking run."""

    max_steps: int = 5000
    use_tta: bool = False
    threshold: float = 0.5


@dataclass
class TrackingStep:
    """One predicted patch: its centre (voxel indices ``z, y, x``), the branch it belongs to and the radius there (mm)."""

    centre: tuple[float, float, float]
    branch: int
    radius_mm: float


@dataclass
class TrackingResult:
    """What tracking found: the mask (uint8 labels in the input grid), the steps, and how many branches."""

    mask: np.ndarray
    steps: list[TrackingStep] = field(default_factory=list)
    branches: int = 0
    predicted_voxels: int = 0  # voxels of the input the network saw, summed over patches


def physical_to_index(geometry: ImageGeometry, point_mm) -> np.ndarray:
    """Continuous voxel index ``(z, y, x)`` of a physical point ``(x, y, z)`` in mm (inverse of ``index_to_physical``)."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    ijk = np.linalg.solve(direction, np.asarray(point_mm, dtype=np.float64) - np.asarray(geometry.origin))
    return (ijk / np.asarray(geometry.spacing[::-1]))[::-1]


def read_seeds(path: Path) -> list[TrackingSeed]:
    """Seeds from a JSON file: a list of ``[x, y, z]``, ``[x, y, z, radius]`` or SeqSeg's ``[[x, y, z], [dx, dy, dz], r]``.

    One-line :class:`VesselSegError` for a file that is not such a list (values checked: finite numbers).
    """
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise VesselSegError(f"{path}: cannot read seeds ({exc}); give a JSON list of [x, y, z] points in mm") from exc
    if isinstance(entries, dict):  # SeqSeg keeps seeds per case: {"case": [[start], [direction], radius], ...}
        entries = [seed for value in entries.values() for seed in (value if _is_seqseg_list(value) else [value])]
    if not isinstance(entries, list) or not entries:
        raise VesselSegError(f"{path}: seeds must be a non-empty JSON list of [x, y, z] points in mm")
    seeds = list(dict.fromkeys(parse_seed(entry, path) for entry in entries))  # repeated seeds trace the same tree
    if len(seeds) < len(entries):
        log.info("%s: %d duplicate seed(s) dropped, %d left", path, len(entries) - len(seeds), len(seeds))
    return seeds


def _is_seqseg_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, list) and len(v) == 3 and isinstance(v[0], list)
                                                           for v in value)


def _finite_number(value) -> bool:
    """A real, finite number that fits a float (``True`` is not a coordinate; a 400-digit integer does not fit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def parse_seed(entry, source) -> TrackingSeed:
    """One seed from ``[x, y, z]``, ``[x, y, z, radius]`` or SeqSeg's ``[[x, y, z], [dx, dy, dz], radius]``."""
    if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], list):  # SeqSeg: [start, direction, r]
        point, radius = entry[0], entry[2]
    elif isinstance(entry, list) and len(entry) in (3, 4):
        point, radius = entry[:3], (entry[3] if len(entry) == 4 else None)
    else:
        raise VesselSegError(f"{source}: seed {entry!r} is not [x, y, z], [x, y, z, radius] or [[x, y, z], [dx, dy, dz], r]")
    values = [*point, *([] if radius is None else [radius])]
    if len(point) != 3 or not all(_finite_number(v) for v in values):
        raise VesselSegError(f"{source}: seed {str(entry)[:80]} must hold finite numbers (mm), not booleans or "
                             "out-of-range values")
    if radius is not None and radius <= 0:
        raise VesselSegError(f"{source}: seed radius {radius} must be positive (mm)")
    return TrackingSeed(tuple(float(v) for v in point), None if radius is None else float(radius))


@dataclass
class _Tracker:
    """State of one tracking run over one image."""

    model: TrainedModel
    images: np.ndarray  # (C, Z, Y, X) raw intensities
    geometry: ImageGeometry
    options: TrackingOptions
    probability: np.ndarray = field(init=False)  # uint8 foreground probability, max over patches
    explored: np.ndarray = field(init=False)  # vessel cores of the steps so far
    predicted: np.ndarray = field(init=False)  # voxels some patch has predicted
    result: TrackingResult = field(init=False)

    def __post_init__(self) -> None:
        shape = self.images.shape[1:]
        self.probability = np.zeros(shape, np.uint8)
        self.explored = np.zeros(shape, bool)
        self.predicted = np.zeros(shape, bool)
        self.result = TrackingResult(np.zeros(shape, np.uint8))
        self.spacing = np.asarray(self.geometry.spacing, dtype=np.float64)
        spacing_mm = target_spacing(self.model.config, self.spacing, shape)[-self.model.config.dim:]
        patch_mm = np.asarray(self.model.config.patch_size, dtype=np.float64) * np.asarray(spacing_mm)
        self.half = np.ceil(patch_mm / 2 / self.spacing).astype(int)  # voxels of the input per half patch
        self.radius_mm = float(np.min(patch_mm)) / 2  # the sphere inscribed in the patch

    def box(self, centre: np.ndarray) -> tuple[slice, ...]:
        shape = self.images.shape[1:]
        c = np.round(centre).astype(int)
        return tuple(slice(max(int(ci - h), 0), min(int(ci + h), n)) for ci, h, n in zip(c, self.half, shape, strict=True))

    def predict(self, box: tuple[slice, ...]) -> np.ndarray:
        """Foreground probability (float32) of the crop ``box``, merged into the global map.

        A box that earlier patches already cover (:data:`REUSE_COVERED` of it) is read from the merged map
        instead of predicted again: in a dense tree many branches step through the same region.
        """
        if self.predicted[box].mean() >= REUSE_COVERED:
            return self.probability[box].astype(np.float32) / 255.0
        lo = np.array([b.start for b in box], dtype=np.float64)
        crop = np.ascontiguousarray(self.images[(slice(None), *box)])
        origin = self.geometry.index_to_physical(lo[None])[0]
        geometry = ImageGeometry(tuple(crop.shape[1:]), self.geometry.spacing, tuple(origin), self.geometry.direction)
        probs = predict_original_probabilities([self.model], crop, geometry, "tracking", self.options.use_tta)
        foreground = 1.0 - probs[0].astype(np.float32)
        np.maximum(self.probability[box], np.round(foreground * 255).astype(np.uint8), out=self.probability[box])
        self.result.predicted_voxels += int(np.prod(crop.shape[1:]))
        self.predicted[box] = True
        return foreground

    def step(self, centre: np.ndarray, came_from: np.ndarray | None, branch: int,
             parent: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Predict around ``centre`` (reached from the step at ``parent``); returns the exits to follow as
        ``(next centre, direction)`` pairs."""
        box = self.box(centre)
        vessel = self.predict(box) >= self.options.threshold
        lo = np.array([b.start for b in box])
        local = centre - lo
        component = _component_at(vessel, local, self.spacing)
        if component is None:
            log.debug("branch %d: the vessel fades at %s", branch, np.round(centre, 1))
            return []
        offsets = (np.indices(component.shape).reshape(3, -1).T - local) * self.spacing
        distance = np.linalg.norm(offsets, axis=1).reshape(component.shape)
        radius = _local_radius(component, local, self.spacing)
        self.result.steps.append(TrackingStep(tuple(float(v) for v in centre), branch, radius))
        exits = self._exits(component, distance, lo, centre, came_from)
        self.explored[box] |= self._walked(component, offsets, local, lo, parent, radius)
        return exits

    def _walked(self, component, offsets, local, lo, parent, radius) -> np.ndarray:
        """The vessel this step walked along: voxels of ``component`` near the segment from ``parent`` to the centre.

        Only the traversed vessel is explored, not everything the patch saw: in a dense tree, siblings
        running beside the followed vessel must stay open for their own branches.
        """
        reach = WALKED_RADII * radius + float(self.spacing.max())
        ball = (np.linalg.norm(offsets, axis=1) <= radius + float(self.spacing.max())).reshape(component.shape)
        if parent is None:
            return component & ball
        back = (np.asarray(parent, dtype=np.float64) - lo - local) * self.spacing  # centre -> parent, mm
        length2 = max(float(back @ back), 1e-9)
        t = offsets @ back / length2  # 0 at the centre, 1 at the parent; < 0 is ahead, not walked yet
        to_path = np.linalg.norm(offsets - np.clip(t, 0.0, 1.0)[:, None] * back, axis=1)
        walked = ((t >= 0) & (to_path <= reach)).reshape(component.shape)
        return component & (walked | ball)

    def _exits(self, component, distance, lo, centre, came_from) -> list[tuple[np.ndarray, np.ndarray]]:
        shell = component & (distance >= SHELL_INNER * self.radius_mm) & (distance <= SHELL_OUTER * self.radius_mm)
        clusters, count = cc3d.connected_components(shell, connectivity=26, return_N=True)
        shape = np.asarray(self.images.shape[1:])
        out = []
        for k in range(1, count + 1):
            voxels = np.argwhere(clusters == k)
            if len(voxels) < MIN_EXIT_VOXELS:
                continue
            # The vessel voxel of the cluster nearest its centroid: a centroid of a curved cluster may lie
            # off the vessel, where the explored check would never see it.
            point = voxels[np.argmin(np.linalg.norm(voxels - voxels.mean(axis=0), axis=1))].astype(np.float64) + lo
            direction = (point - centre) * self.spacing
            direction /= max(np.linalg.norm(direction), 1e-9)
            if came_from is not None and float(direction @ came_from) < BACKWARD_COS:
                continue  # straight back where the branch came from (a branch may leave at a wide angle)
            index = tuple(np.round(point).astype(int))
            if np.any(np.asarray(index) < BORDER_VOXELS) or np.any(np.asarray(index) >= shape - BORDER_VOXELS):
                continue  # the image border
            if self.explored[index]:
                continue  # another branch was here
            out.append((point, direction))
        return out


def _local_radius(component: np.ndarray, local: np.ndarray, spacing: np.ndarray) -> float:
    """Vessel radius (mm) at the step: the largest distance to the background within two voxels of ``local``."""
    depth = edt.edt(component, anisotropy=tuple(float(s) for s in spacing), black_border=False)
    centre = np.clip(np.round(local).astype(int), 0, np.asarray(component.shape) - 1)
    window = tuple(slice(max(c - 2, 0), c + 3) for c in centre)
    return float(depth[window].max())


def _component_at(vessel: np.ndarray, local: np.ndarray, spacing: np.ndarray) -> np.ndarray | None:
    """The vessel component nearest to ``local`` (within 3 voxels) with the pieces it is broken from, or None.

    Pieces within :data:`GAP_VOXELS` of the component join it (repeatedly), so that a vessel the network
    broke inside the patch is still followed beyond the break, as gap bridging would reconnect it.
    """
    labels = cc3d.connected_components(vessel, connectivity=26)
    if not labels.any():
        return None
    centre = np.clip(np.round(local).astype(int), 0, np.asarray(vessel.shape) - 1)
    window = tuple(slice(max(c - 3, 0), c + 4) for c in centre)
    found = labels[window]
    if not found.any():
        return None
    points = np.argwhere(found > 0) + np.array([w.start for w in window])
    nearest = points[np.argmin(np.linalg.norm((points - local) * spacing, axis=1))]
    component = labels == labels[tuple(nearest)]
    for _ in range(MAX_JOINS):
        near = ndimage.binary_dilation(component, iterations=GAP_VOXELS + 1)
        touching = np.unique(labels[near & vessel & ~component])
        if touching.size == 0:
            break
        component |= np.isin(labels, touching)
    return component


def track_vessels(
    model: TrainedModel, images: np.ndarray, geometry: ImageGeometry, seeds: list[TrackingSeed],
    options: TrackingOptions | None = None,
) -> TrackingResult:
    """Track the vessel tree of ``images`` (``(C, Z, Y, X)``) from ``seeds``; see the module docstring.

    Raises :class:`VesselSegError` for a seed outside the image.
    """
    options = options or TrackingOptions()
    tracker = _Tracker(model, images, geometry, options)
    queue: deque[tuple[np.ndarray, np.ndarray | None, int, np.ndarray | None]] = deque()
    for seed in seeds:
        index = physical_to_index(geometry, seed.point_mm)
        if np.any(index < -0.5) or np.any(index > np.asarray(images.shape[1:]) - 0.5):
            raise VesselSegError(f"seed {seed.point_mm} mm lies outside the image (voxel index z, y, x {np.round(index, 1)})")
        queue.append((index, None, tracker.result.branches, None))
        tracker.result.branches += 1
    steps_done = 0
    with tqdm(desc="tracking", unit="patch", disable=None) as bar:
        while queue and steps_done < options.max_steps:
            centre, came_from, branch, parent = queue.popleft()
            if came_from is not None and tracker.explored[tuple(np.round(centre).astype(int))]:
                continue  # another branch reached this exit after it was queued
            exits = tracker.step(centre, came_from, branch, parent)
            steps_done += 1
            for k, (point, direction) in enumerate(exits):
                child = branch
                if k > 0:  # a bifurcation (or both ways from a seed): the further exits start new branches
                    child = tracker.result.branches
                    tracker.result.branches += 1
                queue.append((point, direction, child, centre))
            bar.update()
            bar.set_postfix(branches=tracker.result.branches, open=len(queue), refresh=False)
    if queue:
        log.warning("tracking stopped after %d steps (--max-steps); %d branch end(s) left", options.max_steps, len(queue))
    tracker.result.mask = _reached_mask(tracker)
    # the share of distinct voxels some patch covered (patches overlap: their summed voxels can exceed the image)
    log.info("tracking: %d step(s), %d branch(es), %.1f%% of the image predicted", len(tracker.result.steps),
             tracker.result.branches, 100.0 * np.count_nonzero(tracker.predicted) / max(1, tracker.predicted.size))
    return tracker.result


def _reached_mask(tracker: _Tracker) -> np.ndarray:
    """Voxels above the threshold in the merged map, in components that hold an explored core."""
    vessel = tracker.probability >= round(tracker.options.threshold * 255)
    labels = cc3d.connected_components(vessel, connectivity=26)
    reached = np.unique(labels[tracker.explored & vessel])
    reached = reached[reached > 0]
    label = tracker.model.label_values[1] if len(tracker.model.label_values) > 1 else 1
    return np.where(np.isin(labels, reached) & vessel, label, 0).astype(np.uint8)
