"""Side-by-side comparison of segmentation methods on one test set (``vs_benchmark``).

Every method's prediction folder is scored against the same references with
:func:`~vessel_seg.evaluation.evaluate.evaluate_folders`. Predictions whose geometry differs from
the reference only in metadata (same shape; e.g. vesselFM writes masks without spacing or origin)
are realigned with a warning; a different shape is an error.

Paired comparison: for each method other than the reference method (the first one by default),
label and metric, the per-case differences ``method − reference`` are summarised by their mean
and median, the number of cases in which the method is better / worse (by the metric's direction),
and the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, zero differences dropped).
With fewer than two cases the p-value is undefined (NaN, written as ``n/a``/empty); when every
difference is zero the methods agree exactly and the p-value is 1.

Outputs in ``out_dir``: ``per_case.csv``, ``summary.csv`` (means and standard deviations per method
and label, with runtimes), ``paired.csv``, ``benchmark.md``, ``benchmark.json`` and one
``boxplots_label<L>.png`` per label.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.atomic import write_csv_atomic, write_text_atomic
from vessel_seg.evaluation.benchmark_report import markdown_report, save_boxplots
from vessel_seg.evaluation.evaluate import evaluate_folders
from vessel_seg.evaluation.metrics import HIGHER_IS_BETTER, METRIC_NAMES
from vessel_seg.serialization import write_json_atomic

logger = logging.getLogger(__name__)

# Every metric with a direction (component counts are descriptive only).
COMPARED_METRICS: tuple[str, ...] = tuple(m for m in METRIC_NAMES if HIGHER_IS_BETTER.get(m) is not None)
METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class BenchmarkResult:
    """Tables of a benchmark run.

    Attributes:
        per_case: columns ``method, case, label`` and :data:`METRIC_NAMES`.
        summary: one row per method and label: ``num_cases``, ``runtime_s``, ``runtime_per_case_s``,
            then ``<metric>`` (mean) and ``<metric>_std`` (population std) for every metric.
        paired: one row per compared method, label and metric: ``n, mean_diff, median_diff, better,
            worse, p_value`` against ``reference``.
        reference: the reference method's name.
        labels: the scored labels.
        files: report name -> path of what was written.
    """

    per_case: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    reference: str
    labels: list[int]
    methods: list[str]
    files: dict[str, Path] = field(default_factory=dict)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences.

    NaN when fewer than two finite differences exist; 1.0 when all differences are zero.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan")
    if not np.any(d != 0):
        return 1.0
    try:
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    except ValueError:
        return float("nan")


def paired_comparison(
    per_case: pd.DataFrame, reference: str, metrics: Sequence[str] = COMPARED_METRICS
) -> pd.DataFrame:
    """Per-case differences of every method against ``reference`` (see the module docstring)."""
    rows = []
    ref_rows = per_case[per_case["method"] == reference]
    for method in [m for m in dict.fromkeys(per_case["method"]) if m != reference]:
        mine = per_case[per_case["method"] == method]
        joined = mine.merge(ref_rows, on=["case", "label"], suffixes=("", "_ref"))
        for label, group in joined.groupby("label", sort=True):
            for metric in metrics:
                diff = (group[metric] - group[f"{metric}_ref"]).to_numpy(dtype=np.float64)
                direction = HIGHER_IS_BETTER.get(metric)
                sign = 1.0 if direction in (True, None) else -1.0
                rows.append(
                    {
                        "method": method,
                        "reference": reference,
                        "label": int(label),
                        "metric": metric,
                        "n": int(diff.size),
                        "mean_diff": float(diff.mean()) if diff.size else float("nan"),
                        "median_diff": float(np.median(diff)) if diff.size else float("nan"),
                        "better": int(np.sum(sign * diff > 0)) if direction is not None else 0,
                        "worse": int(np.sum(sign * diff < 0)) if direction is not None else 0,
                        "p_value": wilcoxon_p(diff),
                    }
                )
    columns = ["method", "reference", "label", "metric", "n", "mean_diff", "median_diff", "better", "worse", "p_value"]
    return pd.DataFrame(rows, columns=columns)


def summary_table(per_case: pd.DataFrame, runtimes: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Mean and population std of every metric per method and label, with runtimes (NaN if unknown)."""
    runtimes = dict(runtimes or {})
    rows = []
    for (method, label), group in per_case.groupby(["method", "label"], sort=False):
        n = int(group["case"].nunique())
        runtime = float(runtimes.get(method, float("nan")))
        row = {"method": method, "label": int(label), "num_cases": n, "runtime_s": runtime}
        row["runtime_per_case_s"] = runtime / n if n else float("nan")
        for metric in METRIC_NAMES:
            values = group[metric].to_numpy(dtype=np.float64)
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std())
        rows.append(row)
    return pd.DataFrame(rows)


def _check_methods(methods: Mapping[str, str | Path], reference: str | None) -> tuple[list[str], str]:
    if not methods:
        raise VesselSegError("no methods to compare; give at least one NAME=PRED_DIR")
    names = list(methods)
    for name in names:
        if not METHOD_NAME.match(name):
            raise VesselSegError(f"method name {name!r}: use letters, digits, '_', '-', '.', '+' only")
    reference = names[0] if reference is None else reference
    if reference not in methods:
        raise VesselSegError(f"reference method {reference!r} is not among the methods ({', '.join(names)})")
    return names, reference


def _json_safe(frame: pd.DataFrame) -> list[dict]:
    records = frame.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in records]


def benchmark_methods(
    ref_dir: str | Path,
    methods: Mapping[str, str | Path],
    out_dir: str | Path,
    labels: Iterable[int] | None = None,
    reference: str | None = None,
    runtimes: Mapping[str, float] | None = None,
    num_workers: int = 1,
) -> BenchmarkResult:
    """Score every method's predictions against ``ref_dir`` and write the comparison reports.

    Parameters
    ----------
    ref_dir : path
        Folder of ground-truth label maps.
    methods : mapping
        Method name -> folder of its predictions (same case names as the references).
    out_dir : path
        Where the reports go (created if needed).
    labels : iterable of int, optional
        Labels to score; default every non-zero value in the references.
    reference : str, optional
        Method the others are compared with; default the first one.
    runtimes : mapping, optional
        Method name -> total wall time in seconds for the whole test set.
    num_workers : int
        Worker processes per evaluation.

    Returns
    -------
    BenchmarkResult
    """
    names, reference = _check_methods(methods, reference)
    out_dir = Path(out_dir)
    frames, scored_labels = [], None
    for name in names:
        logger.info("scoring %s (%s)", name, methods[name])
        result = evaluate_folders(ref_dir, methods[name], None, labels, num_workers, realign=True)
        scored_labels = result.labels
        frames.append(result.per_case.assign(method=name))
    per_case = pd.concat(frames, ignore_index=True)[["method", "case", "label", *METRIC_NAMES]]
    result = BenchmarkResult(
        per_case=per_case,
        summary=summary_table(per_case, runtimes),
        paired=paired_comparison(per_case, reference),
        reference=reference,
        labels=list(scored_labels or []),
        methods=names,
    )
    files = result.files
    files["per_case.csv"] = write_csv_atomic(out_dir / "per_case.csv", result.per_case)
    files["summary.csv"] = write_csv_atomic(out_dir / "summary.csv", result.summary)
    files["paired.csv"] = write_csv_atomic(out_dir / "paired.csv", result.paired)
    for path in save_boxplots(result, out_dir):
        files[path.name] = path
    files["benchmark.md"] = write_text_atomic(out_dir / "benchmark.md", markdown_report(result, ref_dir))
    payload = {
        "reference_folder": str(ref_dir),
        "methods": {name: str(methods[name]) for name in names},
        "reference_method": reference,
        "labels": result.labels,
        "summary": _json_safe(result.summary),
        "paired": _json_safe(result.paired),
    }
    files["benchmark.json"] = write_json_atomic(out_dir / "benchmark.json", payload)
    return result
