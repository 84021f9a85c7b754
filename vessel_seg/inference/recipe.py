"""How to predict a dataset: the :class:`InferenceRecipe` that ``vs_find_best_configuration`` writes.

Stored as ``VS_RESULTS/DatasetNNN_Name/inference_recipe.json`` and read by ``vs_predict`` when the
user names no configuration. The file is parsed as data only (JSON into dataclasses, nothing is
executed or unpickled) and checked field by field, so a hand-edited file fails with one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vessel_seg.errors import VesselSegError
from vessel_seg.inference.postprocessing import PostprocessingRecipe
from vessel_seg.model_folder import DEFAULT_TRAINER
from vessel_seg.paths import results_root
from vessel_seg.serialization import from_dict, read_json, write_json_atomic

RECIPE_FILE = "inference_recipe.json"
SUMMARY_FILE = "inference_recipe.md"


@dataclass
class InferenceRecipe:
    """The chosen model(s) and postprocessing of a dataset.

    Attributes
    ----------
    dataset_name : str
        ``DatasetNNN_Name``.
    plans_name : str
        Plans identifier of the model folders (``vs_plans``).
    configurations : list of str
        One configuration means a single model; several mean an ensemble that averages their
        probabilities.
    folds : list of str
        Folds whose models are averaged (``"0"``..., or ``"all"``).
    trainer : str
        Trainer name in the model folder (``<trainer>__<plans>__<configuration>``).
    postprocessing : PostprocessingRecipe
        Steps applied to the predicted label map.
    cv_scores : dict
        Cross-validation scores behind the choice (see ``model_selection.find_best_configuration``).
    notes : list of str
        What was skipped and why, in words.
    """

    dataset_name: str
    plans_name: str
    configurations: list[str]
    folds: list[str]
    trainer: str = DEFAULT_TRAINER
    postprocessing: PostprocessingRecipe = field(default_factory=PostprocessingRecipe)
    cv_scores: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def save(self, path: str | Path | None = None) -> Path:
        """Write atomically to ``path`` (default :func:`recipe_path` of the dataset)."""
        return save_recipe(self, path)

    @classmethod
    def load(cls, dataset_or_path: str | Path) -> InferenceRecipe:
        """Read :func:`recipe_path` of a dataset name, or a JSON file path."""
        return load_recipe(dataset_or_path)


def recipe_path(dataset_name: str) -> Path:
    """``VS_RESULTS/<dataset_name>/inference_recipe.json``."""
    return results_root() / dataset_name / RECIPE_FILE


def save_recipe(recipe: InferenceRecipe, path: str | Path | None = None) -> Path:
    """Write ``recipe`` as JSON atomically; returns the path."""
    _validate(recipe, "recipe")
    return write_json_atomic(path if path is not None else recipe_path(recipe.dataset_name), recipe)


# Recipe names become parts of paths under VS_RESULTS: a name such as "../../x" would reach outside it.
NAME_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_\-.]{0,99}$")
FOLD_NAME_RE = re.compile(r"^(\d{1,3}|all)$")


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(NAME_RE.match(value)) and ".." not in value


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _validate(recipe: InferenceRecipe, source: str) -> None:
    """Raise :class:`VesselSegError` naming ``source`` on the first invalid field."""
    problems = []
    for name in ("dataset_name", "plans_name", "trainer"):
        if not _is_name(getattr(recipe, name)):
            problems.append(f"'{name}' must be a plain name (letters, digits, _ - .), not a path")
    if not _is_str_list(recipe.configurations) or not all(_is_name(c) for c in recipe.configurations):
        problems.append("'configurations' must be a non-empty list of configuration names")
    if not _is_str_list(recipe.folds) or not all(FOLD_NAME_RE.match(f) for f in recipe.folds):
        problems.append("'folds' must be a non-empty list of strings such as [\"0\", \"1\"] or [\"all\"]")
    post = recipe.postprocessing
    if not isinstance(post, PostprocessingRecipe):
        problems.append("'postprocessing' must be an object")
    else:
        for name in ("min_component_mm3", "bridge_gaps_mm"):
            value = getattr(post, name)
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0):
                problems.append(f"'postprocessing.{name}' must be null or a non-negative number")
        if not isinstance(post.keep_largest, bool):
            problems.append("'postprocessing.keep_largest' must be true or false")
    if not isinstance(recipe.cv_scores, dict):
        problems.append("'cv_scores' must be an object")
    if not isinstance(recipe.notes, list):
        problems.append("'notes' must be a list")
    if problems:
        raise VesselSegError(f"{source}: invalid inference recipe ({problems[0]}); rerun vs_find_best_configuration")


def load_recipe(dataset_or_path: str | Path) -> InferenceRecipe:
    """Read an inference recipe from a dataset name (``DatasetNNN_Name``) or a JSON file path.

    Raises :class:`VesselSegError` (one line) when the file is missing, not JSON or invalid.
    """
    text = str(dataset_or_path)
    path = Path(text) if text.endswith(".json") else recipe_path(text)
    if not path.is_file():
        raise VesselSegError(f"{path}: inference recipe not found; run vs_find_best_configuration first")
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VesselSegError(f"{path}: not valid JSON ({exc}); rerun vs_find_best_configuration") from exc
    if not isinstance(data, dict):
        raise VesselSegError(f"{path}: invalid inference recipe (must hold a JSON object); rerun vs_find_best_configuration")
    missing = [key for key in ("dataset_name", "plans_name", "configurations", "folds") if key not in data]
    if missing:
        raise VesselSegError(f"{path}: invalid inference recipe (missing {missing[0]!r}); rerun vs_find_best_configuration")
    try:
        recipe = from_dict(InferenceRecipe, data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise VesselSegError(f"{path}: invalid inference recipe ({exc}); rerun vs_find_best_configuration") from exc
    _validate(recipe, str(path))
    return recipe
