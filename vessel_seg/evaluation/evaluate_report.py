"""Readable reports of an evaluation: ``summary.md`` (a Markdown table) and ``metrics_boxplot.png`` (per-case spread).

Both come from :class:`~vessel_seg.evaluation.evaluate.EvaluationResult`, so they show exactly what
``metrics.csv`` and ``summary.json`` hold; ``vs_evaluate`` writes them next to those files.
"""

from __future__ import annotations

import math
from pathlib import Path

from vessel_seg.atomic import write_atomic, write_text_atomic
from vessel_seg.evaluation.evaluate import EvaluationResult
from vessel_seg.evaluation.metrics import HIGHER_IS_BETTER, METRIC_NAMES

SUMMARY_MD = "summary.md"
BOXPLOT_PNG = "metrics_boxplot.png"
# Scores on a 0-1 scale share one panel; counts and distances get their own.
BOXPLOT_PANELS = (("dice", "cldice", "vscore", "recall", "precision"), ("betti0_error", "components_pred"), ("hd95_mm",))


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else (f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}")


def summary_markdown(result: EvaluationResult, title: str = "Evaluation") -> str:
    """Markdown: cases, folders, and per label a table of mean / std / median of every metric (and its direction)."""
    summary = result.summary
    lines = [f"# {title}", "", f"- cases: {summary['num_cases']}",
             f"- references: `{summary.get('reference_folder', '?')}`", f"- predictions: `{summary.get('prediction_folder', '?')}`"]
    for label in result.labels:
        lines += ["", f"## Label {label}", "", "| metric | better | mean | std | median |", "|---|---|---:|---:|---:|"]
        for name in METRIC_NAMES:
            stats = summary["metrics"][str(label)][name]
            better = {True: "higher", False: "lower", None: ""}[HIGHER_IS_BETTER.get(name)]
            lines.append(f"| {name} | {better} | {_cell(stats['mean'])} | {_cell(stats['std'])} | {_cell(stats['median'])} |")
    return "\n".join(lines) + "\n"


def save_boxplot(result: EvaluationResult, path: Path) -> Path:
    """Box plots of the per-case values (all labels pooled per metric), one panel per scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BOXPLOT_PANELS), figsize=(4 * len(BOXPLOT_PANELS) + 2, 4),
                             gridspec_kw={"width_ratios": [len(p) for p in BOXPLOT_PANELS]})
    for ax, names in zip(axes, BOXPLOT_PANELS, strict=True):
        columns = [result.per_case[name].dropna().to_numpy() for name in names]
        ax.boxplot(columns, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("per-case value")
    axes[0].set_title(f"{result.summary['num_cases']} case(s), labels {', '.join(map(str, result.labels))}", loc="left")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path


def write_reports(result: EvaluationResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``metrics_boxplot.png`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    markdown = write_text_atomic(out_dir / SUMMARY_MD, summary_markdown(result))
    return markdown, save_boxplot(result, out_dir / BOXPLOT_PNG)
