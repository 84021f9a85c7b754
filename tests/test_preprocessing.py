"""Resampling, normalisation, case preprocessing and its inverse, and dataset preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from vessel_seg import case_store
from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import DatasetError, PlansError
from vessel_seg.imageio import ImageGeometry, write_image
from vessel_seg.planners.normalization import normalize
from vessel_seg.planners.plans import ChannelIntensity, ConfigurationPlan, NetworkTopology, Plans
from vessel_seg.planners.preprocessing import (
    preprocess_case,
    preprocess_dataset,
    restore_to_original,
    sample_class_locations,
)
from vessel_seg.planners.resampling import (
    compute_new_shape,
    resample_image,
    resample_label,
    resample_label_to_shape,
    resample_to_shape,
)

SPACING = (3.0, 0.8, 0.8)  # anisotropic: 3.0 / 0.8 > 3
SHAPE = (14, 40, 44)
BODY = (slice(2, 12), slice(4, 36), slice(6, 40))


def topology(dim: int) -> NetworkTopology:
    return NetworkTopology(
        dim=dim,
        features_per_stage=[8, 16],
        kernel_sizes=[[3] * dim, [3] * dim],
        strides=[[1] * dim, [2] * dim],
        blocks_per_stage=[1, 1],
        blocks_per_stage_decoder=[1],
    )


def config(name: str, spacing, identifier: str | None = None, dim: int = 3, scheme: str = "ct") -> ConfigurationPlan:
    return ConfigurationPlan(
        name=name,
        data_identifier=identifier or f"vs_plans_{name}",
        spacing=list(spacing),
        median_shape=list(SHAPE),
        patch_size=[16] * dim,
        batch_size=2,
        normalization=[scheme],
        network=topology(dim),
    )


def make_plans(*configs: ConfigurationPlan) -> Plans:
    return Plans(
        dataset_name="Dataset001_Test",
        plans_name="vs_plans",
        preset="cpu",
        gpu_memory_gb=8.0,
        original_median_spacing=list(SPACING),
        original_median_shape=list(SHAPE),
        labels={"background": 0, "vessel": 1},
        channel_names={"0": "CT"},
        file_ending=".nii.gz",
        intensity_properties={
            "0": ChannelIntensity(mean=100.0, std=50.0, percentile_00_5=-50.0, percentile_99_5=300.0)
        },
        configurations={c.name: c for c in configs},
    )


def synthetic_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, ImageGeometry]:
    """A body (non-zero box) holding a bright tube along x and a small blob; zero outside the body."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    tube = ((z - 7) * SPACING[0]) ** 2 + ((y - 20) * SPACING[1]) ** 2 <= 4.5**2
    blob = ((z - 5) * SPACING[0]) ** 2 + ((y - 10) * SPACING[1]) ** 2 + ((x - 30) * SPACING[2]) ** 2 <= 4.0**2
    body = np.zeros(SHAPE, bool)
    body[BODY] = True
    label = ((tube | blob) & body).astype(np.uint8)
    image = np.where(body, rng.normal(40.0, 10.0, SHAPE) + 200.0 * label, 0.0).astype(np.float32)
    return image[None], label, ImageGeometry(shape=SHAPE, spacing=SPACING, origin=(1.0, 2.0, 3.0))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# --- resampling ---------------------------------------------------------------------------------


def test_resample_image_shape_dtype_and_constant_preserved():
    data = np.full((2, 10, 12, 14), 7.0, np.float32)
    out = resample_image(data, (1.0, 1.0, 1.0), (0.5, 1.5, 0.7))
    assert out.shape == (2, *compute_new_shape((10, 12, 14), (1, 1, 1), (0.5, 1.5, 0.7))) == (2, 20, 8, 20)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 7.0, atol=1e-4)


def test_anisotropic_axis_is_resampled_with_nearest_neighbour():
    # Each z slice holds a distinct constant plus an in-plane ramp.
    z_values = np.arange(6, dtype=np.float32)[:, None, None] * 10
    ramp = np.linspace(0, 1, 8, dtype=np.float32)[None, None, :]
    data = (z_values + ramp + np.zeros((6, 8, 8), np.float32))[None]
    out = resample_image(data, (5.0, 1.0, 1.0), (1.0, 1.0, 0.5), order=3)
    assert out.shape == (1, 30, 8, 16)
    # Across slices: every output slice is an input slice's value (order 0), never a blend.
    slice_levels = np.round(out[0, :, 0, 0] / 10) * 10
    assert set(np.unique(slice_levels)) == set(z_values.ravel())
    np.testing.assert_allclose(out[0, :, 0, 0], slice_levels, atol=0.2)
    # In-plane: cubic interpolation creates values between the input samples.
    assert len(np.unique(np.round(out[0, 0, 0], 4))) == 16
    # The same data with isotropic spacing is interpolated across z as well.
    iso = resample_to_shape(data, (30, 8, 16), (1.0, 1.0, 1.0), (0.2, 1.0, 0.5), order=1)
    assert len(np.unique(np.round(iso[0, :, 0, 0]))) > 6


def test_probabilities_back_to_exact_shape_from_float16():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 9, 13, 11))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float16)
    out = resample_to_shape(probs, (17, 25, 23), (2.0, 1.0, 1.0), (1.05, 0.52, 0.48), order=1)
    assert out.shape == (3, 17, 25, 23) and out.dtype == np.float16
    # Linear interpolation keeps a partition of unity.
    np.testing.assert_allclose(out.astype(np.float32).sum(0), 1.0, atol=5e-3)


def test_label_resampling_keeps_declared_labels_and_thin_lines():
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[6, 6, :] = 1  # one voxel thick
    seg[2:5, 2:5, 2:5] = 2
    seg[9, 9, 9] = 7  # not declared: becomes background
    up = resample_label(seg, (1, 1, 1), (0.5, 0.5, 0.5), labels=[0, 1, 2])
    assert up.shape == (24, 24, 24) and up.dtype == np.uint8
    assert set(np.unique(up)) == {0, 1, 2}
    back = resample_label_to_shape(up, seg.shape, (0.5,) * 3, (1,) * 3, labels=[1, 2])
    expected = np.where(seg == 7, 0, seg)
    np.testing.assert_array_equal(back, expected)
    nearest = resample_label(seg, (1, 1, 1), (0.5, 0.5, 0.5), labels=[1, 2, 7], order=0)
    np.testing.assert_array_equal(nearest[::2, ::2, ::2], seg)


# --- normalisation ------------------------------------------------------------------------------


def test_ct_normalisation_clips_then_uses_dataset_statistics():
    data = np.array([-1000.0, 0.0, 100.0, 2000.0], np.float32).reshape(1, 1, 1, 4)
    stats = {"0": ChannelIntensity(mean=100.0, std=50.0, percentile_00_5=-50.0, percentile_99_5=300.0)}
    out = normalize(data, ["ct"], stats)
    np.testing.assert_allclose(out.ravel(), [-3.0, -2.0, 0.0, 4.0])
    assert out.dtype == np.float32 and data[0, 0, 0, 0] == -1000.0  # input untouched


def test_soft_ct_normalisation_keeps_bone_brighter_than_lumen():
    # lumen up to the 99.5th percentile (300 HU), bone 700 HU and 1500 HU, a 3000 HU implant
    data = np.array([-1000.0, -50.0, 100.0, 300.0, 700.0, 1500.0, 3000.0], np.float32).reshape(1, 1, 1, 7)
    stats = {"0": ChannelIntensity(mean=100.0, std=50.0, percentile_00_5=-50.0, percentile_99_5=300.0)}
    soft = normalize(data, ["ct_soft"], stats).ravel()
    hard = normalize(data, ["ct"], stats).ravel()
    np.testing.assert_allclose(soft[1:4], hard[1:4])  # unchanged inside the window
    assert np.all(np.diff(soft) > 0)  # order kept: bone > lumen, implant > bone
    np.testing.assert_allclose(soft[4], 4.0 + np.log1p(8.0), rtol=1e-6)  # hi + std*log1p(400/50), in std units
    np.testing.assert_allclose(soft[0], -3.0 - np.log1p(950.0 / 50.0), rtol=1e-6)
    assert soft[-1] - 4.0 < 0.1 * (3000 - 300) / 50  # compressed 54 std -> ~4 std above the window
    assert hard[4] == hard[-1] == 4.0  # while hard clipping merges bone and implant with the brightest lumen
    assert data[0, 0, 0, -1] == 3000.0  # input untouched


def test_zscore_normalisation_per_image_and_errors():
    rng = np.random.default_rng(0)
    data = np.stack([rng.normal(5, 3, (6, 7, 8)), rng.normal(-2, 0.5, (6, 7, 8))]).astype(np.float32)
    out = normalize(data, ["zscore", "zscore"], {}, inplace=True)
    assert out is data
    np.testing.assert_allclose(out.reshape(2, -1).mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.reshape(2, -1).std(1), 1.0, atol=1e-4)
    constant = normalize(np.full((1, 2, 2, 2), 3.0, np.float32), ["zscore"], {})
    assert np.isfinite(constant).all()
    with pytest.raises(PlansError, match="unknown normalisation scheme 'minmax'"):
        normalize(data, ["zscore", "minmax"], {})
    with pytest.raises(PlansError, match="1 normalisation scheme"):
        normalize(data, ["zscore"], {})
    with pytest.raises(PlansError, match="CT channel 1"):
        normalize(data, ["zscore", "ct"], {})


# --- case preprocessing and its inverse ---------------------------------------------------------


def test_preprocess_then_restore_round_trip():
    images, label, geometry = synthetic_case()
    cfg = config("3d_fullres", (1.5, 1.0, 1.0))
    plans = make_plans(cfg)
    data, seg, props = preprocess_case(images, label, geometry, plans, cfg, "case_0")
    assert props.crop_bbox == [[s.start, s.stop] for s in BODY]
    assert props.shape_after_crop == [10, 32, 34]
    assert props.spacing == [1.5, 1.0, 1.0]
    assert data.shape[1:] == seg.shape == tuple(props.shape_after_resampling) == (20, 26, 27)
    assert data.dtype == np.float32 and seg.dtype == np.uint8
    # CT normalisation with the plans' statistics: clipped range maps to [-3, 4].
    assert data.min() >= -3.0 - 0.3 and data.max() <= 4.0 + 0.3
    assert images[0, 0, 0, 0] == 0.0 and images.dtype == np.float32  # caller's array unchanged
    # Foreground locations all point at foreground voxels of the stored label.
    locations = np.array(props.class_locations["1"])
    assert len(locations) == int(seg.sum()) and seg[tuple(locations.T)].all()

    restored = restore_to_original(seg, props, is_label=True)
    assert restored.shape == SHAPE and restored.dtype == np.uint8
    assert dice(restored == 1, label == 1) > 0.9
    outside = np.ones(SHAPE, bool)
    outside[BODY] = False
    assert not restored[outside].any()

    probs = np.stack([1.0 - seg, seg]).astype(np.float16)
    restored_probs = restore_to_original(probs, props, is_label=False)
    assert restored_probs.shape == (2, *SHAPE) and restored_probs.dtype == np.float16
    assert restored_probs[0, 0, 0, 0] == 1.0 and restored_probs[1, 0, 0, 0] == 0.0
    np.testing.assert_allclose(restored_probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    assert dice(restored_probs[1] > 0.5, label == 1) > 0.9

    # Inference: no label, same image and geometry bookkeeping.
    data_inf, seg_inf, props_inf = preprocess_case(images, None, geometry, plans, cfg, "case_0")
    assert seg_inf is None and props_inf.class_locations == {}
    np.testing.assert_array_equal(data_inf, data)


def test_2d_configuration_keeps_z_spacing():
    images, label, geometry = synthetic_case()
    cfg = config("2d", (1.0, 1.0), dim=2, scheme="zscore")
    data, seg, props = preprocess_case(images, label, geometry, make_plans(cfg), cfg, "case_0")
    assert props.spacing == [3.0, 1.0, 1.0]
    assert data.shape[1] == seg.shape[0] == props.shape_after_crop[0] == 10
    assert abs(float(data.mean())) < 1e-3  # per-image z-score
    back = restore_to_original(seg, props, is_label=True)
    assert back.shape == SHAPE and dice(back == 1, label == 1) > 0.9


def test_class_locations_cover_small_components():
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[2:18, 2:18, 2:10] = 1  # large component: 2048 voxels
    seg[15:17, 15, 15] = 1  # small separate component: 2 voxels
    seg[5, 15, 15] = 2
    locations = sample_class_locations(seg, [0, 1, 2, 3], max_samples=100, min_per_component=5, seed=3)
    ones = np.array(locations["1"])
    assert 100 <= len(ones) <= 107 and (seg[tuple(ones.T)] == 1).all()
    assert len(np.unique(ones, axis=0)) == len(ones)
    assert sum(1 for p in ones.tolist() if p[1:] == [15, 15]) == 2  # both voxels of the small piece
    assert locations["2"] == [[5, 15, 15]] and locations["3"] == []
    again = sample_class_locations(seg, [1], max_samples=100, min_per_component=5, seed=3)
    assert again["1"] == locations["1"]  # reproducible for a given seed


# --- dataset preprocessing ----------------------------------------------------------------------


def write_raw_dataset(root, n_cases: int = 2):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n_cases):
        images, label, geometry = synthetic_case(seed=i)
        write_image(images[0], geometry, root / "imagesTr" / f"case{i}_0000.nii.gz")
        write_image(label, geometry, root / "labelsTr" / f"case{i}.nii.gz")
    DatasetInfo({"0": "CT"}, {"background": 0, "vessel": 1}, n_cases, ".nii.gz").save(root / "dataset.json")


def test_preprocess_dataset_writes_shared_data_once_and_resumes(data_roots):
    raw = data_roots["raw"] / "Dataset001_Test"
    out = data_roots["preprocessed"] / "Dataset001_Test"
    write_raw_dataset(raw)
    full = config("3d_fullres", (1.5, 1.0, 1.0))
    cascade = config("3d_cascade_fullres", (1.5, 1.0, 1.0), identifier=full.data_identifier)
    flat = config("2d", (1.0, 1.0), dim=2)
    plans = make_plans(full, cascade, flat)
    folders = preprocess_dataset(raw, out, plans, ["3d_fullres", "3d_cascade_fullres", "2d"], num_workers=2)
    assert folders == [out / "vs_plans_3d_fullres", out / "vs_plans_2d"]
    assert sorted(p.name for p in out.iterdir()) == ["vs_plans_2d", "vs_plans_3d_fullres"]
    for folder in folders:
        assert case_store.list_cases(folder) == ["case0", "case1"]
    data, seg, props = case_store.load_case(folders[0], "case1")
    assert data.shape[1:] == seg.shape == tuple(props.shape_after_resampling)
    assert props.original_geometry.origin == (1.0, 2.0, 3.0)

    # A killed run: case1's properties (written last) are missing; case0 must not be recomputed.
    kept = folders[0] / "case0.npy"
    kept_mtime = kept.stat().st_mtime_ns
    (folders[0] / "case1.json").unlink()
    preprocess_dataset(raw, out, plans, ["3d_fullres"])
    assert kept.stat().st_mtime_ns == kept_mtime
    assert case_store.list_cases(folders[0]) == ["case0", "case1"]


def test_preprocess_dataset_rejects_bad_inputs(data_roots):
    raw = data_roots["raw"] / "Dataset001_Test"
    write_raw_dataset(raw, n_cases=1)
    full = config("3d_fullres", (1.5, 1.0, 1.0))
    clash = config("3d_cascade_fullres", (2.0, 1.0, 1.0), identifier=full.data_identifier)
    with pytest.raises(PlansError, match="share data identifier"):
        preprocess_dataset(
            raw, data_roots["preprocessed"], make_plans(full, clash), ["3d_fullres", "3d_cascade_fullres"]
        )
    _, label, geometry = synthetic_case()
    label[8, 20, 20] = 5
    write_image(label, geometry, raw / "labelsTr" / "case0.nii.gz")
    with pytest.raises(DatasetError, match=r"case0\.nii\.gz: label values \[5\]"):
        preprocess_dataset(raw, data_roots["preprocessed"], make_plans(full), ["3d_fullres"])
