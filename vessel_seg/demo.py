"""``make demo``: the built-in synthetic vessel dataset, end to end, on whatever device is there.

Runs generate -> plan and preprocess (CPU preset) and reports what each step produced. Steps that
later work adds (training, prediction, evaluation) join this list as they land.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from vessel_seg.cli import configure_logging
from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.paths import dataset_name, preprocessed_root, raw_root
from vessel_seg.planners.pipeline import CPU_PLANS, plan_and_preprocess

log = logging.getLogger("vessel_seg.demo")


def run_demo(dataset_id: int, cases: int, test_cases: int, size: int, seed: int) -> None:
    name = dataset_name(dataset_id, "Synthetic")
    start = time.perf_counter()
    if (raw_root() / name / "dataset.json").is_file():
        log.info("[1/2] reusing synthetic dataset %s", raw_root() / name)
    else:
        log.info("[1/2] generating %d training + %d test synthetic cases (%d^3 voxels)", cases, test_cases, size)
        generate_dataset(dataset_id, cases, num_test_cases=test_cases, size=size, seed=seed, name="Synthetic")
    log.info("[2/2] fingerprint, plans (-pl %s) and preprocessing", CPU_PLANS)
    result = plan_and_preprocess(dataset_id, verify=True, num_workers=2, plans_name=CPU_PLANS)
    for config in result.plans.configurations.values():
        log.info(
            "  %-20s spacing %s patch %s batch %d", config.name,
            [round(s, 2) for s in config.spacing], config.patch_size, config.batch_size,
        )
    log.info("preprocessed data in %s (%.1f s in all)", preprocessed_root() / name, time.perf_counter() - start)
    log.info("demo stops after preprocessing: training, prediction and evaluation are not part of it yet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vessel_seg.demo", description=__doc__)
    parser.add_argument("--dataset", type=int, default=501)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--test-cases", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging()
    run_demo(args.dataset, args.cases, args.test_cases, args.size, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
