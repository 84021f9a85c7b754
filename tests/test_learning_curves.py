"""benchmarks/learning_curves.py and the nnU-Net driver pieces it adds, without nnU-Net installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import load_benchmark_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def curves():
    yield from load_benchmark_script("learning_curves")


def _points(dice: list[float], seconds: list[float]) -> list[dict]:
    return [{"iterations": 100 * (i + 1), "train_s": s, "dice": d, "cldice": d + 0.05}
            for i, (d, s) in enumerate(zip(dice, seconds, strict=True))]


def test_value_at_time_takes_the_last_snapshot_reached(curves):
    points = _points([0.5, 0.7, 0.8], [100.0, 200.0, 300.0])
    assert curves.value_at_time(points, 99.0) is None
    assert curves.value_at_time(points, 100.0) == 0.5
    assert curves.value_at_time(points, 299.0) == 0.7
    assert curves.value_at_time(points, 1e9) == 0.8


def test_report_has_equal_iteration_and_equal_time_rows(curves):
    result = {
        "date": "2026-11-30", "host": "h", "machine": {"cpus": 2}, "seed": 7, "cases": 3, "test_cases": 1, "size": 32,
        "epochs": 2, "iterations": 50, "plan": {"patch_size": [32, 32, 32], "batch_size": 2, "features": [8, 16]},
        "curves": {"ours": _points([0.6, 0.8], [50.0, 100.0]), "nnunet": _points([0.7, 0.75], [90.0, 180.0])},
        "s_per_iteration": {"ours": 0.5, "nnunet": 0.9},
        "final_tta": [{"arm": "ours", "dice": 0.81, "cldice": 0.9}, {"arm": "nnunet", "dice": 0.77, "cldice": 0.85}],
    }
    text = curves.render(result)
    assert "| 100 | 0.600 / 0.650 | 0.700 / 0.750 |" in text
    assert "| 200 | 0.800 / 0.850 | 0.750 / 0.800 |" in text
    # nnU-Net's 100-iteration snapshot took 90 s: ours had reached only its first snapshot (50 s) by then
    assert "| nnU-Net v2 PlainConvUNet | 100 | 90 | 0.700 | 0.600 |" in text
    assert "| nnU-Net v2 PlainConvUNet | 200 | 180 | 0.750 | 0.800 |" in text
    assert "| 0.500 | 0.900 |" in text


def test_resenc_configuration_swaps_the_network_and_keeps_the_sizes():
    sys.path.insert(0, str(BENCHMARKS))
    from nnunet_driver import residual_encoder_configuration

    plain = {"patch_size": [80, 48, 48], "batch_size": 2, "data_identifier": "nnUNetPlans_3d_vs", "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 4, "features_per_stage": [16, 32, 64, 128], "n_conv_per_stage": [2] * 4,
                        "n_conv_per_stage_decoder": [2] * 3}}}
    resenc = residual_encoder_configuration(plain)
    kwargs = resenc["architecture"]["arch_kwargs"]
    assert resenc["architecture"]["network_class_name"].endswith("unet.ResidualEncoderUNet")
    assert kwargs["n_blocks_per_stage"] == [1, 3, 4, 6] and kwargs["n_conv_per_stage_decoder"] == [1, 1, 1]
    assert "n_conv_per_stage" not in kwargs
    assert resenc["patch_size"] == plain["patch_size"] and kwargs["features_per_stage"] == [16, 32, 64, 128]
    assert plain["architecture"]["arch_kwargs"]["n_conv_per_stage"] == [2] * 4  # the input is not modified


def test_unknown_arm_is_one_line_error(curves, capsys, tmp_path):
    assert curves.main(["--arms", "ours,bogus", "--work", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_extra_train_flags_reach_the_ours_arm_and_memory_is_sampled_rarely(curves, monkeypatch, tmp_path):
    seen = {}

    def fake_measure(ctx, name, tool, section, command, env, interval_s=0.05):
        seen.update(command=command, interval_s=interval_s)
        raise RuntimeError("stop here")

    monkeypatch.setattr(curves, "measure", fake_measure)
    ctx = curves.BenchmarkContext(work=tmp_path, dataset_id=520, num_processes=2, ours_command=["x"],
                                  nnunet_command=None, nnunet_python=None)
    budget = curves.Budget(2, 5, 1, 1, ("--optimizer", "sgd"))
    with pytest.raises(RuntimeError, match="stop here"):
        curves.train_arm(ctx, "ours", budget)
    assert seen["command"][-2:] == ["--optimizer", "sgd"] and seen["interval_s"] >= 1.0
