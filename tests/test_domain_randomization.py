"""Domain randomisation, modality-free plans and the microscopy-like style: reproducibility, ranges, units."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from vessel_seg.dataset import DatasetInfo
from vessel_seg.dataset_conversion.domain_randomization import RandomizationRanges, randomized_case
from vessel_seg.dataset_conversion.synthetic import case_rng, generate_dataset
from vessel_seg.errors import DatasetError, PlansError
from vessel_seg.imageio import read_array
from vessel_seg.planners.normalization import normalize
from vessel_seg.planners.planner import PRESETS
from vessel_seg.planners.preprocessing import target_spacing
from vessel_seg.pretraining import generate_randomized_dataset

SMALL = RandomizationRanges(extent_voxels=(32, 40), trees=(1, 2), root_radius_voxels=(1.0, 4.0))


def test_same_seed_and_index_give_the_same_case_and_others_differ():
    a, b = randomized_case(case_rng(5, 3), SMALL), randomized_case(case_rng(5, 3), SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.styles == b.styles
    c = randomized_case(case_rng(5, 4), SMALL)
    assert a.image.shape != c.image.shape or not np.array_equal(a.label, c.label)


def test_cases_stay_within_the_ranges():
    ranges = replace(SMALL, anisotropic_probability=0.5)
    seen_aniso = seen_iso = False
    for k in range(6):
        case = randomized_case(case_rng(11, k), ranges)
        z_spacing = case.geometry.spacing[0]
        assert case.geometry.spacing[1:] == (1.0, 1.0)
        assert 32 <= case.image.shape[1] == case.image.shape[2] <= 40
        assert z_spacing == 1.0 or 1.5 <= z_spacing <= 3.0
        seen_aniso |= z_spacing > 1.0
        seen_iso |= z_spacing == 1.0
        assert 1 <= case.styles["trees"] <= 2
        assert all(1.0 <= r <= 4.0 for r in case.styles["root_radii_voxels"])
        assert case.image.dtype == np.float32 and np.isfinite(case.image).all()
        assert case.label.dtype == np.uint8 and 0 < case.label.mean() < 0.5
        assert case.styles["noise"] in ("gaussian", "rician", "poisson")
    assert seen_aniso and seen_iso


@pytest.mark.parametrize("dark", [False, True])
def test_vessels_are_brighter_or_darker_than_their_surroundings_as_drawn(dark):
    ranges = replace(SMALL, dark_vessel_probability=1.0 if dark else 0.0, contrast=(4.0, 6.0), snr=(20.0, 30.0))
    for k in range(3):
        case = randomized_case(case_rng(2, k), ranges)
        lumen = case.label > 0
        shell = ndimage.binary_dilation(lumen, iterations=3) & ~ndimage.binary_dilation(lumen, iterations=1)
        # the final linear rescaling may have a positive scale only, so the sign of the contrast survives it
        assert (case.image[lumen].mean() < case.image[shell].mean()) == dark, case.styles


def test_randomized_dataset_is_written_resumed_and_guarded(tmp_path):
    folder = generate_randomized_dataset(990, 3, seed=1, raw_root=tmp_path, ranges=SMALL)
    info = DatasetInfo.load(folder / "dataset.json")
    assert info.num_training == 3 and info.labels == {"background": 0, "vessel": 1}
    image, geometry = read_array(folder / "imagesTr" / "rand_0002_0000.nii.gz")
    assert image.shape == randomized_case(case_rng(1, 2), SMALL).image.shape
    assert generate_randomized_dataset(990, 3, seed=1, raw_root=tmp_path, ranges=SMALL) == folder  # reused
    with pytest.raises(DatasetError, match="another pretraining set"):
        generate_randomized_dataset(990, 4, seed=1, raw_root=tmp_path, ranges=SMALL)
    # a killed run leaves its staging folder; the next run writes only the missing cases
    staging = tmp_path / ".Dataset991_VesselPretrain.partial"
    (staging / "labelsTr").mkdir(parents=True)
    (staging / "imagesTr").mkdir()
    marker = staging / "labelsTr" / "rand_0000.nii.gz"
    marker.write_bytes(b"kept")
    generate_randomized_dataset(991, 2, seed=1, raw_root=tmp_path, ranges=SMALL)
    assert (tmp_path / "Dataset991_VesselPretrain" / "labelsTr" / "rand_0000.nii.gz").read_bytes() == b"kept"
    assert not staging.exists()


def test_finest_voxel_spacing_is_isotropic_at_each_images_finest_spacing():
    from vessel_seg.planners.plans import ConfigurationPlan, NetworkTopology

    topology = NetworkTopology(3, [8, 16], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [1, 1], [1])
    config = ConfigurationPlan("3d_fullres", "x", [1.0, 1.0, 1.0], [32] * 3, [32] * 3, 2, ["percentile"], topology,
                               spacing_mode="finest_voxel")
    assert target_spacing(config, [0.8, 0.5, 0.5], [40, 64, 64]) == [0.5, 0.5, 0.5]
    assert target_spacing(config, [0.002, 0.001, 0.001], [16, 64, 64]) == [0.001, 0.001, 0.001]
    assert target_spacing(config, [5.0, 0.7, 0.9], [1, 64, 64]) == [5.0, 0.7, 0.7]  # a single slice keeps its spacing
    mm = replace(config, spacing_mode="mm")
    assert target_spacing(mm, [0.8, 0.5, 0.5], [40, 64, 64]) == [1.0, 1.0, 1.0]


def test_percentile_normalisation_ignores_units_and_outliers():
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 10.0, (1, 16, 32, 32)).astype(np.float32)
    image[0, 0, 0, :8] = 1e6  # a few saturated voxels (metal, a hot pixel)
    a = normalize(image, ["percentile"], {})
    b = normalize(image * 37.0 - 5000.0, ["percentile"], {})  # other units, other offset
    np.testing.assert_allclose(a, b, atol=1e-3)
    assert a.max() < 5.0  # the outliers were clipped, not allowed to squash the rest
    assert abs(float(a.mean())) < 1e-3 and abs(float(a.std()) - 1.0) < 1e-2


def test_pretrain_preset_writes_modality_free_plans():
    settings = PRESETS.get("pretrain")
    assert settings.plans_transform is not None and settings.base_features == PRESETS.get("cpu").base_features


def test_microscopy_style_dataset(tmp_path):
    folder = generate_dataset(3, 1, num_test_cases=1, size=32, seed=0, modality="microscopy", raw_root=tmp_path)
    info = DatasetInfo.load(folder / "dataset.json")
    assert info.channel_names == {"0": "fluorescence"}
    image, geometry = read_array(folder / "imagesTr" / "synth_000_0000.nii.gz")
    label, _ = read_array(folder / "labelsTr" / "synth_000.nii.gz")
    assert image.shape == label.shape == (16, 32, 32)
    np.testing.assert_allclose(geometry.spacing, (0.002, 0.001, 0.001))
    assert 0.01 < label.mean() < 0.3
    assert not any((folder / "trees").glob("*.json"))  # a capillary bed has no tree file
    assert json.loads((folder / "dataset.json").read_text())["generator"]["modality"] == "microscopy"


def test_plans_transfer_refuses_other_label_counts(tmp_path):
    from vessel_seg.planners.fingerprint import DatasetFingerprint
    from vessel_seg.planners.plans import Plans
    from vessel_seg.planners.plans_transfer import transferred_plans

    source = Plans("Dataset990_VesselPretrain", "pretrain", "cpu", 8.0, [1.0] * 3, [32] * 3,
                   {"background": 0, "vessel": 1}, {"0": "any"}, ".nii.gz", {})
    info = DatasetInfo({"0": "CT"}, {"background": 0, "artery": 1, "vein": 2}, 2, ".nii.gz")
    with pytest.raises(PlansError, match="different count"):
        transferred_plans(source, DatasetFingerprint.__new__(DatasetFingerprint), info, "Dataset001_X", "vs_builtin")


def test_randomized_cases_are_the_same_whatever_the_number_of_writers(tmp_path):
    one = generate_randomized_dataset(990, 3, seed=4, raw_root=tmp_path / "a", ranges=SMALL)
    two = generate_randomized_dataset(990, 3, seed=4, raw_root=tmp_path / "b", ranges=SMALL, num_workers=2)
    for k in range(3):
        a, _ = read_array(one / "labelsTr" / f"rand_{k:04d}.nii.gz")
        b, _ = read_array(two / "labelsTr" / f"rand_{k:04d}.nii.gz")
        assert np.array_equal(a, b)
