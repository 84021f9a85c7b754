"""Choose the configuration and postprocessing of a dataset from its cross-validation predictions.

:func:`find_best_configuration` (``vs_find_best_configuration``):

1. **Collect** every model folder ``VS_RESULTS/DatasetNNN_Name/<trainer>__<plans>__<configuration>``
   whose requested folds all hold validation predictions (``fold_K/validation/CASE<file_ending>``,
   written by the trainer in the original geometry).
2. **Score** each configuration over the validation cases of all its folds against
   ``VS_RAW/DatasetNNN_Name/labelsTr``: Dice and clDice per case and label (definitions in
   :mod:`vessel_seg.evaluation.metrics`), averaged over labels, then over cases. The ranking
   score is ``mean(Dice, clDice)``, the same trade-off the trainer uses to pick its best
   checkpoint: Dice alone favours thick vessels, clDice rewards connected centrelines.
3. **Ensembles** of configurations average probabilities, which the trainer does not save for
   its validation cases; they are therefore not evaluated, and a note in the recipe says so.
4. **Postprocessing** is tried on the best configuration's predictions, greedily as in nnU-Net:
   first debris removal (the best of several minimum volumes: a few fixed mm³ values and one
   derived from the fingerprint's small-vessel radius, see :func:`debris_volume_candidates`),
   kept if it raises the mean score by more than :data:`MIN_IMPROVEMENT`; then keep-largest on top,
   kept under the same rule. Gap bridging needs probabilities and is not evaluated either.
5. **Write** ``inference_recipe.json`` and a Markdown summary ``inference_recipe.md`` next to it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.atomic import write_text_atomic
from vessel_seg.evaluation.evaluate import image_files, load_pair
from vessel_seg.evaluation.metrics_common import spatial_view, union_bbox
from vessel_seg.evaluation.metrics_overlap import dice
from vessel_seg.evaluation.metrics_topology import cldice_from_skeletons, skeleton
from vessel_seg.inference.postprocessing import PostprocessingRecipe, apply_postprocessing
from vessel_seg.inference.recipe import SUMMARY_FILE, InferenceRecipe, recipe_path, save_recipe
from vessel_seg.model_folder import DEFAULT_TRAINER, fold_name, parse_fold
from vessel_seg.paths import preprocessed_root, raw_root, resolve_dataset, results_root
from vessel_seg.planners.fingerprint import DatasetFingerprint

log = logging.getLogger(__name__)

FIXED_DEBRIS_MM3: tuple[float, ...] = (1.0, 10.0, 100.0)
MIN_IMPROVEMENT = 1e-4  # a step must raise mean(Dice, clDice) by more than this to be kept
_SMALL_VESSEL_LENGTH_IN_RADII = 10.0  # a small-vessel segment five diameters long


def ranking_score(dice_value: float, cldice_value: float) -> float:
    """``mean(Dice, clDice)``: what configurations and postprocessing steps are ranked by."""
    return 0.5 * (dice_value + cldice_value)


@dataclass
class Scores:
    """Mean Dice and clDice over cases (each the mean over labels) and the ranking score."""

    dice: float
    cldice: float
    num_cases: int

    @property
    def score(self) -> float:
        return ranking_score(self.dice, self.cldice)

    def as_dict(self) -> dict:
        return {"dice": self.dice, "cldice": self.cldice, "score": self.score, "num_cases": self.num_cases}


def debris_volume_candidates(fingerprint: DatasetFingerprint | None) -> list[float]:
    """Minimum component volumes (mm³) to try for debris removal.

    The fixed :data:`FIXED_DEBRIS_MM3`, plus, when a fingerprint with vessel radii is available,
    the volume of a typical small-vessel segment: a cylinder of the 10th-percentile radius ``r``
    and length ``10 r`` (five diameters), ``V = 10 π r³``.
    """
    values = set(FIXED_DEBRIS_MM3)
    if fingerprint is not None and fingerprint.vessel_radius_mm.num_samples > 0:
        radius = fingerprint.vessel_radius_mm.p10
        if radius > 0:
            values.add(round(_SMALL_VESSEL_LENGTH_IN_RADII * math.pi * radius**3, 3))
    return sorted(values)


def _case_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """Dice and clDice of one case, each the mean over ``labels``."""
    dices, cldices = [], []
    for label in labels:
        p, r, _ = spatial_view(pred == label, ref == label, spacing)
        box = union_bbox([p, r])
        if box is None:  # both empty: perfect by convention
            dices.append(1.0)
            cldices.append(1.0)
            continue
        pc, rc = p[box], r[box]
        dices.append(dice(pc, rc))
        cldices.append(cldice_from_skeletons(pc, rc, skeleton(pc), skeleton(rc)))
    return float(np.mean(dices)), float(np.mean(cldices))


def _score_job(job: tuple) -> list[tuple[float, float]]:
    """Score one case under each postprocessing candidate; identical outputs are scored once."""
    ref_path, pred_path, labels, candidates = job
    ref, pred, spacing, _ = load_pair(Path(ref_path), Path(pred_path))
    seen: dict[bytes, tuple[float, float]] = {}
    results = []
    for recipe in candidates:
        out = apply_postprocessing(pred, recipe, spacing, labels)
        key = hashlib.blake2b(np.ascontiguousarray(out).tobytes(), digest_size=16).digest()
        if key not in seen:
            seen[key] = _case_scores(out, ref, spacing, labels)
        results.append(seen[key])
    return results


def score_predictions(
    pairs: Sequence[tuple[Path, Path]],
    labels: Sequence[int],
    candidates: Sequence[PostprocessingRecipe],
    num_workers: int = 1,
) -> list[Scores]:
    """Mean scores of ``(reference, prediction)`` pairs under each postprocessing candidate."""
    jobs = [(ref, pred, list(labels), list(candidates)) for ref, pred in pairs]
    if num_workers <= 1 or len(jobs) <= 1:
        per_case = [_score_job(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            per_case = list(pool.map(_score_job, jobs))
    values = np.asarray(per_case, dtype=np.float64)  # (cases, candidates, 2)
    return [Scores(float(values[:, i, 0].mean()), float(values[:, i, 1].mean()), len(jobs)) for i in range(len(candidates))]


def _validation_pairs(model_dir: Path, folds: Sequence[str], refs: dict[str, Path]) -> tuple[list[tuple[Path, Path]], str | None]:
    """``(reference, prediction)`` for every validation case of ``folds``, or a reason why not."""
    pairs = []
    for fold in folds:
        folder = model_dir / fold_name(fold) / "validation"
        predictions = image_files(folder) if folder.is_dir() else {}
        if not predictions:
            return [], f"{folder} holds no validation predictions"
        unknown = sorted(set(predictions) - set(refs))
        if unknown:
            return [], f"{folder}: no reference in labelsTr for case(s) {', '.join(unknown[:5])}"
        pairs.extend((refs[case], path) for case, path in sorted(predictions.items()))
    return pairs, None


def _trained_configurations(
    name: str, plans_name: str, trainer: str, configurations: Sequence[str] | None
) -> list[tuple[str, Path]]:
    prefix = f"{trainer}__{plans_name}__"
    folder = results_root() / name
    found = {}
    if folder.is_dir():
        found = {p.name[len(prefix):]: p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.startswith(prefix)}
    if configurations is not None:
        found = {c: found[c] for c in configurations if c in found}
    if not found:
        wanted = f" among {', '.join(configurations)}" if configurations else ""
        raise VesselSegError(
            f"{folder}: no trained model folder {prefix}<configuration>{wanted}; train one first "
            f"(vs_train {name} 3d_fullres FOLD for each fold)"
        )
    return sorted(found.items())


def _label_values(name: str, model_dirs: Sequence[Path]) -> list[int]:
    for path in [raw_root() / name / "dataset.json", *(d / "dataset.json" for d in model_dirs)]:
        if path.is_file():
            return DatasetInfo.load(path).foreground_labels
    raise VesselSegError(f"{raw_root() / name / 'dataset.json'}: not found; the raw dataset is needed for its labels")


def _load_fingerprint(name: str, model_dir: Path) -> DatasetFingerprint | None:
    for path in (model_dir / "fingerprint.json", preprocessed_root() / name / "fingerprint.json"):
        if path.is_file():
            return DatasetFingerprint.load(path)
    return None


def _choose_postprocessing(
    pairs: list[tuple[Path, Path]], labels: list[int], fingerprint: DatasetFingerprint | None, num_workers: int
) -> tuple[PostprocessingRecipe, dict]:
    """Greedy choice (debris removal, then keep-largest); returns the recipe and the scores tried."""
    volumes = debris_volume_candidates(fingerprint)
    none = PostprocessingRecipe()
    debris = [PostprocessingRecipe(min_component_mm3=v) for v in volumes]
    largest = [PostprocessingRecipe(min_component_mm3=r.min_component_mm3, keep_largest=True) for r in [none, *debris]]
    candidates = [none, *debris, *largest]
    scores = dict(zip((c.describe() for c in candidates), score_predictions(pairs, labels, candidates, num_workers), strict=True))
    chosen = none
    best_debris = max(debris, key=lambda r: scores[r.describe()].score)
    if scores[best_debris.describe()].score > scores[none.describe()].score + MIN_IMPROVEMENT:
        chosen = best_debris
    with_largest = PostprocessingRecipe(min_component_mm3=chosen.min_component_mm3, keep_largest=True)
    if scores[with_largest.describe()].score > scores[chosen.describe()].score + MIN_IMPROVEMENT:
        chosen = with_largest
    return chosen, {key: value.as_dict() for key, value in scores.items()}


def _table(rows: dict[str, dict], first: str) -> list[str]:
    lines = [f"| {first} | Dice | clDice | score | cases |", "|---|---:|---:|---:|---:|"]
    for key, v in rows.items():
        lines.append(f"| {key} | {v['dice']:.4f} | {v['cldice']:.4f} | {v['score']:.4f} | {v['num_cases']} |")
    return lines


def format_summary(recipe: InferenceRecipe) -> str:
    """Markdown summary of a recipe made by :func:`find_best_configuration`."""
    scores = recipe.cv_scores
    lines = [
        f"# Inference recipe for {recipe.dataset_name}",
        "",
        f"- configuration(s): **{' + '.join(recipe.configurations)}** ({recipe.trainer}, {recipe.plans_name})",
        f"- folds: {', '.join(recipe.folds)}",
        f"- postprocessing: **{recipe.postprocessing.describe()}**",
        "",
        "Ranking score = mean(Dice, clDice) over the cross-validation cases (each case the mean over labels).",
        "",
        "## Configurations (no postprocessing)",
        "",
        *_table(scores.get("configurations", {}), "configuration"),
        "",
        "## Postprocessing on the best configuration",
        "",
        *_table(scores.get("postprocessing", {}), "steps"),
        "",
    ]
    if recipe.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in recipe.notes), ""]
    return "\n".join(lines)


def find_best_configuration(
    dataset: str | int,
    plans_name: str = "vs_plans",
    trainer: str = DEFAULT_TRAINER,
    configurations: Sequence[str] | None = None,
    folds: Sequence[int | str] = (0, 1, 2, 3, 4),
    num_workers: int = 1,
) -> InferenceRecipe:
    """Pick the best trained configuration and postprocessing of ``dataset`` by cross-validation.

    Parameters
    ----------
    dataset : str or int
        Dataset id or name (``501`` or ``Dataset501_Synthetic``).
    plans_name, trainer : str
        Select the model folders ``<trainer>__<plans_name>__<configuration>``.
    configurations : sequence of str, optional
        Only consider these (default: every trained configuration).
    folds : sequence of int or str
        Folds whose validation predictions must all exist.
    num_workers : int
        Worker processes for scoring (cases are independent).

    Returns
    -------
    InferenceRecipe
        Also written to ``VS_RESULTS/<dataset>/inference_recipe.json``, with a Markdown summary
        ``inference_recipe.md`` beside it. ``cv_scores`` holds ``{"configurations": {name: scores},
        "postprocessing": {step description: scores}, "selected": scores}``, each scores entry
        ``{"dice", "cldice", "score", "num_cases"}``.

    Raises
    ------
    VesselSegError
        When nothing is trained, no configuration has validation predictions for every fold, or
        the reference labels are missing.
    """
    name = resolve_dataset(dataset)
    fold_ids = [str(parse_fold(f)) for f in folds]
    if not fold_ids:
        raise VesselSegError("no folds given: name at least one fold (e.g. -f 0 1 2 3 4)")
    refs_dir = raw_root() / name / "labelsTr"
    refs = image_files(refs_dir)
    trained = _trained_configurations(name, plans_name, trainer, configurations)
    notes: list[str] = []
    if configurations is not None:
        missing = sorted(set(configurations) - {c for c, _ in trained})
        notes += [f"configuration {c}: no model folder, skipped" for c in missing]
    labels = _label_values(name, [d for _, d in trained])
    config_scores: dict[str, Scores] = {}
    config_pairs: dict[str, list[tuple[Path, Path]]] = {}
    for configuration, model_dir in trained:
        pairs, problem = _validation_pairs(model_dir, fold_ids, refs)
        if problem:
            notes.append(f"configuration {configuration}: skipped, {problem}")
            log.warning("configuration %s skipped: %s", configuration, problem)
            continue
        config_scores[configuration] = score_predictions(pairs, labels, [PostprocessingRecipe()], num_workers)[0]
        config_pairs[configuration] = pairs
        log.info("%s: Dice %.4f, clDice %.4f over %d cases", configuration, config_scores[configuration].dice,
                 config_scores[configuration].cldice, len(pairs))
    if not config_scores:
        raise VesselSegError(
            f"{results_root() / name}: no configuration has validation predictions for folds {', '.join(fold_ids)} "
            f"({notes[-1] if notes else 'nothing trained'}); finish training those folds first"
        )
    if len(config_scores) > 1:
        notes.append(
            "ensembles not evaluated: they average probabilities, and the validation probabilities are not saved"
        )
    best = max(config_scores, key=lambda c: config_scores[c].score)
    fingerprint = _load_fingerprint(name, dict(trained)[best])
    if fingerprint is None:
        notes.append("no fingerprint found: debris removal tried with fixed volumes only")
    postprocessing, post_scores = _choose_postprocessing(config_pairs[best], labels, fingerprint, num_workers)
    notes.append("gap bridging not evaluated: it needs probabilities, which are not saved for validation cases")
    recipe = InferenceRecipe(
        dataset_name=name,
        plans_name=plans_name,
        configurations=[best],
        folds=fold_ids,
        trainer=trainer,
        postprocessing=postprocessing,
        cv_scores={
            "configurations": {c: s.as_dict() for c, s in config_scores.items()},
            "postprocessing": post_scores,
            "selected": post_scores[postprocessing.describe()],
        },
        notes=notes,
    )
    path = save_recipe(recipe, recipe_path(name))
    write_text_atomic(path.with_name(SUMMARY_FILE), format_summary(recipe))
    log.info("best: %s with postprocessing %s; recipe written to %s", best, postprocessing.describe(), path)
    return recipe
