"""The fast spatial and low-resolution transforms against the batchgenerators transforms they replace."""

from __future__ import annotations

import math

import numpy as np
import pytest
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import SpatialTransform
from scipy.ndimage import gaussian_filter

from vessel_seg.trainers.augmentation import initial_patch_size
from vessel_seg.trainers.low_resolution import SimulateLowResolution
from vessel_seg.trainers.spatial import SpatialAugmentation


def smooth_batch(shape, labels, batch_size=2, seed=0):
    """Smooth noise and a label map thresholded from it (``labels`` values 0..labels-1, or all 1 for 1)."""
    rng = np.random.default_rng(seed)
    data = np.stack([gaussian_filter(rng.normal(size=shape), 2)[None] for _ in range(batch_size)]).astype(np.float32)
    seg = np.ones(data.shape, np.uint8) if labels == 1 else (data > 0.05).astype(np.uint8)
    if labels == 3:
        seg[data > 0.15] = 2
    return data, seg


def reference(patch, angle, order, p_rotation, p_scale, elastic=False):
    return SpatialTransform(
        patch, patch_center_dist_from_border=None, do_elastic_deform=elastic, alpha=(0.0, 900.0), sigma=(9.0, 13.0),
        p_el_per_sample=1, do_rotation=True, angle_x=(-angle, angle), angle_y=(-angle, angle), angle_z=(-angle, angle),
        p_rot_per_sample=p_rotation, do_scale=True, scale=(0.7, 1.4), p_scale_per_sample=p_scale,
        border_mode_data="constant", border_cval_data=0, order_data=order, border_mode_seg="constant",
        border_cval_seg=0, order_seg=1, random_crop=False, data_key="data", label_key="target",
    )


def assert_matches_reference(ours, theirs, data, seg, seed):
    np.random.seed(seed)
    expected = theirs(data=data.copy(), target=seg.copy())
    drawn = np.random.get_state()[2]
    np.random.seed(seed)
    out = ours(data=data.copy(), target=seg.copy())
    assert np.random.get_state()[2] == drawn  # the same random draws, so seeded workers keep their streams
    assert out["data"].dtype == np.float32 and out["target"].dtype == np.uint8
    np.testing.assert_allclose(out["data"], expected["data"], atol=2e-6)
    np.testing.assert_array_equal(out["target"], np.rint(expected["target"]))


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("labels", [1, 2, 3])
@pytest.mark.parametrize(("patch", "degrees"), [((12, 10, 14), 30), ((20, 24), 180)])
def test_spatial_matches_batchgenerators(patch, degrees, labels, order):
    angle = math.radians(degrees)
    sample = initial_patch_size(patch, angle, (0.7, 1.4))
    ours = SpatialAugmentation(patch, angle, (0.7, 1.4), p_rotation=0.6, p_scale=0.6, order_data=order)
    for seed in range(3):
        data, seg = smooth_batch(sample, labels, seed=seed)
        assert_matches_reference(ours, reference(patch, angle, order, 0.6, 0.6), data, seg, seed)


@pytest.mark.parametrize("order", [1, 3])
def test_elastic_deformation_matches_batchgenerators(order):
    patch, angle = (10, 12, 11), 0.5
    ours = SpatialAugmentation(patch, angle, (0.7, 1.4), p_rotation=0.5, p_scale=0.5, elastic=True, p_elastic=1.0,
                               order_data=order)
    data, seg = smooth_batch((26, 28, 26), 2, seed=4)
    assert_matches_reference(ours, reference(patch, angle, order, 0.5, 0.5, elastic=True), data, seg, 4)


def test_no_draw_is_a_plain_centre_crop():
    data, seg = smooth_batch((9, 12, 15), 2)
    out = SpatialAugmentation((4, 6, 8), 0.5, (0.7, 1.4), p_rotation=0, p_scale=0)(data=data.copy(), target=seg)
    np.testing.assert_array_equal(out["data"], data[:, :, 2:6, 3:9, 3:11])
    np.testing.assert_array_equal(out["target"], seg[:, :, 2:6, 3:9, 3:11])
    with pytest.raises(ValueError, match="order_data"):
        SpatialAugmentation((4, 4), 0.1, (1, 1), order_data=2)


@pytest.mark.parametrize(("shape", "ignore"), [((24, 20, 18), None), ((6, 20, 22), (0,)), ((30, 26), None)])
def test_low_resolution_matches_batchgenerators(shape, ignore):
    rng = np.random.default_rng(1)
    data = np.stack([[gaussian_filter(rng.normal(size=shape), 1.5)] * 2 for _ in range(3)]).astype(np.float32)
    theirs = SimulateLowResolutionTransform(zoom_range=(0.5, 1.0), per_channel=True, p_per_channel=0.5,
                                            order_downsample=0, order_upsample=3, p_per_sample=0.8,
                                            ignore_axes=ignore, data_key="data")
    ours = SimulateLowResolution((0.5, 1.0), p_per_sample=0.8, p_per_channel=0.5, ignore_axes=ignore)
    changed = 0
    for seed in range(3):
        np.random.seed(seed)
        expected = theirs(data=data.copy())["data"]
        np.random.seed(seed)
        out = ours(data=data.copy())["data"]
        np.testing.assert_allclose(out, expected, atol=2e-6)
        changed += int(not np.array_equal(out, data))
    assert changed >= 2


def test_shared_slots_round_trip_and_fall_back_to_pickling():
    from vessel_seg.trainers.shared_batches import InSlot, SharedSlots

    slots = SharedSlots.create(2, slot_bytes=1 << 20)
    assert slots is not None
    data = np.arange(2 * 64 * 64 * 8, dtype=np.float32).reshape(2, 1, 64, 64, 8)  # 256 KiB: shared
    batch = {"data": data.copy(), "target": np.ones((2, 1, 64, 64, 8), np.uint8), "keys": ["a", "b"],
             "small": np.zeros(10)}
    packed = slots.pack(batch)
    assert isinstance(packed["data"], InSlot) and isinstance(packed["target"], InSlot)
    assert isinstance(packed["small"], np.ndarray) and packed["keys"] == ["a", "b"]
    out = slots.unpack(packed)
    np.testing.assert_array_equal(out["data"], data)
    assert out["target"].dtype == np.uint8 and out["target"].all()
    too_big = {"data": np.zeros((2 << 20,), np.uint8)}
    assert isinstance(slots.pack(too_big)["data"], np.ndarray)  # larger than a slot: pickled
    slots.begin_close()
    assert isinstance(slots.pack({"data": data.copy()})["data"], np.ndarray)  # closing: no waiting for a slot
    slots.close()


def test_background_batches_are_the_same_with_and_without_shared_memory():
    from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

    from vessel_seg.trainers.background import BackgroundBatches

    class Loader(SlimDataLoaderBase):
        def __init__(self):
            super().__init__(None, 2)
            self.count = 0

        def generate_train_batch(self):
            self.count += 1
            return {"data": np.full((2, 1, 40, 40, 40), self.count, np.float32),
                    "target": np.full((2, 1, 40, 40, 40), self.count % 3, np.uint8), "keys": [self.count]}

    runs = []
    for shared in (True, False):
        with BackgroundBatches(Loader(), None, 1, seed=0, shared_memory=shared) as batches:
            assert (batches._slots is not None) == shared
            runs.append([next(batches) for _ in range(5)])
    for a, b in zip(*runs, strict=True):
        assert a["keys"] == b["keys"]
        np.testing.assert_array_equal(a["data"].numpy(), b["data"].numpy())
        np.testing.assert_array_equal(a["target"].numpy(), b["target"].numpy())
