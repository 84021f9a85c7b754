"""Cross-validation splits: deterministic, disjoint, covering, persisted and reused."""

from __future__ import annotations

import json
import logging

import pytest

from vessel_seg.errors import DatasetError, VesselSegError
from vessel_seg.trainers.splits import SPLITS_FILE, fold_cases, load_or_create_splits, make_splits

CASES = [f"case_{i:03d}" for i in range(23)]


def test_splits_are_deterministic_and_independent_of_order():
    first = make_splits(CASES, num_folds=5, seed=12345)
    assert make_splits(list(reversed(CASES)), num_folds=5, seed=12345) == first
    assert make_splits(CASES, num_folds=5, seed=1) != first


def test_splits_are_disjoint_covering_and_balanced():
    splits = make_splits(CASES, num_folds=5)
    assert len(splits) == 5
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == set(CASES)
    assert sum(len(v) for v in vals) == len(CASES)  # pairwise disjoint
    for split, val in zip(splits, vals, strict=True):
        assert set(split["train"]) == set(CASES) - val
        assert split["train"] == sorted(split["train"])
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]


def test_few_cases_fall_back_to_leave_one_out(caplog):
    with caplog.at_level(logging.WARNING):
        splits = make_splits(["a", "b", "c"], num_folds=5)
    assert [s["val"] for s in sorted(splits, key=lambda s: s["val"])] == [["a"], ["b"], ["c"]]
    assert "leave-one-out" in caplog.text
    assert make_splits(["only"]) == [{"train": ["only"], "val": ["only"]}]


def test_bad_case_lists_are_rejected():
    with pytest.raises(DatasetError, match="duplicated"):
        make_splits(["a", "b", "a"])
    with pytest.raises(DatasetError, match="no cases"):
        make_splits([])


def test_fold_cases_by_index_string_and_all():
    splits = make_splits(CASES, num_folds=5)
    train, val = fold_cases(splits, 2)
    assert (train, val) == (splits[2]["train"], splits[2]["val"])
    assert fold_cases(splits, "2") == (train, val)
    every_train, every_val = fold_cases(splits, "all")
    assert every_train == every_val == sorted(CASES)


@pytest.mark.parametrize("fold", [5, -1, "7", "first"])
def test_fold_out_of_range_is_a_one_line_user_error(fold):
    splits = make_splits(CASES, num_folds=5)
    with pytest.raises(VesselSegError) as info:
        fold_cases(splits, fold)
    message = str(info.value)
    assert "\n" not in message and "0 to 4" in message and "'all'" in message


def test_load_or_create_persists_and_reuses(tmp_path):
    created = load_or_create_splits(tmp_path, CASES)
    path = tmp_path / SPLITS_FILE
    assert json.loads(path.read_text()) == created
    assert not [p for p in tmp_path.iterdir() if p.name != SPLITS_FILE]  # no temp files left behind

    # an existing file wins, even over other parameters (folds must not move under trained models)
    custom = [{"train": CASES[:20], "val": CASES[20:]}, {"train": CASES[3:], "val": CASES[:3]}]
    path.write_text(json.dumps(custom))
    assert load_or_create_splits(tmp_path, CASES, num_folds=5, seed=7) == custom


def test_added_cases_are_reported(tmp_path, caplog):
    load_or_create_splits(tmp_path, CASES[:20])
    with caplog.at_level(logging.WARNING):
        splits = load_or_create_splits(tmp_path, CASES)
    assert "3 case(s) were added" in caplog.text and "case_020" in caplog.text
    assert {c for s in splits for c in s["val"]} == set(CASES[:20])


def test_stale_or_broken_split_files_are_user_errors(tmp_path):
    load_or_create_splits(tmp_path, CASES)
    with pytest.raises(DatasetError, match="not preprocessed"):
        load_or_create_splits(tmp_path, CASES[:-2])
    (tmp_path / SPLITS_FILE).write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_or_create_splits(tmp_path, CASES)
    (tmp_path / SPLITS_FILE).write_text(json.dumps({"train": []}))
    with pytest.raises(DatasetError, match="delete it"):
        load_or_create_splits(tmp_path, CASES)
