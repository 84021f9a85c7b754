"""vs_plan_and_preprocess end to end through its CLI, on good and broken datasets."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from vessel_seg.cli.plan_and_preprocess import main
from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.imageio import ImageGeometry, read_dicom_series


def test_plan_and_preprocess_writes_fingerprint_plans_and_cases(data_roots, capsys):
    generate_dataset(12, 3, num_test_cases=0, size=32, seed=1)
    assert main(["-d", "12", "--verify", "-pl", "cpu", "-np", "1"]) == 0
    out = data_roots["preprocessed"] / "Dataset012_Synthetic"
    plans = json.loads((out / "cpu.json").read_text())
    assert {"2d", "3d_fullres"} <= set(plans["configurations"])
    assert (out / "fingerprint.json").is_file() and (out / "dataset.json").is_file()
    for config in plans["configurations"].values():
        assert len(list((out / config["data_identifier"]).glob("synth_*.npy"))) >= 3
    assert "Dataset012_Synthetic: plans" in capsys.readouterr().out


def test_verify_reports_each_problem_and_exits_nonzero(data_roots, capsys):
    raw = generate_dataset(13, 3, num_test_cases=0, size=24, seed=2)
    label = raw / "labelsTr" / "synth_001.nii.gz"
    image = sitk.ReadImage(str(label))
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(label))
    (raw / "labelsTr" / "synth_002.nii.gz").write_bytes(b"not an image")
    assert main(["-d", "Dataset013_Synthetic", "--verify", "-np", "1"]) == 2
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith("problem:")]
    assert len(problems) == 2
    assert any("synth_001.nii.gz" in p and "spacing" in p for p in problems)
    assert any("synth_002.nii.gz" in p for p in problems)
    assert "Traceback" not in err
    assert not (data_roots["preprocessed"] / "Dataset013_Synthetic").exists()


def test_unknown_dataset_is_one_line(data_roots, capsys):
    assert main(["-d", "999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no dataset with id 999")


def test_dicom_series_is_read_with_its_geometry(tmp_path):
    data = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 3) - 100
    spacing_xyz, origin = (0.7, 0.8, 2.5), (10.0, -20.0, 30.0)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(data.shape[0]):
        slice_image = sitk.GetImageFromArray(data[z])
        slice_image.SetSpacing(spacing_xyz[:2])
        position = (origin[0], origin[1], origin[2] + z * spacing_xyz[2])
        for tag, value in {
            "0008|0060": "CT", "0020|000d": "1.2.3", "0020|000e": "1.2.3.4", "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position), "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing_xyz[1]}\\{spacing_xyz[0]}", "0018|0050": str(spacing_xyz[2]),
        }.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice_{z:03d}.dcm"))
        writer.Execute(slice_image)
    array, geometry = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(array, data)
    expected = ImageGeometry(shape=(4, 5, 6), spacing=(2.5, 0.8, 0.7), origin=origin)
    assert geometry.mismatch(expected) is None
