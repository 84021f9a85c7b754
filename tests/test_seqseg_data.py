"""SeqSeg's training layout written from a raw dataset: files, centreline VTP, resume, errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from training_helpers import read_vtp

from vessel_seg.dataset import DatasetInfo
from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.errors import DatasetError
from vessel_seg.evaluation.seqseg_data import write_seqseg_training_data
from vessel_seg.imageio import read_label
from vessel_seg.inference.tracking import physical_to_index


def test_seqseg_layout_with_centrelines_inside_the_vessels(tmp_path):
    raw = generate_dataset(6, 2, num_test_cases=0, size=32, seed=2, raw_root=tmp_path)
    out = tmp_path / "seqseg"
    assert write_seqseg_training_data(raw, out) == ["synth_000", "synth_001"]
    for case in ("synth_000", "synth_001"):
        assert (out / "images" / f"{case}.nii.gz").read_bytes() == (raw / "imagesTr" / f"{case}_0000.nii.gz").read_bytes()
        assert (out / "truths" / f"{case}.nii.gz").read_bytes() == (raw / "labelsTr" / f"{case}.nii.gz").read_bytes()
    piece = ET.parse(out / "centerlines" / "synth_000.vtp").getroot().find("PolyData/Piece")
    assert int(piece.get("NumberOfLines")) >= 1
    arrays = read_vtp(out / "centerlines" / "synth_000.vtp")
    points, radius = arrays["Points"], arrays["radius"].ravel()
    assert len(points) == len(radius) > 0 and (radius > 0).all()
    label, geometry = read_label(raw / "labelsTr" / "synth_000.nii.gz")
    index = np.round([physical_to_index(geometry, p) for p in points.astype(float)]).astype(int)
    inside = label[tuple(np.clip(index, 0, np.array(label.shape) - 1).T)] > 0
    assert inside.mean() > 0.95  # centreline points in physical mm fall inside the vessel they describe
    # a rerun keeps complete cases
    marker = out / "centerlines" / "synth_001.vtp"
    marker.write_bytes(b"kept")
    write_seqseg_training_data(raw, out)
    assert marker.read_bytes() == b"kept"
    # a subset for a CPU budget: the first cases in name order only
    assert write_seqseg_training_data(raw, tmp_path / "one", max_cases=1) == ["synth_000"]
    assert [p.name for p in (tmp_path / "one" / "truths").iterdir()] == ["synth_000.nii.gz"]


def test_seqseg_layout_refuses_what_seqseg_cannot_take(tmp_path):
    raw = generate_dataset(6, 1, num_test_cases=0, size=32, seed=2, raw_root=tmp_path)
    with pytest.raises(DatasetError, match="no labelled cases"):
        write_seqseg_training_data(raw, tmp_path / "out", split="Ts")
    info = DatasetInfo.load(raw / "dataset.json")
    info.channel_names = {"0": "CT", "1": "CT"}
    info.save(raw / "dataset.json")
    with pytest.raises(DatasetError, match="one image channel"):
        write_seqseg_training_data(raw, tmp_path / "out")
