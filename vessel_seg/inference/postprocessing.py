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
from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import edt
import numpy as np

from vessel_seg.inference.gap_bridging import BridgeLimits, bridge_gaps

__all__ = [  # bridging lives in gap_bridging; re-exported here, where the recipe steps are
    "BridgeLimits", "DebrisReport", "PostprocessingRecipe", "apply_postprocessing", "bridge_gaps", "count_components",
    "keep_largest_component", "remove_detached_debris", "remove_small_components",
]

log = logging.getLogger(__name__)

CONNECTIVITY = 26


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
