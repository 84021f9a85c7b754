"""Target spacing of the configurations, with the vessel-radius rule.

Full resolution (``3d_fullres``, and in-plane for ``2d``), in this order:

1. **Median.** The per-axis median of the case spacings.
2. **Anisotropy (nnU-Net).** If the coarsest axis is more than :data:`ANISOTROPY_THRESHOLD` (3)
   times the finest, that axis takes the 10th percentile of the case spacings along it instead
   (so that few cases are downsampled along their thickest axis), but never finer than the other
   axes' median spacing.
3. **Vessel rule.** Convention: a vessel's *radius* is the distance from its centreline to its wall
   (the fingerprint's radius, in mm; diameter = 2 x radius). The rule asks that the thinnest common
   vessels (10th-percentile radius ``r10``) stay at least :data:`MIN_DIAMETER_VOXELS` (1.5) voxels
   *across*, i.e. their diameter ``2 r10`` spans 1.5 voxels, so every axis needs
   ``spacing <= 2 r10 / 1.5``. Below that a vessel can fall between voxel centres and vanish or
   break up in resampling (nnU-Net issue #1390). (A stricter radius >= 1.5 voxels reading would
   upsample even native-resolution angiograms by ~1.6x in volume for no measured gain.) An
   oblique vessel's cross-section spans every axis, so the rule applies to each axis, with three
   limits on how far it may refine an axis:

   * never below the finest native spacing found in the dataset on any (non-anisotropic) axis:
     interpolating finer than any acquisition adds no detail, only voxels;
   * never below ``median / MAX_VESSEL_REFINEMENT`` (2) of that axis, so compute grows at most 8x;
   * not on the anisotropic axis of step 2: thin slices do not exist in such data, and
     refining 3-5 mm slices to the in-plane resolution would multiply the volume for nothing.

   The rule only ever makes spacing finer. Each decision is written to the plans' notes.

Low resolution (``3d_lowres``): starting from the full-resolution spacing, each step multiplies the
spacing by :data:`LOWRES_STEP` (1.15) on every axis, or, while some axes are more than 2x finer than
the coarsest, only on those (so anisotropic data becomes more isotropic first, as in nnU-Net). The
planner stops stepping once its patch covers enough of the image. The vessel rule is *relaxed* for
this stage, which only provides context to ``3d_cascade_fullres`` (the thin vessels are segmented
there, at full resolution): the low-resolution spacing may not exceed ``r50 /``
:data:`LOWRES_MIN_RADIUS_VOXELS`, i.e. the median vessel keeps a radius of at least one voxel (two
voxels across), so the context stage still sees the larger half of the tree. The notes record which
share of the skeleton falls below 1.5 voxels across at the low-resolution spacing.

Single-voxel axes (2D images stored as one slice, see ``imageio.reader.SPACING_OF_2D_Z``) are left
out of every rule and keep their spacing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vessel_seg.planners.fingerprint import DatasetFingerprint, RadiusStats
from vessel_seg.planners.resampling import compute_new_shape

ANISOTROPY_THRESHOLD = 3.0
ANISOTROPIC_AXIS_PERCENTILE = 10
MIN_DIAMETER_VOXELS = 1.5
MAX_VESSEL_REFINEMENT = 2.0
LOWRES_STEP = 1.15
LOWRES_MIN_RADIUS_VOXELS = 1.0

AXIS_NAMES = ("z", "y", "x")


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def planar_axes(fingerprint: DatasetFingerprint) -> list[int]:
    """Axes with more than one voxel in the median cropped shape (all three for volumes)."""
    return [a for a, n in enumerate(fingerprint.median_shape_after_crop) if n > 1]


def anisotropic_axis(spacing: Sequence[float], axes: Sequence[int], threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The coarsest of ``axes`` when it exceeds ``threshold`` times the finest of them, else ``None``."""
    if len(axes) < 2:
        return None
    coarse = max(axes, key=lambda a: spacing[a])
    return coarse if spacing[coarse] > threshold * min(spacing[a] for a in axes) else None


def fullres_spacing(fingerprint: DatasetFingerprint) -> tuple[list[float], list[str]]:
    """Target spacing ``(z, y, x)`` in mm of the full-resolution configurations, and the decisions taken.

    See the module docstring for the rules.
    """
    spacings = fingerprint.spacings
    median = np.median(spacings, axis=0)
    target = median.copy()
    notes = [f"median spacing {_fmt(median)} mm"]
    axes = planar_axes(fingerprint)
    coarse = anisotropic_axis(median, axes)
    if coarse is not None:
        others = [a for a in axes if a != coarse]
        value = max(float(np.percentile(spacings[:, coarse], ANISOTROPIC_AXIS_PERCENTILE)), float(median[others].max()))
        target[coarse] = value
        notes.append(
            f"anisotropic data ({AXIS_NAMES[coarse]} {median[coarse]:.3g} mm > {ANISOTROPY_THRESHOLD:g} x "
            f"{median[others].min():.3g} mm): {AXIS_NAMES[coarse]} spacing set to the "
            f"{ANISOTROPIC_AXIS_PERCENTILE}th percentile, {value:.3g} mm"
        )
    notes.extend(_apply_vessel_rule(target, median, spacings, axes, coarse, fingerprint.vessel_radius_mm))
    notes.append(f"3d_fullres target spacing {_fmt(target)} mm")
    return [float(v) for v in target], notes


def _apply_vessel_rule(
    target: np.ndarray,
    median: np.ndarray,
    spacings: np.ndarray,
    axes: list[int],
    coarse: int | None,
    radius: RadiusStats,
) -> list[str]:
    """Refine ``target`` in place by the vessel rule; returns the notes."""
    if radius.num_samples == 0 or radius.p10 <= 0:
        return ["vessel rule skipped: the fingerprint holds no vessel radius samples"]
    limit = 2.0 * radius.p10 / MIN_DIAMETER_VOXELS
    head = f"vessel rule: 10th-percentile radius {radius.p10:.3g} mm needs spacing <= {limit:.3g} mm"
    rule_axes = [a for a in axes if a != coarse]
    if not rule_axes:
        return [f"{head}: no axis to apply it to"]
    finest_native = float(spacings[:, rule_axes].min())
    refined, held = [], []
    for a in rule_axes:
        if target[a] <= limit:
            continue
        floor = max(finest_native, median[a] / MAX_VESSEL_REFINEMENT)
        new = max(limit, floor)
        if new < target[a]:
            refined.append(f"{AXIS_NAMES[a]} {target[a]:.3g} -> {new:.3g} mm")
            target[a] = new
        if limit < floor:
            reason = "finest native spacing" if floor == finest_native else f"{MAX_VESSEL_REFINEMENT:g}x finer than the median"
            held.append(f"{AXIS_NAMES[a]} at {target[a]:.3g} mm ({reason})")
    notes = []
    if refined:
        notes.append(f"{head}: target spacing limited by vessel radius rule, {', '.join(refined)}")
    if held:
        coarsest = max(target[a] for a in rule_axes)
        thin = MIN_DIAMETER_VOXELS * coarsest / 2.0
        notes.append(
            f"{head}: refinement stops at {', '.join(held)}; vessels with radius < {thin:.3g} mm "
            f"(~{100 * radius.fraction_below(thin):.0f}% of the skeleton) span fewer than {MIN_DIAMETER_VOXELS:g} voxels across"
        )
    if coarse is not None and target[coarse] > limit:
        notes.append(
            f"{head}: not applied to the anisotropic axis {AXIS_NAMES[coarse]} ({target[coarse]:.3g} mm); "
            f"thin vessels running in-plane span fewer than {MIN_DIAMETER_VOXELS:g} slices there"
        )
    return notes or [f"{head}: met by the spacing above"]


def lowres_spacing_cap(radius: RadiusStats) -> float:
    """Coarsest spacing (mm) the low-resolution stage may use: ``r50 / LOWRES_MIN_RADIUS_VOXELS``.

    Infinite when the fingerprint holds no radius samples.
    """
    if radius.num_samples == 0 or radius.p50 <= 0:
        return float("inf")
    return radius.p50 / LOWRES_MIN_RADIUS_VOXELS


def lowres_step(
    spacing: Sequence[float], axes: Sequence[int], factor: float = LOWRES_STEP, cap: float = float("inf")
) -> list[float]:
    """One coarsening step of the low-resolution spacing (see the module docstring).

    No axis grows beyond ``cap`` mm (an axis already coarser keeps its spacing); when every axis is
    at the cap the spacing comes back unchanged.
    """
    current = np.asarray(spacing, dtype=np.float64)
    new = current.copy()
    coarsest = max(new[a] for a in axes)
    grow = [a for a in axes if coarsest / new[a] > 2] or list(axes)
    new[grow] *= factor
    new = np.minimum(new, np.maximum(cap, current))
    return [float(v) for v in new]


def resampled_shapes(fingerprint: DatasetFingerprint, spacing: Sequence[float]) -> np.ndarray:
    """``(N, 3)`` cropped case shapes after resampling to ``spacing``; single-voxel axes keep one voxel."""
    shapes = []
    for case in fingerprint.cases:
        target = [s if n == 1 else t for s, n, t in zip(case.spacing, case.shape_after_crop, spacing, strict=True)]
        shapes.append(compute_new_shape(case.shape_after_crop, case.spacing, target))
    return np.array(shapes, dtype=np.int64)


def median_resampled_shape(fingerprint: DatasetFingerprint, spacing: Sequence[float]) -> list[int]:
    """Per-axis median of :func:`resampled_shapes`, in voxels."""
    return [int(round(v)) for v in np.median(resampled_shapes(fingerprint, spacing), axis=0)]
