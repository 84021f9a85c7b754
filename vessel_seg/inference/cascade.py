"""The two steps that connect cascade stages, shared by training (validation) and inference.

A ``3d_lowres`` segmentation is resampled onto the ``3d_cascade_fullres`` preprocessed grid and
given to the full-resolution network as extra one-hot input channels, one per foreground label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vessel_seg.planners.resampling import resample_label_to_shape


def resample_for_next_stage(
    seg: np.ndarray,
    spacing: Sequence[float],
    next_shape: Sequence[int],
    next_spacing: Sequence[float],
    label_values: Sequence[int],
) -> np.ndarray:
    """Resample a low-resolution label map ``(Z, Y, X)`` onto the next stage's preprocessed grid.

    Parameters
    ----------
    seg : ndarray, (Z, Y, X), integer
        Segmentation of the previous stage in its preprocessed space.
    spacing, next_spacing : sequence of float
        Voxel sizes in mm ``(z, y, x)`` of the previous and the next stage's preprocessed arrays.
    next_shape : sequence of int
        Shape ``(Z', Y', X')`` of the next stage's preprocessed array.
    label_values : sequence of int
        All label values including the background 0.

    Returns
    -------
    ndarray, (Z', Y', X'), uint8
    """
    resampled = resample_label_to_shape(seg, next_shape, spacing, next_spacing, list(label_values[1:]))
    return resampled.astype(np.uint8)


def previous_stage_onehot(seg: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """One float32 indicator channel per foreground label: ``(len(label_values) - 1, Z, Y, X)``."""
    return np.stack([(seg == v).astype(np.float32) for v in label_values[1:]])


def add_previous_stage_channels(
    data: np.ndarray, case_id: str, previous_stage_dir: Path | None, label_values: Sequence[int]
) -> np.ndarray:
    """Append the previous stage's saved segmentation ``previous_stage_dir/CASE.npy`` as one-hot channels.

    Returns ``data`` unchanged when ``previous_stage_dir`` is ``None`` (not a cascade stage).
    """
    if previous_stage_dir is None:
        return data
    seg = np.load(previous_stage_dir / f"{case_id}.npy", allow_pickle=False)
    return np.concatenate([data, previous_stage_onehot(seg, label_values)])
