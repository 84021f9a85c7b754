"""``vs_plan_and_preprocess``: fingerprint, plan and preprocess a raw dataset."""

from __future__ import annotations

import argparse
import sys

from vessel_seg.cli import run_cli
from vessel_seg.planners.pipeline import DEFAULT_PLANS, DatasetProblems, plan_and_preprocess
from vessel_seg.planners.plans import CONFIGURATIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_plan_and_preprocess",
        description="Fingerprint a raw dataset, plan every configuration and preprocess all training cases.",
    )
    parser.add_argument("-d", "--dataset", required=True, nargs="+", help="dataset id(s) (501) or name(s) (Dataset501_Synthetic)")
    parser.add_argument("-c", "--configurations", nargs="+", choices=CONFIGURATIONS, help="configurations to preprocess (default: all planned)")
    parser.add_argument("--verify", "--verify_dataset_integrity", dest="verify", action="store_true",
                        help="check the dataset for consistency first")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("-pl", "--plans", default=DEFAULT_PLANS, help="plans name; 'cpu' selects the CPU-sized preset (default vs_plans)")
    parser.add_argument("--preset", help="sizing preset: gpu, cpu or one registered by a VS_PLUGINS module "
                        "(default: the preset named like -pl, e.g. cpu for -pl cpu, else gpu)")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0, help="GPU memory target for the gpu preset (default 8)")
    parser.add_argument("--no-preprocess", action="store_true", help="only fingerprint and plan")
    parser.add_argument("--plans-from", choices=("builtin",), default=None,
                        help="builtin: preprocess exactly as the built-in pretrained model (plans named vs_builtin "
                        "unless -pl is given), to fine-tune it with vs_train ... --pretrained builtin")
    return parser


def _source_plans(args: argparse.Namespace):
    """The plans to transfer (``--plans-from``), and the plans name to write them under."""
    if args.plans_from is None:
        return None, args.plans
    from vessel_seg.builtin import BUILTIN_PLANS, builtin_model_dir
    from vessel_seg.planners.plans import Plans

    name = args.plans if args.plans != DEFAULT_PLANS else BUILTIN_PLANS
    return Plans.load(builtin_model_dir() / "plans.json"), name


def _command(args: argparse.Namespace) -> int:
    if args.num_processes < 1:
        print("error: -np must be at least 1", file=sys.stderr)
        return 2
    source, plans_name = _source_plans(args)
    for dataset in args.dataset:
        try:
            result = plan_and_preprocess(
                dataset, args.configurations, args.verify, args.num_processes, plans_name,
                args.gpu_memory_gb, args.preset, preprocess=not args.no_preprocess, plans_from=source,
            )
        except DatasetProblems as exc:
            for line in exc.problems:
                print(f"problem: {line}", file=sys.stderr)
            print(f"error: {exc}", file=sys.stderr)
            return 2  # a user error like every other: one exit code for all of them
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        print(f"{result.plans.dataset_name}: plans {result.plans_path} ({', '.join(result.plans.configurations)}); {timing}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
