"""Reliability, round 3: one name check for every name option, seed values, shared provenance records."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("bad", ["../../../../elsewhere/x", "/abs/plans", "a/b", "a__b", "..", "x" * 101, ""])
def test_every_name_option_refuses_paths(bad, tmp_path, monkeypatch, capsys):
    from vessel_seg.cli.plan_and_preprocess import main as plan_main
    from vessel_seg.cli.train import main as train_main
    from vessel_seg.errors import VesselSegError
    from vessel_seg.model_folder import check_name_part, model_dir

    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / name))
    with pytest.raises(VesselSegError, match="a name is letters"):
        check_name_part(bad, "-pl")
    with pytest.raises(VesselSegError):
        model_dir("Dataset001_X", "3d_fullres", bad)
    assert train_main(["1", "3d_fullres", "0", "-pl", bad]) == 2
    assert train_main(["1", "3d_fullres", "0", "-tr", bad]) == 2
    assert plan_main(["-d", "1", "-pl", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and err.count("a name is letters") == 3 and "Traceback" not in err
    assert not (tmp_path / "elsewhere").exists()


def test_two_writers_of_one_provenance_file_keep_both_records(tmp_path):
    from vessel_seg.inference.provenance import ProvenanceLog

    a, b = ProvenanceLog(tmp_path), ProvenanceLog(tmp_path)  # both read the (empty) folder first
    a.record("case_a", "model-1")
    b.record("case_b", "model-2")
    merged = ProvenanceLog(tmp_path)
    assert merged.made_by("case_a", "model-1") and merged.made_by("case_b", "model-2")


@pytest.mark.parametrize("entry", [[True, False, True], [10**400, 0, 0], [0, 0, float("nan")], [1, 2, "3"]])
def test_seed_values_must_be_finite_numbers(entry, tmp_path):
    from vessel_seg.errors import VesselSegError
    from vessel_seg.inference.tracking import read_seeds

    path = tmp_path / "seeds.json"
    path.write_text(json.dumps([entry]) if entry[0] != 10**400 else f"[[{10**400}, 0, 0]]")
    with pytest.raises(VesselSegError, match="finite numbers"):
        read_seeds(path)


def test_duplicate_seeds_are_traced_once(tmp_path):
    from vessel_seg.inference.tracking import read_seeds

    path = tmp_path / "seeds.json"
    path.write_text(json.dumps([[1.0, 2.0, 3.0]] * 1000 + [[4.0, 5.0, 6.0, 1.5]]))
    seeds = read_seeds(path)
    assert [s.point_mm for s in seeds] == [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)]


@pytest.mark.parametrize("path, value, message", [
    (("configurations", "3d_fullres", "batch_size"), True, "expected a number"),
    (("configurations", "3d_fullres", "network", "features_per_stage"), [16.5, 32], "whole number"),
    (("intensity_properties", "0", "mean"), "1e3", "expected a number"),
    (("configurations", "3d_fullres", "normalization"), ["nonsense"], "unknown normalisation scheme 'nonsense'"),
])
def test_plans_values_of_the_wrong_kind_name_the_plans_file(path, value, message, tmp_path):
    from vessel_seg.builtin import PACKAGED_DIR
    from vessel_seg.errors import PlansError
    from vessel_seg.planners.plans import Plans

    data = json.loads((PACKAGED_DIR / "plans.json").read_text())
    data.setdefault("intensity_properties", {}).setdefault("0", {"mean": 0.0, "std": 1.0, "percentile_00_5": -1.0,
                                                                 "percentile_99_5": 1.0})
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    target = tmp_path / "plans.json"
    target.write_text(json.dumps(data))
    with pytest.raises(PlansError, match=message) as caught:
        Plans.load(target)
    assert str(target) in str(caught.value)
