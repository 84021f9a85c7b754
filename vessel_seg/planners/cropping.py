"""Cropping to the non-zero region, shared by the fingerprint and preprocessing."""

from __future__ import annotations

import numpy as np

from vessel_seg.morphology import bounding_box


def nonzero_bbox(data: np.ndarray) -> list[list[int]]:
    """Bounding box ``[[start, stop], ...]`` over ``(Z, Y, X)`` of voxels non-zero in any channel.

    ``data`` is ``(C, Z, Y, X)``. nnU-Net fills holes inside the body first; that cannot change the
    box, so it is skipped (it took seconds on a 512x512x600 CT): a zero voxel outside the box of the
    non-zero voxels lies in a slab of zero voxels that reaches the image border, so it is connected
    to the border and is no hole. An all-zero image keeps its full extent.
    """
    mask = np.any(data != 0, axis=0)
    box = bounding_box(mask)
    if box is None:
        return [[0, s] for s in mask.shape]
    return [[b.start, b.stop] for b in box]


def crop_to_bbox(array: np.ndarray, bbox: list[list[int]]) -> np.ndarray:
    """Crop the last ``len(bbox)`` axes of ``array`` to ``bbox``."""
    lead = (slice(None),) * (array.ndim - len(bbox))
    return array[lead + tuple(slice(a, b) for a, b in bbox)]


def paste_into(shape: tuple[int, ...], cropped: np.ndarray, bbox: list[list[int]], fill=0) -> np.ndarray:
    """Inverse of :func:`crop_to_bbox`: ``cropped`` placed in a new array of ``shape`` (last axes)."""
    full_shape = tuple(cropped.shape[: cropped.ndim - len(bbox)]) + tuple(shape)
    out = np.full(full_shape, fill, dtype=cropped.dtype)
    lead = (slice(None),) * (cropped.ndim - len(bbox))
    out[lead + tuple(slice(a, b) for a, b in bbox)] = cropped
    return out
