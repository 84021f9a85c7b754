"""Markdown tables and box plots of a benchmark (see :mod:`vessel_seg.evaluation.benchmark`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from vessel_seg.evaluation.atomic import save_figure_atomic
from vessel_seg.evaluation.metrics import HIGHER_IS_BETTER

if TYPE_CHECKING:
    from vessel_seg.evaluation.benchmark import BenchmarkResult

TABLE_METRICS: tuple[str, ...] = (
    "dice",
    "cldice",
    "vscore",
    "recall",
    "precision",
    "hd95_mm",
    "assd_mm",
    "betti0_error",
    "betti1_error",
    "largest_component_share",
)
PAIRED_METRICS: tuple[str, ...] = ("dice", "cldice", "vscore", "hd95_mm", "betti0_error", "betti1_error")
PER_CASE_METRICS: tuple[str, ...] = ("dice", "cldice", "vscore", "hd95_mm")
PLOT_METRICS: tuple[str, ...] = ("dice", "cldice", "vscore", "hd95_mm", "betti0_error", "betti1_error")


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _arrow(metric: str) -> str:
    direction = HIGHER_IS_BETTER.get(metric)
    return " ↑" if direction is True else (" ↓" if direction is False else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _mean_rows(result: BenchmarkResult, label: int) -> list[list[str]]:
    rows = []
    for method in result.methods:
        row = result.summary[(result.summary["method"] == method) & (result.summary["label"] == label)].iloc[0]
        cells = [method + (" (ref)" if method == result.reference else "")]
        cells += [f"{_fmt(row[m])} ± {_fmt(row[m + '_std'], 3)}" for m in TABLE_METRICS]
        cells += [_fmt(row["runtime_s"], 1), _fmt(row["runtime_per_case_s"], 1)]
        rows.append(cells)
    return rows


def _paired_rows(result: BenchmarkResult, label: int) -> list[list[str]]:
    paired = result.paired[(result.paired["label"] == label) & (result.paired["metric"].isin(PAIRED_METRICS))]
    return [
        [
            row.method,
            row.metric + _arrow(row.metric),
            str(row.n),
            _fmt(row.mean_diff),
            _fmt(row.median_diff),
            f"{row.better}/{row.worse}",
            _p(row.p_value),
        ]
        for row in paired.itertuples()
    ]


def _per_case_rows(result: BenchmarkResult, label: int, metric: str) -> list[list[str]]:
    frame = result.per_case[result.per_case["label"] == label]
    wide = frame.pivot(index="case", columns="method", values=metric)
    return [[str(case)] + [_fmt(wide.loc[case, m]) for m in result.methods] for case in wide.index]


def markdown_report(result: BenchmarkResult, ref_dir: str | Path) -> str:
    """The benchmark as Markdown: means (± population std), paired comparison and per-case values."""
    n_cases = result.per_case["case"].nunique()
    lines = [
        "# Benchmark",
        "",
        f"Reference labels: `{ref_dir}`; {n_cases} cases; labels {result.labels}; "
        f"paired comparison against **{result.reference}**.",
        "↑ higher is better, ↓ lower is better. Runtimes are wall-clock seconds for the whole test set "
        "(n/a when not given).",
    ]
    for label in result.labels:
        lines += ["", f"## Label {label}: mean ± std over cases", ""]
        header = ["method", *(m + _arrow(m) for m in TABLE_METRICS), "runtime_s", "s/case"]
        lines += _table(header, _mean_rows(result, label))
        if len(result.methods) > 1:
            lines += ["", f"### Label {label}: paired differences (method − {result.reference})", ""]
            header = ["method", "metric", "n", "mean diff", "median diff", "better/worse", "Wilcoxon p"]
            lines += _table(header, _paired_rows(result, label))
        for metric in PER_CASE_METRICS:
            lines += ["", f"### Label {label}: {metric} per case", ""]
            lines += _table(["case", *result.methods], _per_case_rows(result, label, metric))
        lines += ["", f"![box plots, label {label}](boxplots_label{label}.png)"]
    return "\n".join(lines) + "\n"


def save_boxplots(result: BenchmarkResult, out_dir: str | Path, metrics: Sequence[str] = PLOT_METRICS) -> list[Path]:
    """One PNG per label (``boxplots_label<L>.png``): a box plot per metric, methods side by side.

    Per-case values are drawn as points over the boxes, which matters for small test sets.
    """
    out_dir = Path(out_dir)
    paths = []
    for label in result.labels:
        frame = result.per_case[result.per_case["label"] == label]
        figure = Figure(figsize=(3.2 * len(metrics), 3.6), layout="constrained")
        axes = figure.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics, strict=True):
            data = [frame.loc[frame["method"] == m, metric].to_numpy(dtype=np.float64) for m in result.methods]
            ax.boxplot(data, tick_labels=result.methods, showfliers=False)
            jitter = np.random.default_rng(0)
            for i, values in enumerate(data, start=1):
                ax.scatter(i + jitter.uniform(-0.12, 0.12, values.size), values, s=10, alpha=0.6, color="black")
            ax.set_title(metric + _arrow(metric))
            ax.tick_params(axis="x", labelrotation=30)
        figure.suptitle(f"label {label}")
        paths.append(save_figure_atomic(out_dir / f"boxplots_label{label}.png", figure))
    return paths
