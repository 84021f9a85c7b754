"""Postprocessing: debris removal, keep-largest, gap bridging and the recipe that chains them."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from vessel_seg.inference.postprocessing import (
    PostprocessingRecipe,
    apply_postprocessing,
    bridge_gaps,
    keep_largest_component,
    remove_small_components,
)


def _tube(shape=(24, 24, 40), radius=2.0, x_range=(2, 38), gap=None) -> np.ndarray:
    """Straight tube along x centred in (z, y); ``gap`` = (first, stop) x indices left empty."""
    z, y, x = np.indices(shape)
    centre = (shape[0] // 2, shape[1] // 2)
    seg = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2) & (x >= x_range[0]) & (x < x_range[1])
    if gap is not None:
        seg &= ~((x >= gap[0]) & (x < gap[1]))
    return seg.astype(np.uint8)


def _probabilities(shape=(24, 24, 40), value=0.9) -> np.ndarray:
    """High foreground probability inside the tube's radius along its whole length, 0.01 elsewhere."""
    prob = np.full(shape, 0.01, dtype=np.float32)
    prob[_tube(shape, x_range=(0, shape[2])) > 0] = value
    return prob


def _components(seg: np.ndarray) -> int:
    return int(cc3d.connected_components(seg > 0, connectivity=26, return_N=True)[1])


def test_remove_small_components_drops_debris_and_keeps_vessel():
    seg = _tube()
    blob = (slice(1, 3), slice(1, 3), slice(1, 3))  # 8 voxels = 8 mm³ at 1 mm spacing
    seg[blob] = 1
    cleaned = remove_small_components(seg, [1], min_volume_mm3=20.0, spacing=(1.0, 1.0, 1.0))
    assert not cleaned[blob].any()
    np.testing.assert_array_equal(cleaned, _tube())
    assert seg[blob].all(), "input must not be modified"
    # Spacing-aware: at 2 mm spacing the same blob is 64 mm³ and survives.
    kept = remove_small_components(seg, [1], min_volume_mm3=20.0, spacing=(2.0, 2.0, 2.0))
    np.testing.assert_array_equal(kept, seg)


def test_keep_largest_component_per_label():
    seg = np.zeros((16, 16, 16), dtype=np.uint8)
    seg[1:4, 1:4, 1:4] = 1  # 27 voxels, largest of label 1
    seg[10, 10, 10] = 1
    seg[1:3, 10:14, 10:14] = 2  # 32 voxels, largest of label 2
    seg[12:14, 1:3, 1:2] = 2
    out = keep_largest_component(seg, [0, 1, 2])
    assert (out == 1).sum() == 27 and out[10, 10, 10] == 0
    assert (out == 2).sum() == 32 and not out[12:14, 1:3, 1:2].any()


def test_bridge_gaps_reconnects_a_short_gap():
    seg = _tube(gap=(18, 21))  # three empty voxels along x
    assert _components(seg) == 2
    out = bridge_gaps(seg, _probabilities(), spacing=(1.0, 1.0, 1.0), max_gap_mm=5.0)
    assert _components(out) == 1
    added = (out > 0) & (seg == 0)
    assert added[:, :, 18:21].any() and not added[:, :, :18].any() and not added[:, :, 21:].any()
    assert added.sum() <= (_tube() > 0)[:, :, 18:21].sum(), "the bridge stays within the vessel's calibre"
    assert (out[added] == 1).all()


def test_bridge_gaps_respects_length_probability_and_spacing():
    prob = _probabilities()
    long_gap = _tube(gap=(15, 23))  # eight voxels: longer than 5 mm
    np.testing.assert_array_equal(bridge_gaps(long_gap, prob, (1.0, 1.0, 1.0), max_gap_mm=5.0), long_gap)
    short_gap = _tube(gap=(18, 21))
    unsure = _probabilities(value=0.1)  # below min_probability along the gap
    np.testing.assert_array_equal(bridge_gaps(short_gap, unsure, (1.0, 1.0, 1.0), max_gap_mm=5.0), short_gap)
    # Three voxels of 2 mm along x are 6 mm of background: too long for 5 mm.
    np.testing.assert_array_equal(bridge_gaps(short_gap, prob, (1.0, 1.0, 2.0), max_gap_mm=5.0), short_gap)
    with pytest.raises(ValueError):
        bridge_gaps(short_gap, prob[:, :, :10], (1.0, 1.0, 1.0), max_gap_mm=5.0)


def test_apply_postprocessing_order_and_missing_probabilities():
    seg = _tube(gap=(18, 21), x_range=(2, 23))  # main tube x 2..17, short piece x 21..22 (~26 mm³)
    seg[1:3, 1:3, 1:3] = 1  # debris
    recipe = PostprocessingRecipe(min_component_mm3=30.0, bridge_gaps_mm=5.0)
    bridged = apply_postprocessing(seg, recipe, (1.0, 1.0, 1.0), [1], probabilities_fg=_probabilities())
    # Bridging runs first, so the short piece joins the tree before debris removal could drop it.
    assert _components(bridged) == 1 and bridged[:, :, 21:23].any()
    without = apply_postprocessing(seg, recipe, (1.0, 1.0, 1.0), [1])
    assert _components(without) == 1 and not without[:, :, 21:23].any()
    largest = apply_postprocessing(seg, PostprocessingRecipe(keep_largest=True), (1.0, 1.0, 1.0), [1])
    np.testing.assert_array_equal(largest, _tube(x_range=(2, 18)))
    np.testing.assert_array_equal(apply_postprocessing(seg, PostprocessingRecipe(), (1.0, 1.0, 1.0), [1]), seg)
    assert PostprocessingRecipe().is_identity and recipe.describe().startswith("bridge gaps <= 5 mm")


def test_default_debris_removal_takes_small_far_pieces_only():
    from vessel_seg.inference.postprocessing import count_components, remove_detached_debris

    seg = np.zeros((40, 40, 40), np.uint8)
    seg[20, 20, 2:38] = 1  # the tree: a 36-voxel vessel
    seg[20, 22:24, 10] = 1  # a broken branch 2 voxels (2 mm) beside it: kept
    seg[5, 5, 5] = 1  # a speck 20 mm away: removed
    seg[35, 2:30, 35] = 2  # a large far component (another vessel): kept, whatever its label
    out, report = remove_detached_debris(seg, (1.0, 1.0, 1.0), max_share=0.05, min_distance_mm=3.0)
    assert out[5, 5, 5] == 0 and out[20, 23, 10] == 1 and out[35, 10, 35] == 2
    assert (report.components_before, report.components_after, report.voxels_removed) == (4, 3, 1)
    assert count_components(out) == 3 and seg[5, 5, 5] == 1  # the input is not modified
    # physical distances: at 0.5 mm voxels the same speck is 10 mm away, the branch 1 mm
    out, _ = remove_detached_debris(seg, (0.5, 0.5, 0.5), max_share=0.05, min_distance_mm=3.0)
    assert out[5, 5, 5] == 0 and out[20, 23, 10] == 1
    single = np.zeros((8, 8, 8), np.uint8)
    assert remove_detached_debris(single, (1.0, 1.0, 1.0))[1].components_before == 0


def _line_tube(shape, centre_zy, x_range, radius=1.5) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((z - centre_zy[0]) ** 2 + (y - centre_zy[1]) ** 2 <= radius**2) & (x >= x_range[0]) & (x < x_range[1])


def test_bridging_follows_the_vessel_direction_but_never_joins_a_parallel_vessel():
    shape = (16, 24, 48)
    unsure = np.full(shape, 0.45, dtype=np.float32)  # the network hesitated everywhere: only direction decides
    main = _line_tube(shape, (8, 6), (0, 48))  # long vessel along x
    beside = _line_tube(shape, (8, 11), (12, 36))  # a piece running beside it, 2 background voxels away
    seg = (main | beside).astype(np.uint8)
    assert _components(seg) == 2
    np.testing.assert_array_equal(bridge_gaps(seg, unsure, (1.0, 1.0, 1.0), max_gap_mm=3.0), seg)
    # Without direction, the cheapest path crosses sideways: what direction-awareness prevents.
    sideways = bridge_gaps(seg, unsure, (1.0, 1.0, 1.0), max_gap_mm=3.0, max_angle_deg=None)
    assert _components(sideways) == 1
    # The same gap width along the piece's own axis is bridged: a broken vessel continues.
    broken = (_line_tube(shape, (8, 11), (0, 22)) | _line_tube(shape, (8, 11), (25, 48))).astype(np.uint8)
    joined = bridge_gaps(broken, unsure, (1.0, 1.0, 1.0), max_gap_mm=3.0)
    added = (joined > 0) & (broken == 0)
    assert _components(joined) == 1 and added.any() and np.all(np.argwhere(added)[:, 2] >= 21)
    assert np.all(np.argwhere(added)[:, 2] <= 25)


def test_bridging_follows_a_branch_that_meets_its_trunk_at_an_angle():
    shape = (16, 40, 40)
    prob = np.full(shape, 0.45, dtype=np.float32)
    trunk = _line_tube(shape, (8, 6), (0, 40))
    z, y, x = np.indices(shape)
    # a branch leaving the trunk at 45 degrees in the y-x plane, broken 3 voxels before it reaches the trunk
    along = (y - 6 + x - 10) / np.sqrt(2)
    across = (y - 6 - (x - 10)) / np.sqrt(2)
    branch = ((z - 8) ** 2 + across**2 <= 2.0) & (along >= 6) & (along <= 28)
    seg = (trunk | branch).astype(np.uint8)
    assert _components(seg) == 2
    out = bridge_gaps(seg, prob, (1.0, 1.0, 1.0), max_gap_mm=5.0)
    assert _components(out) == 1
