"""Augmentation pipelines: geometry, shapes, dtypes, and that they really change the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vessel_seg.trainers.augmentation import (
    CascadeToOneHot,
    Convert2DTo3D,
    Convert3DTo2D,
    RandomBinaryMorphology,
    RandomComponentRemoval,
    batch_to_tensors,
    dummy_2d_axis,
    initial_patch_size,
    training_transforms,
    validation_transforms,
)


def make_batch(shape, batch_size=2, channels=1, seed=0):
    """Smooth random images and a tube along the first axis as the label."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(batch_size, channels, *shape)).astype(np.float32)
    target = np.zeros((batch_size, 1, *shape), np.uint8)
    center = [s // 2 for s in shape]
    target[(slice(None), 0, slice(None), *[slice(c - 1, c + 2) for c in center[1:]])] = 1
    return {"data": data, "target": target}


def center_crop(array, size):
    start = [(s - p) // 2 for s, p in zip(array.shape[2:], size, strict=True)]
    return array[(slice(None), slice(None), *[slice(a, a + p) for a, p in zip(start, size, strict=True)])]


def test_dummy_2d_axis_for_anisotropic_3d_only():
    assert dummy_2d_axis((3.5, 1.0, 1.0), 3) == 0
    assert dummy_2d_axis((0.5, 0.5, 2.0), 3) == 2
    assert dummy_2d_axis((2.9, 1.0, 1.0), 3) is None
    assert dummy_2d_axis((5.0, 1.0, 1.0), 2) is None


def test_initial_patch_size_covers_rotation_and_scaling():
    assert initial_patch_size((16, 24), 0.0, (1.0, 1.0)) == (16, 24)
    # a square rotated by 45 degrees needs its diagonal, times the largest zoom-out
    assert initial_patch_size((20, 20), math.pi, (0.7, 1.4)) == (40, 40)
    size = initial_patch_size((32, 32, 32), math.radians(30), (0.7, 1.4))
    assert all(45 <= s <= 32 * math.sqrt(3) * 1.4 for s in size)
    assert initial_patch_size((8, 20, 20), math.pi, (0.7, 1.4), fixed_axis=0) == (8, 40, 40)


@pytest.mark.parametrize("patch", [(16, 16, 16), (24, 20)])
def test_training_pipeline_shapes_dtypes_and_changes(patch):
    aug = training_transforms(patch, (1.0, 1.0, 1.0), p_rotation=0.5, p_scale=0.5)
    assert aug.mirror_axes == tuple(range(len(patch))) and aug.dummy_2d_axis is None
    assert all(s > p for s, p in zip(aug.sample_patch_size, patch, strict=True))
    np.random.seed(0)
    changed = 0
    for seed in range(4):
        batch = make_batch(aug.sample_patch_size, channels=2, seed=seed)
        plain = center_crop(batch["data"], patch).copy()
        out = aug.transform(**batch)
        assert out["data"].shape == (2, 2, *patch) and out["data"].dtype == np.float32
        assert out["target"].shape == (2, 1, *patch) and out["target"].dtype == np.uint8
        assert set(np.unique(out["target"])) <= {0, 1}
        assert out["data"].flags.c_contiguous
        changed += not np.allclose(out["data"], plain)
    assert changed >= 3


def test_rotation_keeps_label_values_and_moves_the_label():
    aug = training_transforms((16, 16, 16), (1.0, 1.0, 1.0), p_rotation=1.0, p_scale=0.0, mirror_axes=())
    np.random.seed(1)
    batch = make_batch(aug.sample_patch_size)
    plain = center_crop(batch["target"], (16, 16, 16)).copy()
    out = aug.transform(**batch)
    assert set(np.unique(out["target"])) == {0, 1}
    assert not np.array_equal(out["target"], plain)


def test_anisotropic_data_is_rotated_in_plane_only():
    aug = training_transforms((6, 16, 16), (4.0, 1.0, 1.0), p_rotation=1.0, p_scale=1.0)
    assert aug.dummy_2d_axis == 0 and aug.sample_patch_size[0] == 6
    np.random.seed(2)
    out = aug.transform(**make_batch(aug.sample_patch_size))  # the label is a tube along z
    assert out["target"].shape == (2, 1, 6, 16, 16)
    for sample in out["target"][:, 0]:
        assert sample.any() and all(np.array_equal(sample[0], s) for s in sample)  # in-plane: every slice alike


def test_dummy_2d_conversion_round_trips():
    batch = make_batch((3, 5, 7), channels=2)
    expected = {k: v.copy() for k, v in batch.items()}
    folded = Convert3DTo2D(2)(**batch)
    assert folded["data"].shape == (2, 2 * 7, 3, 5) and folded["target"].shape == (2, 7, 3, 5)
    restored = Convert2DTo3D(2)(**folded)
    for key in ("data", "target"):
        np.testing.assert_array_equal(restored[key], expected[key])
    assert "_dummy_2d_shapes" not in restored


def test_mirror_axes_are_configurable():
    assert training_transforms((8, 8, 8), (1, 1, 1), mirror_axes=(1, 2)).mirror_axes == (1, 2)
    with pytest.raises(ValueError, match="mirror axes"):
        training_transforms((8, 8), (1, 1, 1), mirror_axes=(2,))


def test_validation_pipeline_is_identity_up_to_dtype():
    aug = validation_transforms((8, 8, 8))
    assert aug.sample_patch_size == (8, 8, 8) and aug.mirror_axes == ()
    batch = make_batch((8, 8, 8))
    expected = {k: v.copy() for k, v in batch.items()}
    out = batch_to_tensors(aug.transform(**batch))
    assert out["data"].dtype == torch.float32 and out["target"].dtype == torch.float32
    np.testing.assert_array_equal(out["data"].numpy(), expected["data"])
    np.testing.assert_array_equal(out["target"].numpy(), expected["target"])


def test_cascade_one_hot_and_its_augmentations():
    batch = make_batch((12, 12, 12))
    previous = np.zeros((2, 1, 12, 12, 12), np.uint8)
    previous[:, 0, 2:10, 2:10, 2:10] = 1
    previous[:, 0, 5, 5, 5] = 2
    batch["target"] = np.concatenate([batch["target"], previous], axis=1)
    out = CascadeToOneHot([1, 2])(**batch)
    assert out["data"].shape == (2, 3, 12, 12, 12) and out["target"].shape == (2, 1, 12, 12, 12)
    assert out["data"][:, 2].sum() == 2

    np.random.seed(0)
    before = out["data"].copy()
    morphed = RandomBinaryMorphology([1, 2], p_per_sample=1.0)(**{k: v.copy() for k, v in out.items()})
    assert set(np.unique(morphed["data"][:, 1:])) <= {0.0, 1.0}
    assert not np.array_equal(morphed["data"][:, 1], before[:, 1])
    assert (morphed["data"][:, 1:].sum(axis=1) <= 1).all()  # still one-hot
    np.testing.assert_array_equal(morphed["data"][:, 0], before[:, 0])  # image untouched


def test_component_removal_deletes_one_small_component():
    data = np.zeros((1, 1, 16, 16, 16), np.float32)
    data[0, 0, 1:3, 1:3, 1:3] = 1
    data[0, 0, 10:12, 10:12, 10:12] = 1
    data[0, 0, :, :, 14] = 1  # 256 voxels, more than 5% of the patch: never removed
    np.random.seed(0)
    out = RandomComponentRemoval([0], p_per_sample=1.0, max_fraction=0.05)(data=data.copy(), target=None)
    assert out["data"].sum() == data.sum() - 8
    assert out["data"][0, 0, :, :, 14].all()
