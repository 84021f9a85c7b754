"""benchmarks/postprocessing_default.py on a tiny folder: the table's rows move the way the rule says."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark_script

from vessel_seg.imageio import ImageGeometry, write_image


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark_script("postprocessing_default")


def test_debris_rows_drop_far_specks_and_keep_recall(bench, tmp_path):
    geometry = ImageGeometry((24, 24, 24), (1.0, 1.0, 1.0))
    label = np.zeros(geometry.shape, np.uint8)
    label[12, 12, 2:22] = 1
    label[11:14, 11:14, 2:22] = 1  # a 3-voxel-thick vessel
    pred = label.copy()
    pred[2, 2, 2] = pred[20, 3, 20] = 1  # two specks far from it
    for folder, array in (("labels", label), ("pred", pred)):
        (tmp_path / folder).mkdir()
        write_image(array, geometry, tmp_path / folder / "c.nii.gz")
    rows = {r["rule"]: r for r in bench.evaluate(tmp_path / "labels", tmp_path / "pred", [(0.02, 3.0)])}
    before, after = rows["as predicted"], rows["share 0.02, distance 3 mm"]
    assert (before["components"], after["components"]) == (3.0, 1.0)
    assert after["recall"] == before["recall"] == 1.0 and after["dice"] > before["dice"]
