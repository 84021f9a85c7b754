"""``vs_generate_synthetic``: write a synthetic vessel dataset into ``VS_RAW``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vessel_seg.cli import run_cli
from vessel_seg.dataset_conversion.synthetic import STYLES, generate_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_generate_synthetic",
        description="Generate random branching vessel trees rendered as CT- or MR-like volumes, written as "
        "VS_RAW/DatasetNNN_<name> in nnU-Net v2 layout (with held-out test cases and ground-truth trees).",
    )
    parser.add_argument("-d", "--dataset", type=int, required=True, metavar="NNN", help="dataset id (0-999)")
    parser.add_argument("--cases", type=int, required=True, help="number of labelled training cases")
    parser.add_argument("--test-cases", type=int, default=2, help="number of held-out cases (default: 2)")
    parser.add_argument("--size", type=int, default=96, help="volume edge length in voxels (default: 96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    parser.add_argument("--modality", choices=STYLES, default="ct",
                        help="image appearance: ct, mr or microscopy (a capillary bed, 2x1x1 um voxels) (default: ct)")
    parser.add_argument("--name", default="Synthetic", help="short dataset name (default: Synthetic)")
    parser.add_argument("--random-flips", action="store_true", help="random axis signs in the direction matrices")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder of the same name")
    return parser


def _command(args: argparse.Namespace) -> int:
    folder = generate_dataset(
        args.dataset,
        args.cases,
        num_test_cases=args.test_cases,
        size=args.size,
        seed=args.seed,
        modality=args.modality,
        name=args.name,
        overwrite=args.overwrite,
        random_flips=args.random_flips,
    )
    print(folder)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
