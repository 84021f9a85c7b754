"""Smoke tests of benchmarks/compare_nnunet.py: our side only, so they pass where nnunetv2 is absent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_nnunet.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("compare_nnunet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_peak_memory_sums_the_whole_process_tree(tmp_path, bench):
    # the parent stays small; only its child holds ~120 MiB, which the tree sum must include
    child = "import time; b = b'x' * (120 * 2**20); time.sleep(0.8)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    stats = bench.run_measured([sys.executable, "-c", parent], {}, tmp_path / "log.txt")
    assert stats["returncode"] == 0
    assert stats["max_processes"] >= 2
    assert stats["peak_rss_mb"] >= 120
    assert 0 < stats["peak_pss_mb"] <= stats["peak_rss_mb"]
    assert stats["wall_s"] >= 0.8


def test_summary_takes_medians_and_ratios_are_ours_over_nnunet(bench):
    def m(name, repeat, wall, rss, rc=0):
        return bench.Measurement(name=name, tool="t", section="s", repeat=repeat, command=[], returncode=rc,
                                 wall_s=wall, cpu_s=2 * wall, peak_rss_mb=rss, peak_pss_mb=rss / 2, max_processes=1)

    runs = [m("ours_cpu", 1, 2.0, 100), m("ours_cpu", 2, 4.0, 300), m("ours_cpu", 3, 3.0, 200),
            m("nnunet", 1, 10.0, 1000), m("nnunet", 2, 99.0, 5000, rc=1)]  # a failed run is left out
    summary = bench.summarise(runs)
    assert summary["ours_cpu"]["wall_s"] == 3.0 and summary["ours_cpu"]["peak_rss_mb"] == 300
    assert summary["nnunet"]["runs"] == 1
    ratios = bench.compute_ratios(summary)
    assert set(ratios) == {"ours_cpu/nnunet"}
    assert ratios["ours_cpu/nnunet"] == {"wall_s": 0.3, "cpu_s": 0.3, "peak_rss_mb": 0.3, "peak_pss_mb": 0.3}


def test_missing_nnunet_is_a_one_line_user_error(bench):
    if importlib.util.find_spec("nnunetv2") is not None:
        pytest.skip("nnunetv2 is importable here")
    with pytest.raises(bench.VesselSegError, match="--skip-nnunet"):
        bench.nnunet_command(sys.executable)


def test_our_side_end_to_end_writes_json_and_markdown(tmp_path, bench):
    out = tmp_path / "results"
    argv = ["--cases", "2", "--size", "24", "--skip-nnunet", "--work", str(tmp_path / "work"), "--out", str(out)]
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
