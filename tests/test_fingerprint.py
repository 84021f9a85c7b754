"""Dataset fingerprint: extraction from a tiny on-the-fly dataset, vessel geometry, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import DatasetError, PlansError
from vessel_seg.imageio import ImageGeometry, write_image
from vessel_seg.planners.fingerprint import DatasetFingerprint, RadiusStats, extract_fingerprint, vessel_radii

SPACING = (1.0, 0.5, 0.5)  # (z, y, x) mm
RADIUS_MM = 2.0


def tube(shape=(24, 24, 24), centre=(12, 12), radius_mm=RADIUS_MM) -> np.ndarray:
    """A straight tube along x: voxels whose centre lies within ``radius_mm`` of the axis."""
    z, y = np.mgrid[: shape[0], : shape[1]]
    disc = np.hypot((z - centre[0]) * SPACING[0], (y - centre[1]) * SPACING[1]) <= radius_mm
    return np.repeat(disc[:, :, None], shape[2], axis=2).astype(np.uint8)


def write_dataset(root, cases: dict[str, tuple[np.ndarray, np.ndarray]]):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    DatasetInfo({"0": "CT"}, {"background": 0, "vessel": 1}, len(cases), ".nii.gz").save(root / "dataset.json")
    for case_id, (image, label) in cases.items():
        for array, path in ((image, root / "imagesTr" / f"{case_id}_0000.nii.gz"), (label, root / "labelsTr" / f"{case_id}.nii.gz")):
            write_image(array, ImageGeometry(shape=array.shape, spacing=SPACING), path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw") / "Dataset900_Tubes"
    one = tube()
    image_one = np.where(one > 0, 300.0, 50.0).astype(np.float32)
    image_one[:2] = 0  # an empty border, cropped away
    two = tube(centre=(6, 6)) | tube(centre=(17, 17))  # two separate tubes
    image_two = np.where(two > 0, 400.0, 60.0).astype(np.float32)
    write_dataset(root, {"a": (image_one, one), "b": (image_two, two)})
    return root, one, two


def test_extract_fingerprint_on_tubes_of_known_radius(dataset):
    root, one, two = dataset
    fp = extract_fingerprint(root)
    assert fp.dataset_name == "Dataset900_Tubes" and [c.case_id for c in fp.cases] == ["a", "b"]
    a, b = fp.cases
    assert a.spacing == list(SPACING) and a.shape == [24, 24, 24] and a.shape_after_crop == [22, 24, 24]
    assert b.shape_after_crop == [24, 24, 24]
    # radius: within about a quarter of the coarsest voxel on a digitised tube
    assert a.radius.p50 == pytest.approx(RADIUS_MM, abs=0.3)
    assert fp.vessel_radius_mm.p50 == pytest.approx(RADIUS_MM, abs=0.3)
    assert a.radius.p05 <= a.radius.p50 <= a.radius.p95 <= a.radius.max
    assert a.vessel_fraction == pytest.approx(one.sum() / (22 * 24 * 24))
    assert b.vessel_fraction == pytest.approx(two.sum() / 24**3)
    assert (a.num_components, b.num_components) == (1, 2)
    assert fp.num_components.mean == pytest.approx(1.5) and fp.num_components.max == 2
    assert a.num_vessel_voxels == int(one.sum())
    assert a.intensity[0].mean == pytest.approx(300.0) and a.intensity[0].std == pytest.approx(0.0, abs=1e-4)
    pooled = fp.intensity["0"]  # equal sample counts per case would give 350; case b holds more vessel
    assert pooled.min == pytest.approx(300.0) and pooled.max == pytest.approx(400.0)
    expected_mean = (300.0 * one.sum() + 400.0 * two.sum()) / (one.sum() + two.sum())
    assert pooled.mean == pytest.approx(expected_mean, rel=1e-5)
    assert pooled.percentile_00_5 == pytest.approx(300.0) and pooled.percentile_99_5 == pytest.approx(400.0)


def test_fingerprint_round_trip_and_parallel_extraction(dataset, tmp_path):
    root, _, _ = dataset
    fp = extract_fingerprint(root)
    loaded = DatasetFingerprint.load(fp.save(tmp_path / "fingerprint.json"))
    assert loaded == fp
    assert loaded.median_spacing == list(SPACING) and loaded.median_shape_after_crop == [23, 24, 24]
    assert extract_fingerprint(root, num_workers=2) == fp


def test_fingerprint_load_errors(tmp_path):
    with pytest.raises(PlansError, match="not found"):
        DatasetFingerprint.load(tmp_path / "missing.json")
    bad = tmp_path / "fingerprint.json"
    bad.write_text('{"dataset_name": "x", "cases": "oops", "intensity": {}}')
    with pytest.raises(PlansError, match="invalid fingerprint"):
        DatasetFingerprint.load(bad)


def test_label_shape_mismatch_and_empty_labels_are_reported(tmp_path):
    image = np.ones((8, 8, 8), np.float32)
    write_dataset(tmp_path / "mismatch", {"a": (image, np.zeros((8, 8, 6), np.uint8))})
    with pytest.raises(DatasetError, match="label shape"):
        extract_fingerprint(tmp_path / "mismatch")
    write_dataset(tmp_path / "empty", {"a": (image, np.zeros((8, 8, 8), np.uint8))})
    with pytest.raises(DatasetError, match="no label holds any vessel"):
        extract_fingerprint(tmp_path / "empty")


def test_vessel_radii_in_2d_and_for_one_voxel_lines():
    mask = np.zeros((1, 20, 30), bool)
    mask[0, 8:13, 3:27] = True  # 5 pixels wide at 0.1 mm: centre to first background pixel 0.3 mm
    radii = vessel_radii(mask, [999.0, 0.1, 0.1])
    assert np.median(radii) == pytest.approx(0.3, abs=1e-6)
    line = np.zeros((9, 9, 9), bool)
    line[4, 4, :] = True  # one voxel wide along x: nearest background is the y neighbour (1 mm, z is 2 mm)
    assert np.allclose(vessel_radii(line, [2.0, 1.0, 0.5]), 1.0)
    assert vessel_radii(np.zeros((4, 4, 4), bool), [1.0] * 3).size == 0


def test_radius_stats_fraction_below():
    stats = RadiusStats.from_samples(np.linspace(1.0, 3.0, 1001))
    assert stats.p50 == pytest.approx(2.0) and stats.max == pytest.approx(3.0) and stats.num_samples == 1001
    assert stats.fraction_below(2.0) == pytest.approx(0.5)
    assert stats.fraction_below(10.0) == 1.0 and stats.fraction_below(0.0) == 0.0
    assert RadiusStats().fraction_below(1.0) == 0.0
