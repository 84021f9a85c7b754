"""Finding trained models under ``VS_RESULTS`` and choosing which to predict with.

Order of choice when no configuration is named: the dataset's ``inference_recipe.json`` (written
by ``vs_find_best_configuration``), else the trained configuration with the highest mean
validation Dice over its folds (``fold_K/validation/summary.json``, ``foreground_mean.dice``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vessel_seg.errors import VesselSegError
from vessel_seg.model_folder import DEFAULT_TRAINER, model_dir
from vessel_seg.paths import DATASET_NAME_RE, resolve_dataset, results_root

log = logging.getLogger(__name__)

RECIPE_FILE = "inference_recipe.json"


@dataclass
class ModelChoice:
    """Model folders to ensemble, the folds to use (``None``: all trained) and the recipe, if any."""

    model_dirs: list[Path]
    folds: list[str] | None = None
    recipe: Any = None


def trained_model_dirs(dataset_name: str) -> list[Path]:
    """``<trainer>__<plans>__<configuration>`` folders of a dataset with plans and a checkpoint."""
    root = results_root() / dataset_name
    if not root.is_dir():
        return []
    return sorted(
        d for d in root.iterdir()
        if d.is_dir() and d.name.count("__") == 2 and (d / "plans.json").is_file() and any(d.glob("fold_*/checkpoint_*.pt"))
    )


def resolve_prediction_dataset(dataset: str | int | None, allow_none: bool = False) -> str | None:
    """The dataset to predict with; without ``dataset`` the single one under ``VS_RESULTS`` with a trained model.

    With ``allow_none``, no trained model at all gives None (the caller falls back to the built-in model).
    """
    if dataset is not None:
        return resolve_dataset(dataset)
    root = results_root()
    names = sorted(
        d.name for d in (root.iterdir() if root.is_dir() else []) if DATASET_NAME_RE.match(d.name) and trained_model_dirs(d.name)
    )
    if len(names) == 1:
        return names[0]
    if not names and allow_none:
        return None
    if not names:
        raise VesselSegError(f"{root}: no trained model found; train one with vs_train or import one with vs_import_model")
    raise VesselSegError(f"several datasets have trained models ({', '.join(names)}); choose one with -d")


def mean_validation_dice(folder: Path) -> float | None:
    """Mean over folds of ``foreground_mean.dice`` in ``fold_*/validation/summary.json`` (None if none)."""
    values = []
    for summary in sorted(folder.glob("fold_*/validation/summary.json")):
        try:
            dice = json.loads(summary.read_text())["foreground_mean"]["dice"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s: unreadable validation summary, ignored", summary)
            continue
        if isinstance(dice, (int, float)) and math.isfinite(dice):
            values.append(float(dice))
    return sum(values) / len(values) if values else None


def _parts(folder: Path) -> tuple[str, str, str]:
    trainer, plans, config = folder.name.split("__")
    return trainer, plans, config


def _load_recipe(dataset_name: str) -> Any:
    path = results_root() / dataset_name / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        from vessel_seg.inference.recipe import InferenceRecipe
    except ImportError as exc:
        raise VesselSegError(f"{path}: inference recipes are not supported by this installation; use -c") from exc
    return InferenceRecipe.load(path)


def choose_models(
    dataset_name: str, configuration: str | None = None, plans_name: str | None = None, trainer: str | None = None
) -> ModelChoice:
    """Pick the model folder(s) to predict with (see the module docstring for the order)."""
    candidates = [
        d for d in trained_model_dirs(dataset_name)
        if (plans_name is None or _parts(d)[1] == plans_name) and (trainer is None or _parts(d)[0] == trainer)
    ]
    listing = ", ".join(d.name for d in candidates) or "none"
    if configuration is not None:
        chosen = [d for d in candidates if _parts(d)[2] == configuration]
        if len(chosen) > 1:
            chosen = [d for d in chosen if _parts(d)[0] == DEFAULT_TRAINER] or chosen
        if not chosen:
            raise VesselSegError(
                f"{results_root() / dataset_name}: no trained {configuration} model (trained: {listing}); "
                f"train it with vs_train or choose another -c"
            )
        if len(chosen) > 1:
            raise VesselSegError(f"several {configuration} models ({', '.join(d.name for d in chosen)}); choose with -pl")
        return ModelChoice([chosen[0]])
    recipe = _load_recipe(dataset_name)
    if recipe is not None:
        dirs = [model_dir(dataset_name, c, recipe.plans_name, recipe.trainer) for c in recipe.configurations]
        log.info("using the inference recipe of %s: %s", dataset_name, ", ".join(recipe.configurations))
        return ModelChoice(dirs, [str(f) for f in recipe.folds] or None, recipe)
    if not candidates:
        raise VesselSegError(f"{results_root() / dataset_name}: no trained model; train one with vs_train")
    scores = {d: mean_validation_dice(d) for d in candidates}
    scored = [d for d in candidates if scores[d] is not None]
    if not scored:
        if len(candidates) == 1:
            return ModelChoice(candidates)
        raise VesselSegError(f"no validation results to choose among {listing}; choose a configuration with -c")
    best = max(scored, key=lambda d: scores[d])
    log.info("using %s (mean validation Dice %.4f)", best.name, scores[best])
    return ModelChoice([best])
