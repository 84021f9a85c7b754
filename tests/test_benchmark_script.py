"""Smoke tests of benchmarks/compare_nnunet.py and its modules: our side only, so they pass where nnunetv2 is absent."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """compare_nnunet loaded from its file; it puts benchmarks/ on sys.path for its sibling modules."""
    spec = importlib.util.spec_from_file_location("compare_nnunet", BENCHMARKS / "compare_nnunet.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_peak_memory_sums_the_whole_process_tree(tmp_path, bench):
    from bench_common import run_measured

    # the parent stays small; only its child holds ~120 MiB, which the tree sum must include
    child = "import time; b = b'x' * (120 * 2**20); time.sleep(0.8)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    stats = run_measured([sys.executable, "-c", parent], {}, tmp_path / "log.txt")
    assert stats["returncode"] == 0
    assert stats["max_processes"] >= 2
    assert stats["peak_rss_mb"] >= 120
    assert 0 < stats["peak_pss_mb"] <= stats["peak_rss_mb"]
    assert stats["wall_s"] >= 0.8


def _m(bench, name, repeat, wall, rss, rc=0, **metrics):
    return bench.Measurement(name=name, tool="t", section="s", repeat=repeat, command=[], returncode=rc, wall_s=wall,
                             cpu_s=2 * wall, peak_rss_mb=rss, peak_pss_mb=rss / 2, max_processes=1, metrics=metrics)


def test_summary_takes_medians_and_ratios_are_ours_over_nnunet(bench):
    runs = [_m(bench, "ours_cpu", 1, 2.0, 100), _m(bench, "ours_cpu", 2, 4.0, 300), _m(bench, "ours_cpu", 3, 3.0, 200),
            _m(bench, "nnunet", 1, 10.0, 1000), _m(bench, "nnunet", 2, 99.0, 5000, rc=1)]  # a failed run is left out
    summary = bench.summarise(runs)
    assert summary["ours_cpu"]["wall_s"] == 3.0 and summary["ours_cpu"]["peak_rss_mb"] == 300
    assert summary["nnunet"]["runs"] == 1
    ratios = bench.compute_ratios(summary)
    assert set(ratios) == {"ours_cpu/nnunet"}
    assert ratios["ours_cpu/nnunet"] == {"wall_s": 0.3, "cpu_s": 0.3, "peak_rss_mb": 0.3, "peak_pss_mb": 0.3}


def test_metric_ratios_and_targets_pass_or_miss(bench):
    from bench_report import check_targets

    runs = [_m(bench, "ours_train_same", 1, 5.0, 900, s_per_it=1.2, iterations_timed=9),
            _m(bench, "nnunet_train_same", 1, 5.0, 1000, s_per_it=1.0, iterations_timed=9),
            _m(bench, "ours_infer_tta", 1, 2.0, 400, s_per_case=1.0, dice=0.8),
            _m(bench, "nnunet_infer_tta", 1, 9.0, 2000, s_per_case=4.0, dice=0.8)]
    ratios = bench.compute_ratios(bench.summarise(runs))
    assert ratios["ours_train_same/nnunet_train_same"]["s_per_it"] == 1.2
    assert "iterations_timed" not in ratios["ours_train_same/nnunet_train_same"]  # a count, not a cost
    status = {t["target"]: t["status"] for t in check_targets(ratios)}
    assert status["training s/iteration, same patch/batch/width"] == "MISS"
    assert status["training peak RSS, same patch/batch/width"] == "PASS"
    assert status["inference s/case with TTA"] == "PASS" and status["Dice with TTA (equal or better)"] == "PASS"
    assert status["plan+preprocess wall time"] == "n/a"


def test_iteration_stats_drop_warmup_and_split_wait_from_step(bench):
    from bench_training import iteration_stats

    rows = [{"wait_s": 5.0, "step_s": 9.0}, {"wait_s": 0.1, "step_s": 1.0}, {"wait_s": 0.3, "step_s": 1.0},
            {"wait_s": 0.2, "step_s": 2.0}]
    stats = iteration_stats({"iterations": rows, "run_training_s": 20.0}, warmup=1)
    assert stats["iterations_timed"] == 3
    assert stats["s_per_it"] == pytest.approx(1.3) and stats["data_wait_s_per_it"] == pytest.approx(0.2)
    assert iteration_stats({"iterations": rows[:1]}, warmup=1) == {}


def test_timed_batches_record_wait_and_step_per_epoch(bench):
    from vs_driver import TimedBatches

    class Batches:
        def __init__(self):
            self.items = iter(range(10))

        def __next__(self):
            return next(self.items)

        def pop_mean_wait(self):
            return 0.5

    records: list[dict] = []
    timed = TimedBatches(Batches(), records)
    assert [next(timed), next(timed)] == [0, 1]
    assert timed.pop_mean_wait() == 0.5  # ends epoch 0 and closes its last step
    next(timed)
    assert [(r["epoch"], r["index"]) for r in records] == [(0, 0), (0, 1), (1, 0)]
    assert all(r["wait_s"] >= 0 and r["step_s"] >= 0 for r in records)


def test_driver_adds_our_sizes_as_a_new_nnunet_configuration(bench):
    from nnunet_driver import same_settings_configuration

    # it runs in nnU-Net's environment: no vessel_seg and no top-level nnunetv2 import
    source = (BENCHMARKS / "nnunet_driver.py").read_text()
    assert not re.search(r"^\s*(from|import) vessel_seg", source, re.M)
    assert not re.search(r"^(from|import) nnunetv2", source, re.M)
    arch = {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320], "kernel_sizes": [[3, 3, 3]] * 6,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5,
            "conv_bias": True}
    plans = {"plans_name": "nnUNetPlans", "configurations": {
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": [96, 96, 96],
                       "spacing": [0.8, 0.5, 0.5], "architecture": {"network_class_name": "PlainConvUNet",
                                                                     "arch_kwargs": arch}}}}
    ours = {"patch_size": [80, 48, 48], "batch_size": 3, "spacing": [0.667, 0.5, 0.5],
            "network": {"features_per_stage": [16, 32, 64, 128, 128], "kernel_sizes": [[3, 3, 3]] * 5,
                        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 1, 1]]}}
    new = same_settings_configuration(plans, ours, "3d_vs")
    config = new["configurations"]["3d_vs"]
    kwargs = config["architecture"]["arch_kwargs"]
    assert config["patch_size"] == [80, 48, 48] and config["batch_size"] == 3 and config["spacing"] == [0.667, 0.5, 0.5]
    assert config["data_identifier"] == "nnUNetPlans_3d_vs"
    assert kwargs["n_stages"] == 5 and kwargs["features_per_stage"] == [16, 32, 64, 128, 128]
    assert kwargs["strides"][-1] == [2, 1, 1] and len(kwargs["kernel_sizes"]) == 5
    assert kwargs["n_conv_per_stage"] == [2] * 5 and kwargs["n_conv_per_stage_decoder"] == [2] * 4
    assert kwargs["conv_bias"] is True and config["architecture"]["network_class_name"] == "PlainConvUNet"
    assert "3d_vs" not in plans["configurations"] and arch["n_stages"] == 6  # the input is left alone
    with pytest.raises(ValueError, match="3d_fullres"):
        same_settings_configuration({"configurations": {}}, ours)


def test_missing_nnunet_is_a_one_line_user_error(bench):
    if importlib.util.find_spec("nnunetv2") is not None:
        pytest.skip("nnunetv2 is importable here")
    with pytest.raises(bench.VesselSegError, match="--skip-nnunet"):
        bench.nnunet_command(sys.executable)


def test_unknown_section_is_a_user_error(bench, tmp_path, capsys):
    assert bench.main(["--sections", "plan,fly", "--skip-nnunet", "--work", str(tmp_path)]) == 2
    assert "plan,train,infer" in capsys.readouterr().err


def test_our_side_plan_section_writes_json_and_markdown(tmp_path, bench):
    out = tmp_path / "results"
    argv = ["--sections", "plan", "--cases", "2", "--size", "24", "--skip-nnunet", "--work", str(tmp_path / "work"),
            "--out", str(out)]
    assert bench.main(argv) == 0
    (json_path,) = out.glob("*.json")
    report = json.loads(json_path.read_text())
    runs = {m["name"]: m for m in report["measurements"]}
    assert set(runs) == {"ours_cpu", "ours_gpu"}
    for m in runs.values():
        assert m["returncode"] == 0 and m["wall_s"] > 0 and m["peak_rss_mb"] > 0 and m["output_mb"] > 0
        assert "3d_fullres" in m["plans"]
    assert any(c.endswith("3d_fullres") for c in runs["ours_cpu"]["configurations"])
    assert report["ratios"] == {} and report["settings"]["cases"] == 2
    markdown = json_path.with_suffix(".md").read_text()
    assert "| ours_cpu | 1 |" in markdown and "| ours_gpu | 1 |" in markdown


def test_our_side_train_and_infer_sections_end_to_end(tmp_path, bench):
    out = tmp_path / "results"
    argv = ["--sections", "train,infer", "--cases", "4", "--size", "32", "--test-cases", "1", "--train-epochs", "1",
            "--train-iterations", "2", "--val-iterations", "1", "--default-iterations", "0", "-np", "1", "--skip-nnunet",
            "--work", str(tmp_path / "work"), "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(next(out.glob("*.json")).read_text())
    runs = {m["name"]: m for m in report["measurements"]}
    assert set(runs) == {"ours_train_same", "ours_infer_tta", "ours_infer_notta"}
    train = runs["ours_train_same"]
    assert train["metrics"]["iterations_timed"] == 1 and train["metrics"]["s_per_it"] > 0
    assert train["metrics"]["data_wait_s_per_it"] >= 0 and train["plans"]["3d_fullres"]["batch_size"] >= 1
    for name in ("ours_infer_tta", "ours_infer_notta"):
        metrics = runs[name]["metrics"]
        assert runs[name]["returncode"] == 0 and metrics["num_cases"] == 1 and metrics["s_per_case"] > 0
        assert 0 <= metrics["dice"] <= 1 and 0 <= metrics["cldice"] <= 1
    markdown = next(out.glob("*.md")).read_text()
    assert "## Training" in markdown and "## Inference" in markdown and "| ours_infer_tta |" in markdown
