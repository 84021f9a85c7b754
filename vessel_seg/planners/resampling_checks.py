"""Plausibility of a resampling before it runs: a wrong header spacing must fail in one line, not in memory."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A header whose spacing would blow a case up by more than this factor in voxels (3x per axis in 3D),
# to more than MIN_VOXELS_CHECKED voxels, is taken for a wrong header rather than resampled: 50 mm
# instead of 0.5 mm turns a 32^3 image into ~56 GiB.
MAX_UPSAMPLING_FACTOR = 27.0
MIN_VOXELS_CHECKED = 256**3


def resampling_problem(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> str | None:
    """Why resampling an image of ``shape`` at ``spacing`` to ``target_spacing`` is refused, or None.

    Refused: a non-positive or non-finite spacing, and an upsampling by more than
    :data:`MAX_UPSAMPLING_FACTOR` in voxels that ends above :data:`MIN_VOXELS_CHECKED` voxels.
    """
    values = np.asarray(list(spacing) + list(target_spacing), dtype=np.float64)
    if not (np.isfinite(values).all() and (values > 0).all()):
        return f"spacing {list(spacing)} mm / target {list(target_spacing)} mm must be positive and finite"
    before = float(np.prod(np.asarray(shape, dtype=np.float64)))
    after = float(np.prod([s * a / b for s, a, b in zip(shape, spacing, target_spacing, strict=True)]))
    if after > MIN_VOXELS_CHECKED and after > MAX_UPSAMPLING_FACTOR * max(before, 1.0):
        gib = after * 4 / 2**30
        return (
            f"spacing {[round(float(v), 4) for v in spacing]} mm would resample {list(shape)} voxels to "
            f"{after:.3g} voxels ({gib:.1f} GiB as float32) at {[round(float(v), 4) for v in target_spacing]} mm"
        )
    return None
