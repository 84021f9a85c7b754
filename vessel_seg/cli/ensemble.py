"""``vs_ensemble``: average saved probabilities of several predictions and write the masks."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vessel_seg.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_ensemble",
        description="Average the CASE.npz probability files (vs_predict --save-probabilities) of several folders "
        "case by case and write the arg-max masks in each case's original format and geometry.",
    )
    parser.add_argument("-i", required=True, nargs="+", type=Path, dest="inputs", help="two or more prediction folders")
    parser.add_argument("-o", required=True, type=Path, dest="output", help="output folder")
    parser.add_argument("--save-probabilities", action="store_true", help="also write the averaged CASE.npz")
    return parser


def _command(args: argparse.Namespace) -> int:
    from vessel_seg.inference.ensemble import ensemble_folders

    written = ensemble_folders(args.inputs, args.output, args.save_probabilities)
    print(f"{len(written)} case(s) ensembled from {len(args.inputs)} folders into {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
