"""vs_predict never touches an input: random folder layouts (same folder, nested, through a link,
colliding case names) either predict into files that are not inputs or are refused before anything
is written; the bytes of every input stay the same."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import pytest
from training_helpers import threshold_model

from vessel_seg.errors import DatasetError, VesselSegError
from vessel_seg.imageio import ImageGeometry, write_image
from vessel_seg.inference.prediction_inputs import (
    PredictionOptions,
    case_output_paths,
    check_output_location,
    check_outputs_spare_inputs,
    find_input_cases,
)
from vessel_seg.inference.prediction_run import predict_cases
from vessel_seg.inference.provenance import PROVENANCE_FILE

SHAPE = (6, 10, 12)


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 30, SHAPE).astype(np.float32)
    image[:, 3:6, 4:8] += 120.0  # a bright bar: class 1 under the threshold model
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(image, ImageGeometry(SHAPE, (1.0, 1.0, 1.0)), path)
    return path


def _digest(files: list[Path]) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


NAMES = ["a", "a_0000", "scan", "b_0000_0000", "case_1"]


def _layout(rng: random.Random, root: Path) -> tuple[Path, Path, list[Path], PredictionOptions]:
    """Random inputs under ``root/in`` (folder or single file), a random -o, random extra outputs."""
    inputs = root / "in"
    names = rng.sample(NAMES, rng.randint(1, 3))
    files = [_image(inputs / f"{name}_0000.nii.gz", k) for k, name in enumerate(names)]
    if rng.random() < 0.4:  # a plain file without channel suffix, given as -i
        files.append(_image(inputs / "scan.nii.gz", 9))
        source = files[-1]
    else:
        source = inputs
    link = root / "link"
    if not link.exists():
        link.symlink_to(inputs, target_is_directory=True)
    output = rng.choice([inputs, inputs / "sub", root / "out", root / "in" / ".." / "in", link, root])
    options = PredictionOptions(use_tta=False, overwrite=rng.random() < 0.5, save_probabilities=rng.random() < 0.3)
    return source, output, files, options


@pytest.mark.parametrize("seed", range(24))
def test_random_layouts_never_change_an_input(tmp_path, seed):
    rng = random.Random(seed)
    source, output, files, options = _layout(rng, tmp_path)
    (tmp_path / "out").mkdir(exist_ok=True)
    before = _digest(files)
    cases = find_input_cases(source, 1)
    try:
        predict_cases([threshold_model()], source, output, options)
    except DatasetError as exc:
        assert "would be overwritten" in str(exc) or "would write the same file" in str(exc)
    else:
        written = [p for c in cases for p in case_output_paths(c, Path(output), options).values()]
        assert all(p.is_file() for p in written)
        assert not {os.path.realpath(p) for p in written} & {os.path.realpath(f) for f in files}
    assert _digest(files) == before


def test_a_plain_file_predicted_into_its_own_folder_is_refused(tmp_path):
    scan = _image(tmp_path / "scan.nii.gz", 0)
    cases = find_input_cases(scan, 1)
    with pytest.raises(DatasetError, match=r"scan.nii.gz: input image of case 'scan' would be overwritten by the mask"):
        check_outputs_spare_inputs(cases, tmp_path, PredictionOptions())
    check_outputs_spare_inputs(cases, tmp_path / "masks", PredictionOptions())  # elsewhere: fine


def test_colliding_case_names_are_refused_in_the_input_folder(tmp_path):
    # case "a" (a_0000.nii.gz) and case "a_0000" (a_0000_0000.nii.gz): a_0000's mask is a's image
    for name in ("a_0000", "a_0000_0000"):
        _image(tmp_path / f"{name}.nii.gz", 0)
    cases = find_input_cases(tmp_path, 1)
    assert [c.case_id for c in cases] == ["a", "a_0000"]
    with pytest.raises(DatasetError, match="input image of case 'a' would be overwritten by the mask of case 'a_0000'"):
        check_outputs_spare_inputs(cases, tmp_path / "." / "", PredictionOptions())


def test_two_files_for_one_channel_are_refused(tmp_path):
    _image(tmp_path / "a_0000.nii.gz", 0)
    _image(tmp_path / "a_0000.nrrd", 1)
    with pytest.raises(DatasetError, match="channel 0 of case 'a' is also given by"):
        find_input_cases(tmp_path, 1)


def test_output_location_is_checked_without_creating_it(tmp_path):
    target = tmp_path / "new" / "deeper"
    assert check_output_location(target) == target and not (tmp_path / "new").exists()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(Exception, match="not writable"):
        check_output_location(blocker / "sub")


def test_a_240_character_case_id_predicts_with_probabilities(tmp_path):
    case_id = "c" * 240  # temporary names are longer than final ones: they must still fit in 255 bytes
    _image(tmp_path / "in" / f"{case_id}_0000.nii.gz", 0)
    options = PredictionOptions(use_tta=False, save_probabilities=True)
    predict_cases([threshold_model()], tmp_path / "in", tmp_path / "out", options)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {f"{case_id}.nii.gz", f"{case_id}.npz", PROVENANCE_FILE}


def test_temporary_names_of_long_files_fit_the_filesystem(tmp_path):
    from vessel_seg.atomic import NAME_MAX, write_bytes_atomic

    for length in (200, 240, 248):
        target = tmp_path / ("n" * length + ".npy")
        write_bytes_atomic(target, b"data")
        assert target.read_bytes() == b"data" and len(target.name) <= NAME_MAX
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted("n" * n + ".npy" for n in (200, 240, 248))


def test_prediction_checks_free_space_before_creating_anything(tmp_path, monkeypatch):
    import shutil

    from vessel_seg.errors import OutputWriteError

    _image(tmp_path / "in" / "a_0000.nii.gz", 0)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=100))  # a nearly full disk
    with pytest.raises(OutputWriteError, match=r"prediction needs about .* GiB but only 0.00 GiB are free"):
        predict_cases([threshold_model()], tmp_path / "in", tmp_path / "out", PredictionOptions(use_tta=False))
    assert not (tmp_path / "out").exists()


def test_vs_predict_removes_far_debris_by_default_and_logs_components(tmp_path, caplog):
    import logging

    from vessel_seg.imageio import read_label

    shape = (16, 32, 32)
    image = np.zeros(shape, np.float32)
    image[:, 4:20, 4:24] = 120.0  # the "tree": class 1 under the threshold model
    image[8:10, 28:30, 28:30] = 1000.0  # a bright 2x2x2 speck: ~1% of the tree after the model's smoothing, ~9 mm away
    (tmp_path / "in").mkdir()
    write_image(image, ImageGeometry(shape, (1.0, 1.0, 1.0)), tmp_path / "in" / "s_0000.nii.gz")
    with caplog.at_level(logging.INFO):
        predict_cases([threshold_model()], tmp_path / "in", tmp_path / "out", PredictionOptions(use_tta=False))
    raw = PredictionOptions(use_tta=False, postprocess=False)
    predict_cases([threshold_model()], tmp_path / "in", tmp_path / "raw", raw)
    cleaned, _ = read_label(tmp_path / "out" / "s.nii.gz")
    as_predicted, _ = read_label(tmp_path / "raw" / "s.nii.gz")
    assert as_predicted[8, 28, 28] > 0 and cleaned[8, 28, 28] == 0
    assert np.array_equal(cleaned[:, :22, :26], as_predicted[:, :22, :26])  # the tree untouched
    assert "s: 2 -> 1 component(s) (default" in caplog.text


def test_recipe_gap_bridging_runs_on_the_streamed_prediction(tmp_path, caplog):
    """No --save-probabilities: the bridge comes from the uint8 foreground map kept beside the streamed labels."""
    import logging
    import types

    from vessel_seg.imageio import read_label
    from vessel_seg.inference.postprocessing import PostprocessingRecipe, count_components

    shape = (16, 16, 40)
    image = np.zeros(shape, np.float32)
    image[6:10, 6:10, 2:18] = 120.0  # a vessel ...
    image[6:10, 6:10, 18:22] = 30.0  # ... dimmer over 4 mm: foreground probability ~0.3, below 0.5 ...
    image[6:10, 6:10, 22:38] = 120.0  # ... and on again
    (tmp_path / "in").mkdir()
    write_image(image, ImageGeometry(shape, (1.0, 1.0, 1.0)), tmp_path / "in" / "g_0000.nii.gz")
    bridging = types.SimpleNamespace(postprocessing=PostprocessingRecipe(bridge_gaps_mm=6.0))
    plain = types.SimpleNamespace(postprocessing=PostprocessingRecipe())
    with caplog.at_level(logging.INFO):
        predict_cases([threshold_model()], tmp_path / "in", tmp_path / "bridged",
                      PredictionOptions(use_tta=False, recipe=bridging))
    predict_cases([threshold_model()], tmp_path / "in", tmp_path / "plain", PredictionOptions(use_tta=False, recipe=plain))
    bridged, _ = read_label(tmp_path / "bridged" / "g.nii.gz")
    unbridged, _ = read_label(tmp_path / "plain" / "g.nii.gz")
    assert count_components(unbridged) == 2 and count_components(bridged) == 1
    assert bridged[8, 8, 20] == 1 and not unbridged[:, :, 19:21].any()
    assert "g: 2 -> 1 component(s) (recipe: bridge gaps <= 6 mm" in caplog.text


def test_masks_of_another_model_are_predicted_again_and_the_log_says_why(tmp_path, caplog):
    import logging

    import torch

    _image(tmp_path / "in" / "a_0000.nii.gz", 0)
    options = PredictionOptions(use_tta=False)
    assert list(predict_cases([threshold_model()], tmp_path / "in", tmp_path / "out", options)) == ["a"]
    assert predict_cases([threshold_model()], tmp_path / "in", tmp_path / "out", options) == {}  # same model: reused
    changed = threshold_model()
    with torch.no_grad():
        changed.networks[0].smooth.weight.mul_(1.01)  # "retrained": same folder and names, other weights
    with caplog.at_level(logging.INFO):
        assert list(predict_cases([changed], tmp_path / "in", tmp_path / "out", options)) == ["a"]
    assert "predicted by another model or other settings (e.g. a): predicting them again" in caplog.text
    (tmp_path / "out" / ".vs_provenance.json").write_text("{not json")  # a damaged record: nothing is trusted
    assert list(predict_cases([changed], tmp_path / "in", tmp_path / "out", options)) == ["a"]


def test_parts_split_the_cases_and_their_records_merge(tmp_path):
    from vessel_seg.inference.prediction_inputs import case_share

    for k, name in enumerate(("a", "b", "c")):
        _image(tmp_path / "in" / f"{name}_0000.nii.gz", k)
    done = {}
    for part in (0, 1):  # as two processes (or torchrun ranks) would run them
        options = PredictionOptions(use_tta=False, num_parts=2, part_id=part)
        done[part] = sorted(predict_cases([threshold_model()], tmp_path / "in", tmp_path / "out", options))
    assert done == {0: ["a", "c"], 1: ["b"]}
    assert (tmp_path / "out" / ".vs_provenance.part0of2.json").is_file()
    # one run over everything afterwards: every record of both parts is honoured
    assert predict_cases([threshold_model()], tmp_path / "in", tmp_path / "out", PredictionOptions(use_tta=False)) == {}
    assert case_share(None, None, {"WORLD_SIZE": "4", "RANK": "3"}) == (4, 3)  # torchrun
    assert case_share(3, 1, {"WORLD_SIZE": "4", "RANK": "3"}) == (3, 1)  # flags win
    assert case_share(None, None, {}) == (1, 0)
    for bad in ((2, 2), (0, 0), (2, -1)):
        with pytest.raises(VesselSegError, match="num_parts"):
            case_share(*bad, {})
