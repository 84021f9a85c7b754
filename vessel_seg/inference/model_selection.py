"""Choose the configuration and postprocessing of a dataset from its cross-validation predictions.

:func:`find_best_configuration` (``vs_find_best_configuration``):

1. **Collect** every model folder ``VS_RESULTS/DatasetNNN_Name/<trainer>__<plans>__<configuration>``
   whose requested folds all hold validation predictions (``fold_K/validation/CASE<file_ending>``,
   written by the trainer in the original geometry), and note whether every case also has its
   class probabilities ``CASE.npz`` (see :mod:`vessel_seg.inference.ensemble`).
2. **Score** each configuration over the validation cases of all its folds against
   ``VS_RAW/DatasetNNN_Name/labelsTr``: Dice and clDice per case and label (definitions in
   :mod:`vessel_seg.evaluation.metrics`), averaged over labels, then over cases. The ranking
   score is ``mean(Dice, clDice)``, the same trade-off the trainer uses to pick its best
   checkpoint: Dice alone favours thick vessels, clDice rewards connected centrelines.
3. **Ensembles**: every pair of configurations that both have probabilities for all cases is
   scored like a configuration, its labels being the arg-max of the mean probabilities (as
   ``vs_ensemble`` makes them); the best configuration or ensemble wins. Pairs only, as in
   nnU-Net: larger ensembles rarely help and cost one more model at inference.
4. **Postprocessing** is tried on the winner's predictions, greedily as in nnU-Net and in the
   order :func:`apply_postprocessing` runs the steps: gap bridging when probabilities exist (the
   best of several gap widths, see :func:`bridge_gap_candidates`), kept if it raises the mean
   score by more than :data:`MIN_IMPROVEMENT`; then debris removal on top (the best of several
   minimum volumes: a few fixed mm³ values and one derived from the fingerprint's small-vessel
   radius, see :func:`debris_volume_candidates`), kept under the same rule; then keep-largest.
5. **Write** ``inference_recipe.json`` and a Markdown summary ``inference_recipe.md`` next to it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.atomic import write_text_atomic
from vessel_seg.imageio import image_files
from vessel_seg.inference.ensemble import PROBABILITY_SUFFIX
from vessel_seg.inference.postprocessing import PostprocessingRecipe
from vessel_seg.inference.recipe import SUMMARY_FILE, InferenceRecipe, recipe_path, save_recipe
from vessel_seg.inference.selection_scoring import (  # noqa: F401  (re-exported for callers and tests)
    BRIDGE_GAP_RADIUS_MULTIPLES,
    FIXED_BRIDGE_GAPS_MM,
    FIXED_DEBRIS_MM3,
    MIN_IMPROVEMENT,
    CasePrediction,
    Scores,
    bridge_gap_candidates,
    debris_volume_candidates,
    ranking_score,
    score_predictions,
)
from vessel_seg.model_folder import DEFAULT_TRAINER, fold_name, parse_fold
from vessel_seg.paths import preprocessed_root, raw_root, resolve_dataset, results_root
from vessel_seg.planners.fingerprint import DatasetFingerprint

log = logging.getLogger(__name__)



def _validation_cases(
    model_dir: Path, folds: Sequence[str], refs: dict[str, Path]
) -> tuple[dict[str, CasePrediction], str | None]:
    """Case id -> prediction for every validation case of ``folds``, or a reason why there are none.

    The probability files are attached only when every case has one (all or nothing).
    """
    pairs: dict[str, tuple[Path, Path]] = {}
    for fold in folds:
        folder = model_dir / fold_name(fold) / "validation"
        predictions = image_files(folder) if folder.is_dir() else {}
        if not predictions:
            return {}, f"{folder} holds no validation predictions"
        unknown = sorted(set(predictions) - set(refs))
        if unknown:
            return {}, f"{folder}: no reference in labelsTr for case(s) {', '.join(unknown[:5])}"
        pairs.update((case, (refs[case], path)) for case, path in sorted(predictions.items()))
    npz = {case: mask.parent / f"{case}{PROBABILITY_SUFFIX}" for case, (_, mask) in pairs.items()}
    complete = all(path.is_file() for path in npz.values())
    return {c: CasePrediction(ref, mask, (npz[c],) if complete else ()) for c, (ref, mask) in pairs.items()}, None


def _validated_folds(model_dir: Path) -> list[str]:
    """Folds of a model folder that hold validation predictions (``fold_K/validation/*``), as ``-f`` values."""
    folds = []
    for folder in sorted(model_dir.glob("fold_*")):
        if (folder / "validation").is_dir() and image_files(folder / "validation"):
            folds.append(folder.name.removeprefix("fold_"))
    return folds


def _fold_hint(model_dirs: Sequence[Path]) -> str:
    """``, or choose validated folds: -f 0 1`` naming the folds every model folder has validated ('' if none)."""
    if not model_dirs:
        return ""
    common = set(_validated_folds(model_dirs[0]))
    for model_dir in model_dirs[1:]:
        common &= set(_validated_folds(model_dir))
    if not common:
        return ""
    return f", or rank what is validated: -f {' '.join(sorted(common, key=lambda f: (not f.isdigit(), f)))}"


def _has_probabilities(cases: dict[str, CasePrediction]) -> bool:
    return all(case.probabilities for case in cases.values())


def _ensemble_cases(members: Sequence[dict[str, CasePrediction]]) -> dict[str, CasePrediction] | None:
    """The cases of an ensemble of configurations, or ``None`` when they were validated on different cases."""
    if any(set(m) != set(members[0]) for m in members[1:]):
        return None
    return {c: CasePrediction(case.reference, None, tuple(m[c].probabilities[0] for m in members))
            for c, case in members[0].items()}


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
    cases: list[CasePrediction], labels: list[int], fingerprint: DatasetFingerprint | None, num_workers: int,
    try_bridging: bool,
) -> tuple[PostprocessingRecipe, dict]:
    """Greedy choice (gap bridging, then debris removal, then keep-largest); the recipe and the scores tried.

    Each step tries its candidates on top of the steps kept so far and is kept when its best
    candidate beats the recipe so far by more than :data:`MIN_IMPROVEMENT`.
    """
    stages: list[tuple[str, list]] = [
        ("min_component_mm3", debris_volume_candidates(fingerprint)), ("keep_largest", [True])
    ]
    if try_bridging:
        stages.insert(0, ("bridge_gaps_mm", bridge_gap_candidates(fingerprint)))
    chosen = PostprocessingRecipe()
    scores: dict[str, Scores] = {}
    for step, values in stages:
        candidates = [replace(chosen, **{step: value}) for value in values]
        todo = [c for c in [chosen, *candidates] if c.describe() not in scores]
        scores.update(zip((c.describe() for c in todo), score_predictions(cases, labels, todo, num_workers), strict=True))
        best = max(candidates, key=lambda r: scores[r.describe()].score)
        if scores[best.describe()].score > scores[chosen.describe()].score + MIN_IMPROVEMENT:
            chosen = best
    return chosen, {key: value.as_dict() for key, value in scores.items()}


def _score_plain(key: str, cases: list[CasePrediction], labels: list[int], num_workers: int) -> Scores:
    """Scores of a configuration or ensemble without postprocessing."""
    scores = score_predictions(cases, labels, [PostprocessingRecipe()], num_workers)[0]
    log.info("%s: Dice %.4f, clDice %.4f over %d cases", key, scores.dice, scores.cldice, len(cases))
    return scores


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
        "## Configurations and ensembles (no postprocessing)",
        "",
        *_table(scores.get("configurations", {}), "configuration"),
        "",
        "## Postprocessing on the selected configuration(s)",
        "",
        *_table(scores.get("postprocessing", {}), "steps"),
        "",
    ]
    if recipe.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in recipe.notes), ""]
    return "\n".join(lines)


def _score_configurations(
    trained: list[tuple[str, Path]], fold_ids: list[str], refs: dict, labels: list[int], num_workers: int, notes: list[str],
) -> tuple[dict[str, Scores], dict[str, dict[str, CasePrediction]]]:
    """CV scores and validation cases of every trained configuration validated on all ``fold_ids`` (others noted)."""
    config_scores: dict[str, Scores] = {}
    config_cases: dict[str, dict[str, CasePrediction]] = {}
    for configuration, model_dir in trained:
        cases, problem = _validation_cases(model_dir, fold_ids, refs)
        if problem:
            notes.append(f"configuration {configuration}: skipped, {problem}")
            log.warning("configuration %s skipped: %s", configuration, problem)
            continue
        config_scores[configuration] = _score_plain(configuration, list(cases.values()), labels, num_workers)
        config_cases[configuration] = cases
    return config_scores, config_cases


def _score_ensembles(config_scores: dict, config_cases: dict, labels: list[int], num_workers: int, notes: list[str]) -> None:
    """Add the pairwise ensembles (``"a+b"``) of configurations with validation probabilities to both maps."""
    with_probs = [c for c in config_cases if _has_probabilities(config_cases[c])]
    if len(config_scores) > 1 and len(with_probs) < len(config_scores):
        without = ", ".join(c for c in config_cases if c not in with_probs)
        notes.append(
            f"ensembles not evaluated for {without}: no validation probabilities (CASE.npz) for every case; "
            f"train without --no-validation-probabilities"
        )
    for members in itertools.combinations(with_probs, 2):
        cases = _ensemble_cases([config_cases[m] for m in members])
        if cases is None:
            notes.append(f"ensemble {' + '.join(members)} not evaluated: validated on different cases")
            continue
        key = "+".join(members)
        config_scores[key] = _score_plain(key, list(cases.values()), labels, num_workers)
        config_cases[key] = cases


def _postprocessing_of_best(name: str, best: str, model_dir: Path, cases: dict, labels: list[int], num_workers: int,
                            notes: list[str]):
    """The postprocessing chosen on the best configuration's validation cases, and the scores of every candidate."""
    fingerprint = _load_fingerprint(name, model_dir)
    if fingerprint is None:
        notes.append("no fingerprint found: debris removal and gap bridging tried with fixed sizes only")
    try_bridging = _has_probabilities(cases) or "+" in best
    if not try_bridging:
        notes.append(f"gap bridging not evaluated: {best} has no validation probabilities (CASE.npz) for every case")
    return _choose_postprocessing(list(cases.values()), labels, fingerprint, num_workers, try_bridging)


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
        ``{"dice", "cldice", "score", "num_cases"}``; an ensemble is named ``"a+b"``. When an
        ensemble wins, ``configurations`` lists its members.

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
    config_scores, config_cases = _score_configurations(trained, fold_ids, refs, labels, num_workers, notes)
    if not config_scores:
        raise VesselSegError(
            f"{results_root() / name}: no configuration has validation predictions for folds {', '.join(fold_ids)} "
            f"({notes[-1] if notes else 'nothing trained'}); finish training those folds first"
            + _fold_hint([d for _, d in trained])
        )
    _score_ensembles(config_scores, config_cases, labels, num_workers, notes)
    best = max(config_scores, key=lambda c: config_scores[c].score)
    members = best.split("+")
    postprocessing, post_scores = _postprocessing_of_best(name, best, dict(trained)[members[0]], config_cases[best],
                                                          labels, num_workers, notes)
    recipe = InferenceRecipe(
        dataset_name=name,
        plans_name=plans_name,
        configurations=members,
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
