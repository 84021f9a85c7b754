"""Smoke tests of benchmarks/loader_throughput.py: our side on a tiny dataset; nnU-Net's where its venv exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import load_benchmark_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NNUNET_PYTHON = Path("/tmp/nnunet_venv/bin/python")


@pytest.fixture(scope="module")
def bench():
    """loader_throughput loaded from its file; it puts benchmarks/ on sys.path for its sibling modules."""
    yield from load_benchmark_script("loader_throughput")


def tiny_args(tmp_path, *extra):
    return ["--cases", "2", "--size", "32", "--workers", "0", "1", "--batches", "2", "--warmup", "1",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *extra]


def test_our_side_writes_table_json_and_gpu_check(tmp_path, bench, capsys):
    assert bench.main(tiny_args(tmp_path, "--skip-nnunet", "--gpu-step-s", "0.5")) == 0
    (json_path,) = (tmp_path / "out").glob("*-loader.json")
    report = json.loads(json_path.read_text())
    assert [row["workers"] for row in report["rows"]] == [0, 1]
    for row in report["rows"]:
        ours = row["ours"]
        assert ours["batches"] == 2 and ours["batches_per_s"] > 0 and ours["worker_cpu_s_per_batch"] > 0
        assert ours["batch_size"] >= 1 and len(ours["patch_size"]) == 3 and "nnunet" not in row
    check = report["feed_check"]
    assert check["auto_workers"] == 15 and check["needed_batches_per_s"] == 3.0  # 1.5 / 0.5 s
    assert check["status"] in ("PASS", "MISS") and check["ours_batches_per_s"] > 0
    markdown = json_path.with_suffix(".md").read_text()
    assert re.search(r"^\| 1 \| [0-9.]+ \| n/a \| n/a \|", markdown, re.M)
    assert "at 15 workers (auto for 16 CPUs, 1 GPU)" in capsys.readouterr().out


def test_projection_takes_the_cheaper_of_producing_and_receiving(bench):
    row = {"worker_cpu_s_per_batch": 0.2, "consumer_cpu_s_per_batch": 0.01}
    assert bench.projected_rate(row, 15) == 75.0  # 15 workers / 0.2 s
    assert bench.projected_rate({**row, "consumer_cpu_s_per_batch": 0.02}, 15) == 50.0  # 1 / 0.02 s


def test_bad_arguments_are_user_errors(tmp_path, bench, capsys):
    assert bench.main(tiny_args(tmp_path, "--skip-nnunet", "--gpu-step-s", "0")) == 2
    assert "--gpu-step-s" in capsys.readouterr().err


@pytest.mark.skipif(not NNUNET_PYTHON.is_file(), reason="nnU-Net's environment /tmp/nnunet_venv is absent")
def test_both_sides_on_a_tiny_dataset(tmp_path, bench):
    argv = tiny_args(tmp_path, "--nnunet-python", str(NNUNET_PYTHON))
    workers = argv.index("--workers")
    argv[workers + 1:workers + 3] = ["1"]  # one run per side: nnU-Net's start-up dominates
    assert bench.main(argv) == 0
    report = json.loads(next((tmp_path / "out").glob("*-loader.json")).read_text())
    for row in report["rows"]:
        assert row["nnunet"]["batches_per_s"] > 0 and row["nnunet"]["worker_cpu_s_per_batch"] > 0
        assert row["ratio"] > 0 and len(row["nnunet"]["patch_size"]) == 3
    assert "nnunet_batches_per_s" in report["feed_check"]
