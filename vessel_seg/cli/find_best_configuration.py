"""``vs_find_best_configuration``: choose configuration and postprocessing by cross-validation."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vessel_seg.cli import run_cli
from vessel_seg.model_folder import DEFAULT_TRAINER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_find_best_configuration",
        description="Score every trained configuration on its cross-validation predictions (mean of Dice and "
        "clDice), choose the postprocessing, and write VS_RESULTS/DatasetNNN_Name/inference_recipe.json "
        "with a Markdown summary beside it.",
    )
    parser.add_argument("dataset", help="dataset id or name, e.g. 501 or Dataset501_Synthetic")
    parser.add_argument("-pl", default="vs_plans", dest="plans", help="plans identifier (default vs_plans)")
    parser.add_argument("-tr", default=DEFAULT_TRAINER, dest="trainer", help=f"trainer name (default {DEFAULT_TRAINER})")
    parser.add_argument("-c", nargs="+", default=None, dest="configurations",
                        help="configurations to consider (default: every trained one)")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], dest="folds",
                        help="folds that must all have validation predictions (default 0 1 2 3 4)")
    parser.add_argument("-np", type=int, default=1, dest="num_workers", help="worker processes (default 1)")
    return parser


def _command(args: argparse.Namespace) -> int:
    from vessel_seg.inference.model_selection import find_best_configuration, format_summary
    from vessel_seg.inference.recipe import recipe_path

    recipe = find_best_configuration(
        args.dataset, plans_name=args.plans, trainer=args.trainer, configurations=args.configurations,
        folds=args.folds, num_workers=args.num_workers,
    )
    print(format_summary(recipe))
    print(f"recipe written to {recipe_path(recipe.dataset_name)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
