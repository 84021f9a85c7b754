"""Label resampling in z-slabs: the result must not depend on the slab size, and must equal the
whole-volume one-hot interpolation (the reference path) voxel for voxel, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vessel_seg.planners.resampling import _labels_whole_volume, _zoom, resample_label_to_shape

CASES = [  # (input shape, output shape, current spacing, target spacing, whole-volume separate axis)
    ((20, 30, 28), (33, 25, 41), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None),  # joint 3D, up and down
    ((12, 40, 40), (30, 50, 35), (2.5, 0.6, 0.6), (1.0, 0.5, 0.5), 0),  # thick slices: nearest along z
    ((25, 31, 29), (25, 40, 20), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 0),  # z keeps its size
    ((25, 31, 29), (40, 31, 29), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 1),  # only z changes
    ((16, 16, 16), (24, 24, 24), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None),  # 2/3 ratio: exact 0.5 ties
]


def _labels(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Two smooth random labels plus one-voxel-thick sheets and lines (ties at 0.5 coverage)."""
    rng = np.random.default_rng(seed)
    seg = (ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52).astype(np.uint8)
    seg[ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.55] = 2
    seg[:, 5, :] = 1
    seg[3::4, :, 7] = 2
    return seg


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}->{c[1]}" for c in CASES])
def test_slabs_equal_whole_volume(case):
    shape, new_shape, spacing, target, axis = case
    seg = _labels(shape, seed=sum(new_shape))
    reference = _labels_whole_volume(seg, new_shape, [1, 2], np.uint8, 1, axis)
    whole = resample_label_to_shape(seg, new_shape, spacing, target, [0, 1, 2], slab_voxels=10**9)
    np.testing.assert_array_equal(whole, reference)
    plane = new_shape[1] * new_shape[2]
    for slab_voxels in (1, 2 * plane, 5 * plane):  # one slice, two, five per slab
        chunked = resample_label_to_shape(seg, new_shape, spacing, target, [0, 1, 2], slab_voxels=slab_voxels)
        np.testing.assert_array_equal(chunked, whole)
    assert whole.dtype == np.uint8 and set(np.unique(whole)) <= {0, 1, 2}


def test_unlisted_labels_become_background_in_slabs():
    seg = _labels((10, 12, 12), seed=1)
    out = resample_label_to_shape(seg, (15, 9, 9), (1, 1, 1), (1, 1, 1), [1], slab_voxels=1)
    assert set(np.unique(out)) <= {0, 1}
    np.testing.assert_array_equal(out, _labels_whole_volume(seg, (15, 9, 9), [1], np.uint8, 1, None))


def test_zoom_into_output_equals_fresh_result():
    volume = np.random.default_rng(2).random((9, 11, 13)).astype(np.float32)
    out = np.empty((14, 8, 13), np.float32)
    assert _zoom(volume, out.shape, 3, out) is out
    np.testing.assert_array_equal(out, _zoom(volume, out.shape, 3))


def test_same_shape_and_nearest_paths_keep_listed_labels_in_slabs():
    seg = _labels((9, 10, 11), seed=3)
    seg[0, 0, :4] = [7, 2, 1, 0]
    same = resample_label_to_shape(seg, seg.shape, (1, 1, 1), (1, 1, 1), [1, 2], slab_voxels=1)
    np.testing.assert_array_equal(same, np.where(np.isin(seg, [1, 2]), seg, 0))
    assert same.dtype == np.uint8 and same[0, 0, 0] == 0
    near = resample_label_to_shape(seg, (5, 20, 7), (1, 1, 1), (1, 1, 1), [1], order=0, slab_voxels=1)
    whole = resample_label_to_shape(seg, (5, 20, 7), (1, 1, 1), (1, 1, 1), [1], order=0)
    np.testing.assert_array_equal(near, whole)
    assert set(np.unique(near)) <= {0, 1}
