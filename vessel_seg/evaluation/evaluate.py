"""Evaluate a folder of predicted label maps against a folder of references (``vs_evaluate``).

Cases are matched by file name without its image extension (``case_001.nii.gz`` in the reference
folder pairs with ``case_001.mha`` in the prediction folder). Every reference needs a prediction;
extra predictions are ignored. Outputs: ``metrics.csv`` (one row per case and label) and
``summary.json`` (mean, population standard deviation and median per label and metric, plus the
mean over labels), both written atomically.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.atomic import write_csv_atomic
from vessel_seg.evaluation.metrics import METRIC_NAMES, binary_metrics, labels_present
from vessel_seg.imageio import image_files, read_label
from vessel_seg.serialization import write_json_atomic

logger = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"


@dataclass
class EvaluationResult:
    """Metrics of one prediction folder.

    Attributes:
        per_case: one row per case and label; columns ``case``, ``label`` and :data:`METRIC_NAMES`.
        summary: the content of ``summary.json`` (see :func:`summarize`).
        labels: the labels that were scored.
        csv_path, summary_path: where the reports were written, or ``None``.
        warnings: realignment warnings, one per affected prediction.
    """

    per_case: pd.DataFrame
    summary: dict
    labels: list[int]
    csv_path: Path | None = None
    summary_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def mean(self, metric: str, label: int | None = None) -> float:
        """Mean of ``metric`` over cases for ``label``, or over cases and labels when ``label`` is None."""
        if label is None:
            return float(self.summary["foreground_mean"][metric])
        return float(self.summary["metrics"][str(label)][metric]["mean"])


def match_cases(
    ref_dir: str | Path, pred_dir: str | Path, case_ids: Iterable[str] | None = None
) -> list[tuple[str, Path, Path]]:
    """``(case, reference file, prediction file)`` for every reference (or only ``case_ids``), sorted.

    Raises :class:`VesselSegError` when the reference folder holds no images or predictions are missing.
    """
    refs, preds = image_files(ref_dir), image_files(pred_dir)
    if case_ids is not None:
        wanted = set(case_ids)
        absent = sorted(wanted - set(refs))
        if absent:
            raise VesselSegError(f"{ref_dir}: no reference for case(s) {', '.join(absent[:10])}")
        refs = {case: path for case, path in refs.items() if case in wanted}
    if not refs:
        raise VesselSegError(f"{ref_dir}: no reference images found (supported: .nii.gz, .nii, .nrrd, .mha, ...)")
    missing = [case for case in refs if case not in preds]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise VesselSegError(f"{pred_dir}: missing predictions for {len(missing)} of {len(refs)} cases: {shown}")
    extra = sorted(set(preds) - set(refs))
    if extra:
        logger.info("%s: ignoring %d predictions without a reference (%s)", pred_dir, len(extra), ", ".join(extra[:5]))
    return [(case, refs[case], preds[case]) for case in sorted(refs)]


def load_pair(
    ref_path: Path, pred_path: Path, realign: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple, str | None]:
    """Read a reference and a prediction and check that they share one voxel grid.

    Parameters
    ----------
    realign : bool
        When the shapes agree but spacing/origin/direction differ (tools that drop the header),
        use the prediction's voxels on the reference's grid and return a warning instead of failing.

    Returns
    -------
    ref, pred : ndarray
        Label arrays ``(Z, Y, X)``.
    spacing : tuple of float
        The reference's spacing in mm.
    warning : str or None
        The realignment warning, if one was needed.
    """
    ref, ref_geo = read_label(ref_path)
    pred, pred_geo = read_label(pred_path)
    problem = ref_geo.mismatch(pred_geo)
    if problem is None:
        return ref, pred, ref_geo.spacing, None
    if realign and tuple(ref_geo.shape) == tuple(pred_geo.shape):
        warning = f"{pred_path}: geometry differs from {ref_path.name} only in metadata ({problem}); realigned to it"
        return ref, pred, ref_geo.spacing, warning
    hint = "resample the prediction into the reference's space" if "shape" in problem else "fix its header"
    raise VesselSegError(f"{pred_path}: geometry differs from reference {ref_path} ({problem}); {hint}")


def evaluate_case(
    ref_path: Path, pred_path: Path, labels: Sequence[int] | None = None, realign: bool = False
) -> tuple[list[int], dict[int, dict[str, float]], str | None]:
    """Metrics of one case.

    Returns the labels present in the reference, ``{label: metrics}`` for ``labels`` (default:
    every label present in the reference or the prediction) and the realignment warning, if any.
    """
    ref, pred, spacing, warning = load_pair(Path(ref_path), Path(pred_path), realign)
    ref_labels = labels_present(ref)
    wanted = list(labels) if labels is not None else sorted(set(ref_labels) | set(labels_present(pred)))
    metrics = {label: binary_metrics(pred == label, ref == label, spacing) for label in wanted}
    return ref_labels, metrics, warning


def _evaluate_job(job: tuple) -> tuple:
    case, ref_path, pred_path, labels, realign = job
    return (case, *evaluate_case(ref_path, pred_path, labels, realign))


def _run_jobs(jobs: list[tuple], num_workers: int) -> list[tuple]:
    if num_workers <= 1 or len(jobs) <= 1:
        return [_evaluate_job(job) for job in jobs]
    # spawn: the caller (e.g. the trainer) may hold OpenMP threads that a fork would copy half-way.
    with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=get_context("spawn")) as pool:
        return list(pool.map(_evaluate_job, jobs))


def _stats(values: pd.Series) -> dict[str, float]:
    array = values.to_numpy(dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "median": float(np.median(array))}


def summarize(per_case: pd.DataFrame, labels: Sequence[int]) -> dict:
    """``summary.json`` content from a per-case table.

    Returns ``{"num_cases", "labels", "metrics": {label: {metric: {mean, std, median}}},
    "foreground_mean": {metric: mean over labels of the per-label means}}``; ``std`` is the
    population standard deviation over cases.
    """
    metrics = {}
    for label in labels:
        rows = per_case[per_case["label"] == label]
        metrics[str(label)] = {name: _stats(rows[name]) for name in METRIC_NAMES}
    foreground = {
        name: float(np.mean([metrics[str(label)][name]["mean"] for label in labels])) for name in METRIC_NAMES
    }
    return {
        "num_cases": int(per_case["case"].nunique()),
        "labels": [int(label) for label in labels],
        "metrics": metrics,
        "foreground_mean": foreground,
    }


def evaluate_folders(
    ref_dir: str | Path,
    pred_dir: str | Path,
    out_dir: str | Path | None = None,
    labels: Iterable[int] | None = None,
    num_workers: int = 1,
    realign: bool = False,
    case_ids: Iterable[str] | None = None,
) -> EvaluationResult:
    """Score every reference in ``ref_dir`` against the same-named prediction in ``pred_dir``.

    Parameters
    ----------
    ref_dir, pred_dir : path
        Folders of label maps in any supported format.
    out_dir : path, optional
        Where to write ``metrics.csv`` and ``summary.json``; nothing is written when ``None``.
    labels : iterable of int, optional
        Labels to score. Default: every non-zero value found in the references (``[1]`` if they
        are all empty).
    num_workers : int
        Worker processes (cases are independent).
    realign : bool
        Accept predictions whose geometry differs from the reference only in metadata (same shape),
        with a warning; otherwise any geometry difference is an error.
    case_ids : iterable of str, optional
        Score only these cases (e.g. one fold's validation cases in a folder of all labels).

    Returns
    -------
    EvaluationResult
    """
    cases = match_cases(ref_dir, pred_dir, case_ids)
    wanted = sorted({int(v) for v in labels}) if labels is not None else None
    results = _run_jobs([(case, ref, pred, wanted, realign) for case, ref, pred in cases], num_workers)
    seen = {label for _, ref_labels, _, _ in results for label in ref_labels}
    warnings: list[str] = []
    if wanted is None:
        wanted = sorted(seen) or [1]
    elif missing := [label for label in wanted if label not in seen]:
        warning = (f"label(s) {missing} occur in none of the {len(cases)} reference map(s) in {ref_dir} (found: "
                   f"{sorted(seen) or 'none'}); their scores only say whether the predictions are empty too")
        logger.warning(warning)
        warnings.append(warning)
    # A label absent from both masks of a case was not computed; both-empty scores are constants.
    empty = binary_metrics(np.zeros((1, 1, 1), bool), np.zeros((1, 1, 1), bool))
    rows = []
    for case, _, metrics, warning in results:
        if warning:
            logger.warning(warning)
            warnings.append(warning)
        for label in wanted:
            rows.append({"case": case, "label": label, **metrics.get(label, empty)})
    per_case = pd.DataFrame(rows, columns=["case", "label", *METRIC_NAMES])
    summary = summarize(per_case, wanted)
    summary.update({"reference_folder": str(ref_dir), "prediction_folder": str(pred_dir)})
    result = EvaluationResult(per_case=per_case, summary=summary, labels=wanted, warnings=warnings)
    if out_dir is not None:
        out_dir = Path(out_dir)
        result.csv_path = write_csv_atomic(out_dir / METRICS_CSV, per_case)
        result.summary_path = write_json_atomic(out_dir / SUMMARY_JSON, summary)
    return result


def format_summary_table(result: EvaluationResult, metrics: Sequence[str] = METRIC_NAMES) -> str:
    """Plain-text table of mean, std and median per label and metric."""
    lines = [f"{'label':>5}  {'metric':<24} {'mean':>10} {'std':>10} {'median':>10}"]
    for label in result.labels:
        for name in metrics:
            stats = result.summary["metrics"][str(label)][name]
            cells = " ".join(f"{_fmt(stats[key]):>10}" for key in ("mean", "std", "median"))
            lines.append(f"{label:>5}  {name:<24} {cells}")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
