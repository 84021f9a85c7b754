"""vs_benchmark end to end, the paired statistics and the external-method runners (with stand-in tools)."""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from vessel_seg.cli.benchmark import main
from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.benchmark import benchmark_methods, wilcoxon_p
from vessel_seg.evaluation.runners import (
    match_outputs,
    nnunet_predict_command,
    run_nnunet,
    run_vesselfm,
    vesselfm_command,
)
from vessel_seg.evaluation.seqseg_runner import SeqSegSettings, run_seqseg, seqseg_command, seqseg_config_name
from vessel_seg.evaluation.seqseg_seeds import seed_from_label
from vessel_seg.imageio import ImageGeometry, read_label, write_image

GEOMETRY = ImageGeometry(shape=(20, 16, 16), spacing=(1.0, 0.5, 0.5), origin=(10.0, 20.0, 30.0))
CASES = ("c1", "c2", "c3")


def reference(case_index: int) -> np.ndarray:
    """A tube along z, thick near z=0 (the root) and thin further on; position varies by case."""
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    x0 = 4 + 2 * case_index
    labels[0:8, 5:10, x0 : x0 + 5] = 1
    labels[8:18, 6:9, x0 + 1 : x0 + 4] = 1
    return labels


@pytest.fixture
def sample_set(tmp_path):
    """References, test images (nnU-Net layout) and two methods' predictions."""
    root = tmp_path / "data"
    dirs = {name: root / name for name in ("ref", "images", "ours", "other")}
    for path in dirs.values():
        path.mkdir(parents=True)
    for i, case in enumerate(CASES):
        ref = reference(i)
        write_image(ref, GEOMETRY, dirs["ref"] / f"{case}.nii.gz")
        write_image(ref.astype(np.float32) * 100, GEOMETRY, dirs["images"] / f"{case}_0000.nii.gz")
        write_image(ref, GEOMETRY, dirs["ours"] / f"{case}.nii.gz")
        worse = ref.copy()
        worse[10 + i : 12 + i] = 0  # a gap that differs per case
        write_image(worse, GEOMETRY, dirs["other"] / f"{case}.nii.gz")
    return dirs


def test_wilcoxon_edge_cases():
    assert math.isnan(wilcoxon_p([]))
    assert math.isnan(wilcoxon_p([0.3]))
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    d = [0.1, -0.2, 0.3, 0.4, 0.5, -0.05]
    assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue)


def test_benchmark_tables_plots_and_paired_values(sample_set, tmp_path):
    out = tmp_path / "bench"
    methods = {"ours": sample_set["ours"], "other": sample_set["other"]}
    result = benchmark_methods(sample_set["ref"], methods, out, runtimes={"ours": 30.0})
    for name in ("per_case.csv", "summary.csv", "paired.csv", "benchmark.md", "benchmark.json", "boxplots_label1.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "boxplots_label1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_case = pd.read_csv(out / "per_case.csv")
    assert len(per_case) == 6 and set(per_case["method"]) == {"ours", "other"}
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["ours", "dice"] == 1.0 and summary.loc["ours", "runtime_s"] == 30.0
    assert summary.loc["ours", "runtime_per_case_s"] == pytest.approx(10.0)
    assert math.isnan(summary.loc["other", "runtime_s"])
    other = per_case[per_case["method"] == "other"].sort_values("case")
    assert summary.loc["other", "dice"] == pytest.approx(other["dice"].mean())
    paired = result.paired.set_index("metric")
    diff = other["dice"].to_numpy() - 1.0
    assert paired.loc["dice", "reference"] == "ours" and paired.loc["dice", "n"] == 3
    assert paired.loc["dice", "mean_diff"] == pytest.approx(diff.mean())
    assert paired.loc["dice", "worse"] == 3 and paired.loc["dice", "better"] == 0
    assert paired.loc["dice", "p_value"] == pytest.approx(wilcoxon(diff).pvalue)
    assert paired.loc["betti0_error", "worse"] == 3  # lower is better: a gap adds a component
    markdown = (out / "benchmark.md").read_text()
    assert "| ours (ref) |" in markdown and "Wilcoxon p" in markdown and "boxplots_label1.png" in markdown
    payload = json.loads((out / "benchmark.json").read_text())
    assert payload["reference_method"] == "ours" and payload["labels"] == [1]


def test_single_case_and_identical_methods_are_handled(sample_set, tmp_path):
    for case in CASES[1:]:
        for name in ("ref", "ours"):
            (sample_set[name] / f"{case}.nii.gz").unlink()
    result = benchmark_methods(sample_set["ref"], {"a": sample_set["ours"], "b": sample_set["ours"]}, tmp_path / "b")
    dice = result.paired.set_index("metric").loc["dice"]
    assert dice["n"] == 1 and dice["mean_diff"] == 0.0 and math.isnan(dice["p_value"])
    assert "n/a" in (tmp_path / "b" / "benchmark.md").read_text()


def test_cli_realigns_metadata_only_differences_and_rejects_shapes(sample_set, tmp_path, capsys, caplog):
    headerless = tmp_path / "headerless"
    headerless.mkdir()
    for i, case in enumerate(CASES):  # like vesselFM: right voxels, default spacing/origin
        write_image(
            reference(i), ImageGeometry(shape=GEOMETRY.shape, spacing=(1.0, 1.0, 1.0)), headerless / f"{case}.nii.gz"
        )
    out = tmp_path / "cli"
    argv = ["-ref", str(sample_set["ref"]), f"ours={sample_set['ours']}", f"vfm={headerless}", "-o", str(out)]
    assert main([*argv, "--runtime", "ours=12.5"]) == 0
    assert "realigned" in caplog.text
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["vfm", "dice"] == 1.0 and summary.loc["ours", "runtime_s"] == 12.5
    assert "| ours (ref) |" in capsys.readouterr().out

    write_image(
        np.zeros((20, 16, 15), np.uint8), ImageGeometry((20, 16, 15), (1.0, 1.0, 1.0)), headerless / "c2.nii.gz"
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "c2.nii.gz" in err and "shape" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse: not NAME=DIR
        main(["-ref", str(sample_set["ref"]), "bad", "-o", str(out)])
    assert exit_info.value.code == 2


def test_command_lines_match_the_tools_interfaces(tmp_path):
    assert nnunet_predict_command(tmp_path / "i", tmp_path / "o", "12", "3d_fullres", ["0", "1"], device="cpu") == [
        "nnUNetv2_predict", "-i", str(tmp_path / "i"), "-o", str(tmp_path / "o"), "-d", "12", "-c", "3d_fullres",
        "-f", "0", "1", "-device", "cpu",
    ]  # fmt: skip
    full = nnunet_predict_command(
        tmp_path, tmp_path, "12", folds=["all"], trainer="T", plans="P", checkpoint="c.pth", disable_tta=True
    )
    assert full[-9:] == ["-f", "all", "-tr", "T", "-p", "P", "-chk", "c.pth", "--disable_tta"]
    seq = seqseg_command(tmp_path / "d", tmp_path / "o", tmp_path / "w", "Dataset005_X", ".nii.gz", SeqSegSettings(scale=0.1))
    assert seq[:3] == ["seqseg", "-data_dir", str(tmp_path / "d")]
    assert "-resample_spacing" not in seq
    assert seqseg_config_name("global") == "global"
    (tmp_path / "mine.yaml").write_text("VOLUME_SIZE_RATIO: 5\n")
    assert seqseg_config_name(str(tmp_path / "mine.yaml")) == seqseg_config_name(str(tmp_path / "mine")) == str(tmp_path / "mine")
    with pytest.raises(VesselSegError, match="SeqSeg config not found"):
        seqseg_config_name(str(tmp_path / "other"))
    finer = seqseg_command(tmp_path / "d", tmp_path / "o", tmp_path / "w", "D", ".nii.gz", SeqSegSettings(resample_spacing=(0.25,)))
    assert finer[-2:] == ["-resample_spacing", "0.25"]
    assert SeqSegSettings(resample_spacing=[0.5, 0.5, 0.8]).resample_spacing == (0.5, 0.5, 0.8)  # argparse's list
    assert SeqSegSettings(resample_spacing=[]).resample_spacing is None
    for bad in ({"resample_spacing": (0.5, 0.5)}, {"resample_spacing": (0.0,)}, {"seed_inset_radii": -1.0}, {"scale": 0.0}):
        with pytest.raises(VesselSegError, match="SeqSeg"):
            SeqSegSettings(**bad)
    assert seq[seq.index("-outdir") + 1] == str(tmp_path / "o") + os.sep
    assert seq[seq.index("-unit") + 1] == "mm" and seq[seq.index("-scale") + 1] == "0.1"
    assert seq[seq.index("-train_dataset") + 1] == "Dataset005_X" and seq[seq.index("-fold") + 1] == "all"
    vfm = vesselfm_command(
        tmp_path / "in", tmp_path / "out dir", tmp_path / "w.pt", ".nii.gz", device="cpu", python="py"
    )
    assert vfm[:3] == ["py", "-m", "vesselfm.seg.inference"]
    assert f"image_path={tmp_path / 'in'}" in vfm and "image_file_ending=nii.gz" in vfm and "device=cpu" in vfm
    assert f"output_folder='{tmp_path / 'out dir'}'" in vfm  # Hydra needs quotes around spaces
    cfg = vesselfm_command(tmp_path, tmp_path, tmp_path / "w.pt", ".nii.gz", config=tmp_path / "my.yaml", python="py")
    assert cfg[3:7] == ["--config-path", str(tmp_path.resolve()), "--config-name", "my"]


def test_match_outputs_prefers_the_longest_case_id():
    names = ["a_pred.nii.gz", "a_b_pred.nii.gz", "notes.txt", "a_b.nii.gz"]
    assert match_outputs(names, ["a", "a_b"], "{case}_.*pred") == {"a": "a_pred.nii.gz", "a_b": "a_b_pred.nii.gz"}
    assert match_outputs(names, ["a", "a_b"], "{case}") == {"a_b": "a_b.nii.gz"}


def test_seqseg_seed_is_the_thick_root_pointing_into_the_tree():
    label = reference(0)
    seed = seed_from_label(label, GEOMETRY)
    physical = lambda zyx: GEOMETRY.index_to_physical(np.array([zyx]))[0]  # noqa: E731
    start, direction = np.array(seed.start), np.array(seed.direction)
    assert start[2] - GEOMETRY.origin[2] <= 3.0  # near z=0, the thick end (z is ITK's third axis)
    assert direction[2] > start[2]  # walking up the tube
    assert 1.0 <= seed.radius <= 2.5  # the 5x5 section at 0.5 mm has a radius of ~1.25 mm
    assert np.linalg.norm(start[:2] - physical((0, 7, 6))[:2]) < 1.0  # on the trunk's axis
    inset = seed_from_label(label, GEOMETRY, inset_radii=3.0)  # moved into the tree along the trunk
    moved = inset.start[2] - seed.start[2]
    assert 2.0 * seed.radius <= moved <= 3.0 * seed.radius + 1.0 and inset.direction[2] > inset.start[2]
    assert np.linalg.norm(np.array(inset.start[:2]) - start[:2]) < 1.0
    with pytest.raises(VesselSegError, match="empty"):
        seed_from_label(np.zeros(GEOMETRY.shape, np.uint8), GEOMETRY, "x.nii.gz")


def write_tool(bin_dir, name: str, body: str) -> None:
    """A stand-in executable: a Python script run by this interpreter."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)


STANDIN_IO = """
    import sys, json, re
    from pathlib import Path
    import numpy as np
    from vessel_seg.imageio import read_array, write_image, ImageGeometry
    def arg(flag):
        return sys.argv[sys.argv.index(flag) + 1]
    def segment(path):
        data, geometry = read_array(path)
        return (data > 50).astype(np.uint8), geometry
"""


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", f"{path}{os.pathsep}{os.environ['PATH']}")
    return path


def test_nnunet_runner_and_cli(sample_set, tmp_path, bin_dir, monkeypatch):
    write_tool(bin_dir, "nnUNetv2_predict", STANDIN_IO + """
    assert arg("-d") == "7" and arg("-c") == "3d_fullres" and arg("-device") == "cpu"
    out = Path(arg("-o"))
    for image in Path(arg("-i")).glob("*_0000.nii.gz"):
        mask, geometry = segment(image)
        write_image(mask, geometry, out / image.name.replace("_0000", ""))
    (out / "plans.json").write_text("{}")
    """)  # fmt: skip
    results = tmp_path / "nnUNet_results"
    monkeypatch.delenv("nnUNet_results", raising=False)
    with pytest.raises(VesselSegError, match="nnUNet_results is not set"):
        run_nnunet(sample_set["images"], tmp_path / "o", "7", device="cpu")
    with pytest.raises(VesselSegError, match="Dataset007_"):
        run_nnunet(sample_set["images"], tmp_path / "o", "7", device="cpu", results_dir=results)
    (results / "Dataset007_Vessels").mkdir(parents=True)
    run = run_nnunet(sample_set["images"], tmp_path / "o", "7", device="cpu", results_dir=results)
    assert sorted(p.name for p in run.pred_dir.iterdir()) == [f"{c}.nii.gz" for c in CASES]
    assert run.runtime_s > 0 and run.log_path.read_text().startswith("$ ")
    np.testing.assert_array_equal(read_label(run.pred_dir / "c2.nii.gz")[0], reference(1))

    out = tmp_path / "bench"
    argv = [
        "-ref",
        str(sample_set["ref"]),
        f"ours={sample_set['ours']}",
        "-o",
        str(out),
        "--images",
        str(sample_set["images"]),
    ]
    argv += ["--run-nnunet", "7", "--nnunet-device", "cpu", "--nnunet-results", str(results)]
    assert main(argv) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["nnunet", "dice"] == 1.0 and summary.loc["nnunet", "runtime_s"] > 0


def test_missing_tools_and_weights_say_what_to_do(sample_set, tmp_path, monkeypatch):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(VesselSegError, match=r"nnUNetv2_predict not found on PATH; install nnU-Net v2"):
        run_nnunet(sample_set["images"], tmp_path / "o", "7")
    with pytest.raises(VesselSegError, match=r"seqseg not found on PATH; install SeqSeg"):
        run_seqseg(sample_set["images"], sample_set["ref"], tmp_path / "o", None, "Dataset005_X")
    monkeypatch.setenv("PYTHONPATH", str(empty))
    with pytest.raises(
        VesselSegError, match=r"vesselFM is not importable .*git clone https://github.com/bwittmann/vesselFM"
    ):
        run_vesselfm(sample_set["images"], tmp_path / "o", tmp_path / "w.pt")
    assert main(["-ref", str(sample_set["ref"]), "-o", str(tmp_path / "b"), "--run-vesselfm"]) == 2  # needs --images


def test_seqseg_runner_stages_seeds_and_collects(sample_set, tmp_path, bin_dir):
    write_tool(bin_dir, "seqseg", STANDIN_IO + """
    data, out = Path(arg("-data_dir")), arg("-outdir")
    (data / "argv.json").write_text(json.dumps(sys.argv[1:]))
    assert out.endswith("/") and arg("-unit") == "mm" and arg("-img_ext") == ".nii.gz"
    weights = Path(arg("-nnunet_results_path")) / arg("-train_dataset") / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert weights.is_dir()
    for entry in json.loads((data / "seeds.json").read_text()):
        (start, direction, radius), = entry["seeds"]
        assert len(start) == 3 and len(direction) == 3 and radius > 0
        mask, geometry = segment(data / "images" / (entry["name"] + ".nii.gz"))
        # like SeqSeg: the final mask on a grid twice as fine (voxel centres shifted by a quarter voxel)
        fine = mask.repeat(2, 0).repeat(2, 1).repeat(2, 2)
        origin = tuple(o - s / 4 for o, s in zip(geometry.origin, geometry.spacing[::-1]))
        fine_geometry = ImageGeometry(fine.shape, tuple(s / 2 for s in geometry.spacing), origin)
        write_image(fine, fine_geometry, Path(out) / (entry["name"] + "_segmentation_3d_fullres_42_steps.mha"))
        write_image(mask, geometry, Path(out) / (entry["name"] + "_binary_seg_3d_fullres_0.mha"))
    """)  # fmt: skip
    weights = tmp_path / "seqseg_weights"
    with pytest.raises(VesselSegError, match="SeqSeg weights not found"):
        run_seqseg(sample_set["images"], sample_set["ref"], tmp_path / "o", weights, "Dataset005_X")
    (weights / "Dataset005_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres").mkdir(parents=True)
    run = run_seqseg(sample_set["images"], sample_set["ref"], tmp_path / "o", weights, "Dataset005_X")
    assert sorted(p.name for p in run.pred_dir.iterdir()) == [f"{c}.nii.gz" for c in CASES]
    assert [s["name"] for s in run.extra["seeds"]] == list(CASES)
    mask, geometry = read_label(run.pred_dir / "c3.nii.gz")  # back on the input grid
    np.testing.assert_array_equal(mask, reference(2))
    assert geometry.spacing == GEOMETRY.spacing and geometry.origin == GEOMETRY.origin
    # through vs_benchmark: the tracing options reach SeqSeg and its masks are scored beside ours
    config = tmp_path / "tracing.yaml"
    config.write_text("VOLUME_SIZE_RATIO: 12\n")
    argv = ["-ref", str(sample_set["ref"]), f"ours={sample_set['ours']}", "-o", str(tmp_path / "bench"), "--images",
            str(sample_set["images"]), "--run-seqseg", "--seqseg-weights", str(weights), "--seqseg-dataset", "Dataset005_X",
            "--seqseg-config", str(config), "--seqseg-seed-inset", "1", "--seqseg-resample-spacing", "0.25"]
    assert main(argv) == 0
    passed = json.loads((tmp_path / "bench" / "runs" / "seqseg" / "data" / "argv.json").read_text())
    assert passed[passed.index("-config_name") + 1] == str(tmp_path / "tracing")
    assert passed[passed.index("-resample_spacing") + 1] == "0.25"
    summary = pd.read_csv(tmp_path / "bench" / "summary.csv").set_index("method")
    assert summary.loc["seqseg", "dice"] == 1.0


def test_vesselfm_runner_with_a_stand_in_package(sample_set, tmp_path, monkeypatch):
    package = tmp_path / "site" / "vesselfm" / "seg"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "inference.py").write_text(textwrap.dedent(STANDIN_IO + """
    cfg = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    assert Path(cfg["ckpt_path"]).is_file() and cfg["image_file_ending"] == "nii.gz"
    for image in Path(cfg["image_path"]).iterdir():
        mask, _ = segment(image)  # like vesselFM: written without spacing or origin
        name = image.name.split(".")[0]
        write_image(mask, ImageGeometry(shape=mask.shape, spacing=(1.0, 1.0, 1.0)), Path(cfg["output_folder"]) / f"{name}_pred.nii.gz")
    """))  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), *sys.path]))
    with pytest.raises(VesselSegError, match="huggingface.co/bwittmann/vesselFM"):
        run_vesselfm(sample_set["images"], tmp_path / "o", tmp_path / "missing.pt")
    weights = tmp_path / "vesselFM_base.pt"
    weights.write_bytes(b"weights")
    out = tmp_path / "bench"
    argv = [
        "-ref",
        str(sample_set["ref"]),
        f"ours={sample_set['ours']}",
        "-o",
        str(out),
        "--images",
        str(sample_set["images"]),
    ]
    assert main([*argv, "--run-vesselfm", "--vesselfm-weights", str(weights)]) == 0
    assert sorted(p.name for p in (out / "predictions" / "vesselfm").iterdir()) == [f"{c}.nii.gz" for c in CASES]
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["vesselfm", "dice"] == 1.0  # realigned onto the reference grid
