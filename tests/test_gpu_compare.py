"""benchmarks/gpu_compare.py: report logic, data helpers, and our side of its CPU smoke mode end to end.

The nnU-Net side runs only where /tmp/nnunet_venv exists and VS_RUN_SLOW=1 is set (about two minutes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NNUNET_PYTHON = Path("/tmp/nnunet_venv/bin/python")
slow = pytest.mark.skipif(os.environ.get("VS_RUN_SLOW") != "1", reason="slow: set VS_RUN_SLOW=1")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu():
    """gpu_compare loaded from its file (it puts benchmarks/ on sys.path for its siblings)."""
    module = _load("gpu_compare")
    yield module
    sys.modules.pop("gpu_compare", None)


def _step(rc=0, wall=1.0, **metrics):
    return {"framework": "x", "rc": rc, "wall_s": wall, "limit_s": 100.0, "timed_out": False, "metrics": metrics}


def test_table_ratios_and_goals(gpu):
    from gpu_report import build_table, check_goals, render_markdown

    state = {"settings": {"iterations": 150, "big_shape": [600, 512, 512]}, "steps": {
        "vs_train": _step(s_per_it=0.05, pseudo_dice=0.91), "nn_train": _step(s_per_it=0.04, pseudo_dice=0.90),
        "nn_train_same": _step(s_per_it=0.10),
        "vs_predict_tta": _step(wall=15.0), "nn_predict_tta": _step(wall=40.0),
        "vs_predict_notta": _step(rc=1), "nn_predict_notta": {"framework": "nnunet", "skipped": "budget: 2 s left"}},
        "big_dice": {"vs_tta": {"dice": 0.8}, "nn_tta": {"dice": 0.9}}}
    rows = {r["metric"]: r for r in build_table(state)}
    assert rows["train s/it, same patch and batch (ours' plan)"]["ratio_ours_over_nnunet"] == 0.5
    assert rows["train s/it, own default plans (median after warm-up)"]["ratio_ours_over_nnunet"] == 1.25
    assert rows["predict 512x512x600 wall s, TTA"]["ratio_ours_over_nnunet"] == 0.375
    assert rows["predict Dice vs label, TTA"]["vessel_seg"] == 0.8
    assert rows["predict 512x512x600 wall s, no TTA"]["vessel_seg_text"] == "failed rc 1"
    assert rows["predict 512x512x600 wall s, no TTA"]["nnunet_text"] == "skipped"
    assert [g["status"] for g in check_goals(state)] == ["PASS", "PASS", "PASS", "PASS"]
    state["same_is_default"] = True  # then nn_train is the same-settings run: 0.05 / 0.04
    state["steps"]["nn_predict_tta"] = {**_step(rc=-9, wall=240.0), "timed_out": True, "limit_s": 240.0}
    goals = {g["goal"]: g for g in check_goals(state)}
    assert goals["train s/it at the same patch and batch <= 1.0x nnU-Net"]["status"] == "MISS"
    tta = goals["large volume with TTA <= 0.5x nnU-Net (wall)"]
    assert tta["status"] == "PASS" and "upper bound" in tta["note"]  # 15 s against more than 240 s
    markdown = render_markdown({**state, "table": build_table(state), "goals": list(goals.values())})
    assert ">240 (timeout)" in markdown and "| vs_predict_notta | x | rc 1 |" in markdown


def test_tiled_volume_and_dice(gpu):
    from gpu_data import dice_score, tile_volume

    cube = np.arange(8 ** 3, dtype=np.int16).reshape(8, 8, 8)
    image, label = tile_volume((20, 12, 9), [(cube, (cube % 7 == 0).astype(np.uint8))], seed=1)
    assert image.shape == label.shape == (20, 12, 9) and image.dtype == np.int16 and label.dtype == np.uint8
    assert np.array_equal(label, (image % 7 == 0))  # every tile keeps image and label together, flips included
    assert dice_score(label, label) == 1.0 and dice_score(label, np.zeros_like(label)) == 0.0
    assert dice_score(np.zeros(3), np.zeros(3)) == 1.0


def test_missing_vs_flags_are_tolerated(gpu):
    args = gpu.build_parser().parse_args(["--ours-compile", "on", "--workers", "4"])
    old = {"vs_train_options": {"--compile": {"choices": None, "nargs": 0}}, "vs_predict_options": {}}
    train, predict, notes = gpu.ours_flags(args, old)
    assert train == ["--compile"] and predict == [] and len(notes) == 2
    new = {"vs_train_options": {"--compile": {"choices": ["auto", "on", "off"], "nargs": "?"}, "--num-workers": {}},
           "vs_predict_options": {"--step-size": {}}}
    train, predict, notes = gpu.ours_flags(args, new)
    assert train == ["--compile", "on", "--num-workers", "4"] and predict == ["--step-size", "0.5"] and not notes
    with pytest.raises(gpu.VesselSegError, match="NAME=SECONDS"):
        gpu.parse_limits(["fly=3"])


def test_pack_stores_wheels_uncompressed(tmp_path):
    pack = _load("gpu_bench_pack")
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("demo/__init__.py", "x = 1\n" * 100)
    copy = tmp_path / "copy.whl"
    copy.write_bytes(pack.stored_copy(wheel))
    with zipfile.ZipFile(copy) as zf:
        assert zf.read("demo/__init__.py") == b"x = 1\n" * 100
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def _smoke(gpu, tmp_path, extra: list[str]) -> dict:
    out = tmp_path / "out"
    argv = ["--smoke", "--device", "cpu", "--work", str(tmp_path / "work"), "--out", str(out), *extra]
    assert gpu.main(argv) == 0
    (json_path,) = out.glob("*-cpu-smoke-gpu.json")
    assert json_path.with_suffix(".md").is_file()
    return json.loads(json_path.read_text())


def test_smoke_our_side_end_to_end(gpu, tmp_path):
    # TTA is the same path with 8x the network passes (the slow test below runs it)
    steps = "data,big,vs_plan,vs_train,vs_predict_notta,dice_notta"
    report = _smoke(gpu, tmp_path, ["--skip-nnunet", "--workers", "0", "--steps", steps])  # no worker start-up
    assert set(report["steps"]) == set(steps.split(","))
    assert all(s["rc"] == 0 and s["wall_s"] > 0 for s in report["steps"].values())
    train = report["steps"]["vs_train"]["metrics"]
    assert train["s_per_it"] > 0 and train["iterations_timed"] == 3 and 0 <= train["pseudo_dice"] <= 1
    assert report["steps"]["vs_predict_notta"]["metrics"]["predict_s"] > 0
    assert 0 <= report["big_dice"]["vs_notta"]["dice"] <= 1
    assert report["plans"]["vessel_seg"]["batch_size"] >= 1
    rows = {r["metric"]: r for r in report["table"]}
    assert rows["predict 28x28x16 wall s, no TTA"]["vessel_seg"] > 0
    goals = {g["goal"]: g["status"] for g in report["goals"]}
    assert goals["train s/it at the same patch and batch <= 1.0x nnU-Net"] == "n/a"


@slow
@pytest.mark.skipif(not NNUNET_PYTHON.is_file(), reason="no nnU-Net environment in /tmp/nnunet_venv")
def test_smoke_both_frameworks_end_to_end(gpu, tmp_path):
    report = _smoke(gpu, tmp_path, ["--nnunet-python", str(NNUNET_PYTHON)])
    for name in ("nn_plan", "nn_train", "vs_predict_tta", "nn_predict_tta", "nn_predict_notta"):
        assert report["steps"][name]["rc"] == 0, report["steps"][name].get("error_tail")
    assert report["steps"]["nn_train"]["metrics"]["s_per_it"] > 0
    assert 0 <= report["steps"]["nn_train"]["metrics"]["pseudo_dice"] <= 1
    assert all(g["status"] in ("PASS", "MISS") for g in report["goals"])
