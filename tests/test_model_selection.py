"""Inference recipe round trip and the choice of configuration and postprocessing by cross-validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vessel_seg.cli.find_best_configuration import main as cli_main
from vessel_seg.errors import VesselSegError
from vessel_seg.imageio import ImageGeometry, write_image
from vessel_seg.inference.ensemble import save_probabilities
from vessel_seg.inference.model_selection import find_best_configuration
from vessel_seg.inference.postprocessing import PostprocessingRecipe
from vessel_seg.inference.recipe import InferenceRecipe, load_recipe, recipe_path

NAME = "Dataset123_Tubes"
SHAPE = (20, 20, 24)
GEOMETRY = ImageGeometry(shape=SHAPE, spacing=(1.0, 1.0, 1.0))
CASES = ["case_0", "case_1", "case_2", "case_3"]


def _tube(case_index: int) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    cz, cy = 8 + case_index, 10 - case_index
    return (((z - cz) ** 2 + (y - cy) ** 2 <= 4) & (x >= 2) & (x < 22)).astype(np.uint8)


def _write_dataset(roots) -> None:
    raw = roots["raw"] / NAME
    (raw / "labelsTr").mkdir(parents=True)
    info = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "vessel": 1}, "numTraining": 4,
            "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(info))
    for i, case in enumerate(CASES):
        write_image(_tube(i), GEOMETRY, raw / "labelsTr" / f"{case}.nii.gz")


def _write_model(roots, configuration: str, predict, folds=(0, 1)) -> None:
    """Validation predictions of ``folds`` (two cases each) made by ``predict(label) -> prediction``."""
    model = roots["results"] / NAME / f"vsTrainer__vs_plans__{configuration}"
    for fold in folds:
        folder = model / f"fold_{fold}" / "validation"
        folder.mkdir(parents=True)
        for i in (2 * fold, 2 * fold + 1):
            write_image(predict(_tube(i)), GEOMETRY, folder / f"{CASES[i]}.nii.gz")


def _write_probabilistic_model(roots, configuration: str, foreground) -> None:
    """Like :func:`_write_model`, plus ``CASE.npz``; ``foreground(label) -> p(vessel)``, the mask is ``p > 0.5``."""
    model = roots["results"] / NAME / f"vsTrainer__vs_plans__{configuration}"
    for fold in (0, 1):
        folder = model / f"fold_{fold}" / "validation"
        folder.mkdir(parents=True)
        for i in (2 * fold, 2 * fold + 1):
            fg = foreground(_tube(i)).astype(np.float32)
            write_image((fg > 0.5).astype(np.uint8), GEOMETRY, folder / f"{CASES[i]}.nii.gz")
            save_probabilities(folder / f"{CASES[i]}.npz", np.stack([1 - fg, fg]), [0, 1], GEOMETRY, ".nii.gz")


def _with_debris(label: np.ndarray) -> np.ndarray:
    pred = label.copy()
    pred[0:2, 0:2, 0:2] = 1  # 8 mm³ far from the vessel
    pred[17:19, 17:19, 20:22] = 1
    return pred


def _thinned(label: np.ndarray) -> np.ndarray:
    pred = label.copy()
    pred[:, :, 10:22] = 0  # half the vessel missed
    return pred


def test_recipe_round_trip_and_invalid_files(data_roots):
    recipe = InferenceRecipe(
        dataset_name=NAME, plans_name="vs_plans", configurations=["3d_fullres", "3d_lowres"], folds=["0", "all"],
        postprocessing=PostprocessingRecipe(min_component_mm3=12.5, keep_largest=True, bridge_gaps_mm=2.0),
        cv_scores={"selected": {"dice": 0.9}}, notes=["a note"],
    )
    path = recipe.save()
    assert path == recipe_path(NAME) and path.parent == data_roots["results"] / NAME
    assert load_recipe(NAME) == recipe == InferenceRecipe.load(path)
    path.write_text("{not json")
    with pytest.raises(VesselSegError, match="not valid JSON"):
        load_recipe(NAME)
    path.write_text(json.dumps({"dataset_name": NAME, "plans_name": "p", "configurations": [], "folds": ["0"]}))
    with pytest.raises(VesselSegError, match="configurations"):
        load_recipe(NAME)
    bad_post = {"dataset_name": NAME, "plans_name": "p", "configurations": ["c"], "folds": ["0"],
                "postprocessing": {"min_component_mm3": "lots"}}
    path.write_text(json.dumps(bad_post))
    with pytest.raises(VesselSegError, match="invalid inference recipe"):
        load_recipe(NAME)
    with pytest.raises(VesselSegError, match="not found"):
        load_recipe("Dataset999_Nothing")


def test_find_best_configuration_picks_model_and_debris_removal(data_roots):
    _write_dataset(data_roots)
    with pytest.raises(VesselSegError, match="no trained model folder"):
        find_best_configuration(NAME, folds=(0, 1))
    _write_model(data_roots, "3d_fullres", _with_debris)
    _write_model(data_roots, "3d_lowres", _thinned)
    _write_model(data_roots, "2d", lambda label: label, folds=(0,))  # fold 1 missing
    recipe = find_best_configuration(123, folds=(0, 1))
    assert recipe.configurations == ["3d_fullres"] and recipe.folds == ["0", "1"]
    assert recipe.postprocessing.min_component_mm3 in (10.0, 100.0)
    assert not recipe.postprocessing.keep_largest and recipe.postprocessing.bridge_gaps_mm is None
    scores = recipe.cv_scores
    assert set(scores["configurations"]) == {"3d_fullres", "3d_lowres"}
    assert scores["configurations"]["3d_fullres"]["score"] > scores["configurations"]["3d_lowres"]["score"]
    assert scores["selected"]["dice"] == pytest.approx(1.0) and scores["selected"]["num_cases"] == 4
    assert scores["selected"]["score"] > scores["configurations"]["3d_fullres"]["score"]
    assert any("2d" in note and "fold_1" in note for note in recipe.notes)
    assert any("ensembles not evaluated" in note for note in recipe.notes)
    assert load_recipe(NAME) == recipe
    summary = (data_roots["results"] / NAME / "inference_recipe.md").read_text(encoding="utf-8")
    assert "3d_fullres" in summary and "remove components" in summary


def test_cli(data_roots, capsys):
    _write_dataset(data_roots)
    assert cli_main([NAME, "-f", "0", "1"]) == 2
    assert "no trained model folder" in capsys.readouterr().err
    _write_model(data_roots, "3d_fullres", _thinned, folds=(0,))
    assert cli_main(["123", "-c", "3d_fullres", "-f", "0", "1"]) == 2
    err = capsys.readouterr().err
    assert "no configuration has validation predictions" in err and "rank what is validated: -f 0" in err
    assert cli_main(["123", "-c", "3d_fullres", "-f", "0"]) == 0
    assert "3d_fullres" in capsys.readouterr().out
    assert load_recipe(NAME).postprocessing.is_identity


def test_debris_candidates_include_the_fingerprint_small_vessel_volume():
    from vessel_seg.inference.model_selection import FIXED_DEBRIS_MM3, debris_volume_candidates
    from vessel_seg.planners.fingerprint import DatasetFingerprint, RadiusStats

    assert debris_volume_candidates(None) == sorted(FIXED_DEBRIS_MM3)
    fingerprint = DatasetFingerprint(NAME, cases=[], intensity={}, vessel_radius_mm=RadiusStats(p10=0.5, num_samples=9))
    assert round(10 * np.pi * 0.5**3, 3) in debris_volume_candidates(fingerprint)
    from vessel_seg.inference.model_selection import FIXED_BRIDGE_GAPS_MM, bridge_gap_candidates

    assert bridge_gap_candidates(None) == sorted(FIXED_BRIDGE_GAPS_MM)
    fingerprint.vessel_radius_mm.p50 = 0.75
    assert {0.75, 1.5, 3.0} <= set(bridge_gap_candidates(fingerprint))


def _half_confident(first_half: bool):
    """Sure of one half of the vessel (0.9), unsure of the other (0.4), with a confident false positive."""
    def foreground(label: np.ndarray) -> np.ndarray:
        fg = np.where(label > 0, 0.4, 0.0)
        sure = (slice(None), slice(None), slice(0, 12) if first_half else slice(12, None))
        fg[sure] = np.where(label[sure] > 0, 0.9, 0.0)
        fg[(0, 1) if first_half else (18, 19), 0:3, 0:3] = 0.6
        return fg
    return foreground


def test_ensemble_of_configurations_wins_when_better(data_roots):
    _write_dataset(data_roots)
    _write_probabilistic_model(data_roots, "3d_fullres", _half_confident(True))
    _write_probabilistic_model(data_roots, "3d_lowres", _half_confident(False))
    _write_model(data_roots, "2d", _thinned)  # no probabilities: left out of ensembles
    recipe = find_best_configuration(NAME, folds=(0, 1))
    # Each alone misses half the vessel and keeps its false positive; the mean is 0.65 on the whole
    # vessel and 0.3 on either false positive, so the ensemble is perfect.
    assert recipe.configurations == ["3d_fullres", "3d_lowres"]
    rows = recipe.cv_scores["configurations"]
    assert rows["3d_fullres+3d_lowres"]["score"] == pytest.approx(1.0)
    assert max(rows[c]["score"] for c in ("3d_fullres", "3d_lowres", "2d")) < 0.9
    assert "3d_fullres+2d" not in rows and any("ensembles not evaluated for 2d" in n for n in recipe.notes)
    assert recipe.postprocessing.is_identity  # nothing improves a perfect prediction, bridging included
    assert any("bridge gaps" in key for key in recipe.cv_scores["postprocessing"])
    assert not any("gap bridging not evaluated" in n for n in recipe.notes)
    assert "3d_fullres + 3d_lowres" in (data_roots["results"] / NAME / "inference_recipe.md").read_text(encoding="utf-8")


def _broken_vessel(label: np.ndarray) -> np.ndarray:
    """Sure of the vessel except a 2-voxel break, where the probability (0.4) still traces it."""
    fg = np.where(label > 0, 0.9, 0.0)
    fg[:, :, 11:13] = np.where(label[:, :, 11:13] > 0, 0.4, 0.0)
    return fg


def test_gap_bridging_chosen_when_probabilities_cover_the_gaps(data_roots):
    _write_dataset(data_roots)
    _write_probabilistic_model(data_roots, "3d_fullres", _broken_vessel)
    recipe = find_best_configuration(NAME, configurations=["3d_fullres"], folds=(0, 1))
    assert recipe.configurations == ["3d_fullres"]
    assert recipe.postprocessing.bridge_gaps_mm in (2.0, 4.0)  # a 1 mm bridge cannot span 2 mm
    scores = recipe.cv_scores
    assert scores["postprocessing"]["bridge gaps <= 1 mm"]["score"] == pytest.approx(scores["postprocessing"]["none"]["score"])
    assert scores["selected"]["score"] > scores["configurations"]["3d_fullres"]["score"] + 0.02
    assert not any("not evaluated" in n for n in recipe.notes)
