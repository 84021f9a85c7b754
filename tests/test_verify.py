"""verify_dataset: every kind of breakage yields one line naming the bad file; a clean dataset none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vessel_seg.dataset import DatasetInfo
from vessel_seg.imageio import ImageGeometry, write_image
from vessel_seg.planners.verify import verify_dataset

GEOMETRY = ImageGeometry(shape=(8, 10, 12), spacing=(2.0, 0.5, 0.5), origin=(1.0, 2.0, 3.0))


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=GEOMETRY.shape).astype(np.float32)


def label() -> np.ndarray:
    seg = np.zeros(GEOMETRY.shape, np.uint8)
    seg[2:6, 3:7, 4:8] = 1
    return seg


@pytest.fixture
def dataset(tmp_path):
    """A clean two-channel dataset with cases a and b."""
    root = tmp_path / "Dataset002_Check"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, case in enumerate(("a", "b")):
        for channel in range(2):
            write_image(image(10 * i + channel), GEOMETRY, root / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        write_image(label(), GEOMETRY, root / "labelsTr" / f"{case}.nii.gz")
    DatasetInfo({"0": "CT", "1": "MR"}, {"background": 0, "vessel": 1}, 2, ".nii.gz").save(root / "dataset.json")
    return root


def test_clean_dataset_has_no_problems(dataset):
    assert verify_dataset(dataset) == []


def _truncate(path):
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])


def _nan(path):
    data = image(99)
    data[3, 4, 5] = np.nan
    write_image(data, GEOMETRY, path)


def _other_spacing(path, data):
    write_image(data, ImageGeometry(GEOMETRY.shape, (2.0, 0.5, 0.6), GEOMETRY.origin), path)


def _other_origin(path, data):
    write_image(data, ImageGeometry(GEOMETRY.shape, GEOMETRY.spacing, (5.0, 2.0, 3.0)), path)


BREAKAGES = {
    "missing channel": ("imagesTr/b_0001.nii.gz", lambda p: p.unlink(), "channel 1 of case 'b' is missing"),
    "missing label": ("labelsTr/b.nii.gz", lambda p: p.unlink(), "label file of case 'b' is missing"),
    "truncated image": ("imagesTr/a_0000.nii.gz", _truncate, "cannot read image"),
    "empty label": ("labelsTr/a.nii.gz", lambda p: p.write_bytes(b""), "file is empty"),
    "nan voxels": ("imagesTr/b_0000.nii.gz", _nan, "NaN or Inf"),
    "channel geometry": ("imagesTr/a_0001.nii.gz", lambda p: _other_spacing(p, image(1)), "geometry differs"),
    "label geometry": ("labelsTr/b.nii.gz", lambda p: _other_origin(p, label()), "label geometry differs"),
    "label shape": (
        "labelsTr/a.nii.gz",
        lambda p: write_image(np.zeros((8, 10, 11), np.uint8), ImageGeometry((8, 10, 11), GEOMETRY.spacing), p),
        "shape (8, 10, 12) != (8, 10, 11)",
    ),
    "undeclared label": ("labelsTr/a.nii.gz", lambda p: write_image(label() * 3, GEOMETRY, p), r"label values [3]"),
    "undeclared channel": (
        "imagesTr/a_0002.nii.gz",
        lambda p: write_image(image(5), GEOMETRY, p),
        "channel 2 is not declared",
    ),
    "bad name": ("imagesTr/c.nii.gz", lambda p: write_image(image(5), GEOMETRY, p), "name must end in _NNNN"),
    "orphan label": ("labelsTr/c.nii.gz", lambda p: write_image(label(), GEOMETRY, p), "label has no image"),
    "numTraining": (
        "dataset.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "numTraining": 3})),
        "numTraining is 3 but imagesTr holds 2",
    ),
    "dataset.json missing": ("dataset.json", lambda p: p.unlink(), "dataset.json not found"),
    "dataset.json invalid": ("dataset.json", lambda p: p.write_text("{not json"), "not valid JSON"),
    "dataset.json no labels": (
        "dataset.json",
        lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "labels"})),
        "missing key 'labels'",
    ),
}


@pytest.mark.parametrize("kind", list(BREAKAGES))
def test_each_breakage_is_one_line_naming_the_file(dataset, kind):
    relative, break_it, message = BREAKAGES[kind]
    break_it(dataset / relative)
    problems = verify_dataset(dataset)
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(dataset / relative)), problems[0]
    assert message in problems[0]


def test_all_cases_are_checked(dataset):
    _truncate(dataset / "imagesTr" / "a_0000.nii.gz")
    write_image(label() * 2, GEOMETRY, dataset / "labelsTr" / "a.nii.gz")
    _nan(dataset / "imagesTr" / "b_0001.nii.gz")
    (dataset / "labelsTr" / "b.nii.gz").unlink()
    problems = verify_dataset(dataset)
    named = ["imagesTr/a_0000.nii.gz", "labelsTr/a.nii.gz", "labelsTr/b.nii.gz", "imagesTr/b_0001.nii.gz"]
    assert len(problems) == 4, problems
    for relative in named:
        assert any(line.startswith(str(dataset / relative)) for line in problems), relative


def test_missing_folders(tmp_path, dataset):
    assert verify_dataset(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: raw dataset folder not found"]
    for path in sorted((dataset / "labelsTr").iterdir()):
        path.unlink()
    (dataset / "labelsTr").rmdir()
    problems = verify_dataset(dataset)
    assert problems == [f"{dataset / 'labelsTr'}: training labels folder not found"]
