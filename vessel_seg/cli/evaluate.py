"""``vs_evaluate``: score a folder of predictions against a folder of reference label maps."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vessel_seg.cli import run_cli
from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.evaluate import evaluate_folders, format_summary_table
from vessel_seg.evaluation.evaluate_report import write_reports


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_evaluate",
        description="Compare predicted label maps with references case by case (matched by file name) and write "
        "metrics.csv, summary.json, summary.md (Markdown) and metrics_boxplot.png.",
    )
    parser.add_argument("-ref", required=True, type=Path, help="folder of reference label maps")
    parser.add_argument("-pred", required=True, type=Path, help="folder of predicted label maps")
    parser.add_argument("-o", type=Path, default=None, help="output folder for the reports (default: PRED)")
    parser.add_argument("--labels", type=int, nargs="+", default=None, help="labels to score (default: all in REF)")
    parser.add_argument("-np", type=int, default=1, dest="num_workers", help="worker processes (default 1)")
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.num_workers < 1:
        raise VesselSegError(f"-np {args.num_workers}: give 1 or more worker processes")
    if args.labels is not None and min(args.labels) < 1:
        raise VesselSegError(f"--labels {args.labels}: foreground labels are 1 or more (0 is the background)")
    out = args.o if args.o is not None else args.pred
    result = evaluate_folders(args.ref, args.pred, out, labels=args.labels, num_workers=args.num_workers)
    markdown, plot = write_reports(result, out)
    print(format_summary_table(result))
    print(f"{result.summary['num_cases']} cases; per-case metrics: {result.csv_path}; summary: {result.summary_path}, "
          f"{markdown}; box plot: {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
