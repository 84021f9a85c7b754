"""vs_evaluate and evaluate_folders end to end on tiny synthetic label maps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from vessel_seg.cli.evaluate import main
from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.evaluate import evaluate_folders
from vessel_seg.evaluation.metrics import METRIC_NAMES, compute_metrics
from vessel_seg.imageio import ImageGeometry, write_image

GEOMETRY = ImageGeometry(shape=(12, 16, 16), spacing=(1.5, 0.8, 0.8), origin=(3.0, -2.0, 7.5))


def label_map(gap: int = 0, with_label_2: bool = True) -> np.ndarray:
    """Label 1: a 3x3 tube along z (broken by ``gap`` slices); label 2: a small block."""
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[1:11, 6:9, 6:9] = 1
    if gap:
        labels[5 : 5 + gap, 6:9, 6:9] = 0
    if with_label_2:
        labels[2:5, 1:4, 11:14] = 2
    return labels


@pytest.fixture
def folders(tmp_path):
    """Three cases: a perfect one, a broken tube (.mha prediction) and one without label 2 anywhere."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    cases = {
        "case_a": (label_map(), label_map(), ".nii.gz"),
        "case_b": (label_map(), label_map(gap=2, with_label_2=False), ".mha"),
        "case_c": (label_map(with_label_2=False), label_map(with_label_2=False), ".nrrd"),
    }
    for case, (ref, pred, ext) in cases.items():
        write_image(ref, GEOMETRY, ref_dir / f"{case}.nii.gz")
        write_image(pred, GEOMETRY, pred_dir / f"{case}{ext}")
    write_image(label_map(), GEOMETRY, pred_dir / "extra_case.nii.gz")  # no reference: ignored
    return ref_dir, pred_dir, cases


def test_evaluate_folders_values_csv_and_summary(folders, tmp_path):
    ref_dir, pred_dir, cases = folders
    out = tmp_path / "out"
    result = evaluate_folders(ref_dir, pred_dir, out)
    assert result.labels == [1, 2]
    assert list(result.per_case.columns) == ["case", "label", *METRIC_NAMES]
    assert len(result.per_case) == 6  # 3 cases x 2 labels
    for case, (ref, pred, _) in cases.items():
        expected = compute_metrics(pred, ref, GEOMETRY.spacing, labels=[1, 2])
        for label in (1, 2):
            row = result.per_case[(result.per_case["case"] == case) & (result.per_case["label"] == label)].iloc[0]
            for name in METRIC_NAMES:
                assert row[name] == pytest.approx(expected[label][name]), (case, label, name)
    b1 = result.per_case[(result.per_case["case"] == "case_b") & (result.per_case["label"] == 1)].iloc[0]
    assert b1["recall"] == pytest.approx(8 / 10) and b1["betti0_error"] == 1
    # Label 2 is absent from both masks of case_c: scored as perfect; missed in case_b: zero.
    c2 = result.per_case[(result.per_case["case"] == "case_c") & (result.per_case["label"] == 2)].iloc[0]
    assert c2["dice"] == 1.0 and c2["hd95_mm"] == 0.0

    csv = pd.read_csv(out / "metrics.csv")
    assert len(csv) == 6 and set(csv["case"]) == set(cases)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 3 and summary["labels"] == [1, 2]
    dice_1 = result.per_case[result.per_case["label"] == 1]["dice"].to_numpy()
    stats = summary["metrics"]["1"]["dice"]
    assert stats["mean"] == pytest.approx(dice_1.mean())
    assert stats["std"] == pytest.approx(dice_1.std())
    assert stats["median"] == pytest.approx(np.median(dice_1))
    assert summary["metrics"]["2"]["dice"]["mean"] == pytest.approx(2 / 3)
    assert result.mean("dice") == pytest.approx((dice_1.mean() + 2 / 3) / 2)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_labels_argument_and_parallel_workers(folders):
    ref_dir, pred_dir, _ = folders
    serial = evaluate_folders(ref_dir, pred_dir, labels=[1])
    parallel = evaluate_folders(ref_dir, pred_dir, labels=[1], num_workers=2)
    assert serial.labels == [1] and set(serial.per_case["label"]) == {1}
    pd.testing.assert_frame_equal(serial.per_case, parallel.per_case)
    assert serial.csv_path is None and serial.summary_path is None


def test_missing_predictions_are_listed(folders):
    ref_dir, pred_dir, _ = folders
    (pred_dir / "case_b.mha").unlink()
    (pred_dir / "case_c.nrrd").unlink()
    with pytest.raises(VesselSegError, match=r"missing predictions for 2 of 3 cases: case_b, case_c"):
        evaluate_folders(ref_dir, pred_dir)


def test_geometry_mismatch_is_an_error_unless_realigned(folders):
    ref_dir, pred_dir, _ = folders
    shifted = ImageGeometry(shape=GEOMETRY.shape, spacing=GEOMETRY.spacing, origin=(0.0, 0.0, 0.0))
    write_image(label_map(), shifted, pred_dir / "case_a.nii.gz")
    with pytest.raises(VesselSegError, match=r"case_a\.nii\.gz: geometry differs .*origin"):
        evaluate_folders(ref_dir, pred_dir)
    result = evaluate_folders(ref_dir, pred_dir, realign=True)
    assert len(result.warnings) == 1 and "realigned" in result.warnings[0]


def test_cli_writes_reports_and_prints_table(folders, tmp_path, capsys):
    ref_dir, pred_dir, _ = folders
    out = tmp_path / "cli_out"
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out), "--labels", "1"]) == 0
    printed = capsys.readouterr().out
    assert "dice" in printed and "cldice" in printed and "3 cases" in printed
    assert (out / "metrics.csv").is_file() and (out / "summary.json").is_file()
    markdown = (out / "summary.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    dice = summary["metrics"]["1"]["dice"]["mean"]
    assert "| dice | higher | " + f"{dice:.4f}" in markdown and "| hd95_mm | lower |" in markdown
    assert (out / "metrics_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Default output folder: the prediction folder.
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir)]) == 0
    assert (pred_dir / "summary.json").is_file()


def test_cli_geometry_mismatch_exits_2_with_one_line(folders, capsys):
    ref_dir, pred_dir, _ = folders
    write_image(
        np.zeros((12, 16, 15), np.uint8), GEOMETRY.__class__((12, 16, 15), GEOMETRY.spacing), pred_dir / "case_a.nii.gz"
    )
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("error: ") and "case_a.nii.gz" in err and "shape" in err
