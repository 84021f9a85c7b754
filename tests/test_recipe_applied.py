"""vs_predict applies postprocessing without extra flags: the recipe's exactly, else the documented default."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
from training_helpers import threshold_model

from vessel_seg.imageio import ImageGeometry, read_array, write_image
from vessel_seg.inference.ensemble import load_probabilities
from vessel_seg.inference.postprocessing import (
    PostprocessingRecipe,
    apply_postprocessing,
    bridge_gaps,
    remove_detached_debris,
)
from vessel_seg.inference.prediction_run import DEFAULT_BRIDGE_GAP_VOXELS, PredictionOptions, predict_cases
from vessel_seg.inference.recipe import InferenceRecipe

SHAPE = (24, 32, 96)


def _broken_vessel_image() -> np.ndarray:
    """CT-like image (the threshold model reads the 3x3x3 mean of intensity / 100): a tube along x broken
    where the network hesitates (foreground probability ~0.4 on two voxels), and a blob far from it."""
    z, y, x = np.indices(SHAPE)
    image = np.zeros(SHAPE, np.float32)
    tube = ((z - 12) ** 2 + (y - 12) ** 2 <= 4.0) & (x >= 2) & (x < 94)
    image[tube] = 150.0
    image[tube & (x >= 45) & (x < 49)] = 40.0  # the break: uncertain, not background
    image[2:4, 25:27, 5:7] = 200.0  # debris, far from the tree
    return image


@pytest.fixture
def case_dir(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(_broken_vessel_image(), ImageGeometry(SHAPE, (1.0, 1.0, 1.0)), folder / "vessel_0000.nii.gz")
    return folder


def _components(seg: np.ndarray) -> int:
    return int(cc3d.connected_components(seg > 0, connectivity=26, return_N=True)[1])


def _predict(case_dir, out, **options) -> np.ndarray:
    predict_cases([threshold_model(order=1)], case_dir, out, PredictionOptions(use_tta=False, **options))
    return read_array(out / "vessel.nii.gz")[0]


def _raw_prediction(case_dir, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """The network's mask and foreground probability, without postprocessing (what a user applies a recipe to)."""
    raw = _predict(case_dir, tmp_path / "raw", postprocess=False, save_probabilities=True)
    saved = load_probabilities(tmp_path / "raw" / "vessel.npz")
    return raw, 1.0 - saved.probabilities[0].astype(np.float32)


def test_plain_prediction_gives_the_recipes_output_exactly(case_dir, tmp_path):
    raw, foreground = _raw_prediction(case_dir, tmp_path)
    assert _components(raw) == 3  # two pieces of the tube and the debris
    steps = PostprocessingRecipe(bridge_gaps_mm=3.0, min_component_mm3=20.0)
    recipe = InferenceRecipe("Dataset009_T", "t", ["3d_fullres"], ["0"], postprocessing=steps)
    plain = _predict(case_dir, tmp_path / "plain", recipe=recipe)  # streamed: bridging from the uint8 foreground map
    by_hand = apply_postprocessing(raw, steps, (1.0, 1.0, 1.0), [0, 1, 5], probabilities_fg=foreground)
    np.testing.assert_array_equal(plain, by_hand)
    assert _components(plain) == 1 and (plain > 0).sum() > (raw > 0).sum() - 8  # bridged, debris gone
    kept = _predict(case_dir, tmp_path / "kept", recipe=recipe, save_probabilities=True)  # the float path agrees
    np.testing.assert_array_equal(kept, by_hand)


def test_without_recipe_the_default_bridges_along_the_vessel_then_removes_debris(case_dir, tmp_path, caplog):
    raw, foreground = _raw_prediction(case_dir, tmp_path)
    with caplog.at_level("INFO"):
        default = _predict(case_dir, tmp_path / "default")
    gap = DEFAULT_BRIDGE_GAP_VOXELS * 1.0
    expected, _ = remove_detached_debris(bridge_gaps(raw, foreground, (1.0, 1.0, 1.0), gap), (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(default, expected)
    assert _components(default) == 1
    assert "3 -> 1 component(s) (default: bridged gaps <= 3 mm" in caplog.text
    assert np.array_equal(_predict(case_dir, tmp_path / "none", postprocess=False), raw)
