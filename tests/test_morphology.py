"""The shared shape helpers: one bounding box, one skeleton, one radius for fingerprint, metrics and centrelines."""

from __future__ import annotations

import numpy as np

from vessel_seg.morphology import bounding_box, skeleton, skeleton_and_radius


def _cylinder(shape=(20, 20, 40), radius=4.0, centre=(10.0, 10.0)) -> np.ndarray:
    z, y, _ = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


def test_bounding_box_grows_clips_and_knows_empty_masks():
    mask = np.zeros((10, 12, 14), bool)
    mask[2:4, 5, 0:3] = True
    assert bounding_box(mask) == (slice(2, 4), slice(5, 6), slice(0, 3))
    assert bounding_box(mask, margin=2) == (slice(0, 6), slice(3, 8), slice(0, 5))
    assert bounding_box(np.zeros((4, 4), bool)) is None


def test_skeleton_never_loses_a_vessel_that_thinning_erases():
    even = _cylinder(radius=3.0, centre=(9.5, 9.5))  # even width: Lee's thinning alone deletes it
    skel = skeleton(even)
    assert skel.any() and not skel[~even].any()
    assert len(np.unique(np.argwhere(skel)[:, 2])) >= 0.85 * even.shape[2]  # (nearly) the whole length


def test_radius_along_the_skeleton_is_the_vessel_radius_in_mm():
    cylinder = _cylinder(radius=4.0)
    skel, distance = skeleton_and_radius(cylinder, (0.5, 0.5, 1.0))
    radii = distance[skel & (np.indices(cylinder.shape)[2] > 5) & (np.indices(cylinder.shape)[2] < 34)]
    assert np.allclose(np.median(radii), 4.0 * 0.5, atol=0.5)  # 4 voxels of 0.5 mm
