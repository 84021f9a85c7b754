"""Cost of saving ``checkpoint_latest.pt`` after every epoch, against the epoch it follows.

Usage::

    .venv/bin/python benchmarks/checkpoint_cost.py [--work benchmarks/work/checkpoint_cost] [--size 96] [--out benchmarks/results]

Plans a synthetic dataset (``--size``^3 voxels, 0.8/0.5/0.5 mm) with the CPU preset (``-pl cpu``) and the
default plans (``vs_plans``), builds each 3d_fullres network with AdamW after one step (so the optimiser
state is full size), and times the Checkpointer's atomic save of the latest checkpoint (three times, median)
and three training iterations at the plans' patch and batch size on this machine's CPU. The ratio is the
save over one epoch of the default 250 iterations. Prints one table; writes ``<out>/<date>-<host>-checkpoint-cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_info, write_results  # noqa: E402


def measure(config, fold_dir: Path, iterations: int = 3) -> dict:
    import torch

    from vessel_seg.networks.registry import build_network
    from vessel_seg.trainers.checkpointer import Checkpointer
    from vessel_seg.trainers.optimization import build_optimizer
    from vessel_seg.trainers.settings import TrainingSettings

    network = build_network(config.network, 1, 2)
    optimizer = build_optimizer(network, TrainingSettings(), torch.device("cpu"))
    x = torch.randn(config.batch_size, 1, *config.patch_size)
    step_s = []
    for _ in range(iterations + 1):
        started = time.perf_counter()
        out = network(x)
        loss = sum(o.float().mean() for o in (out if isinstance(out, (list, tuple)) else [out]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_s.append(time.perf_counter() - started)
    checkpointer = Checkpointer(fold_dir, {"in_channels": 1})
    fold_dir.mkdir(parents=True, exist_ok=True)
    save_s = []
    for _ in range(3):
        started = time.perf_counter()
        path = checkpointer.save("latest", checkpointer.state(network, optimizer, None, 1, {}))
        save_s.append(time.perf_counter() - started)
    iteration = statistics.median(step_s[1:])  # the first step warms up
    return {"patch": list(config.patch_size), "batch": config.batch_size,
            "parameters_m": sum(p.numel() for p in network.parameters()) / 1e6,
            "checkpoint_mb": path.stat().st_size / 2**20, "save_s": statistics.median(save_s),
            "iteration_s": iteration, "epoch_s": 250 * iteration,
            "save_share_of_epoch": statistics.median(save_s) / (250 * iteration)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/checkpoint_cost"))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    work = args.work.resolve()
    for name in ("raw", "preprocessed", "results"):
        os.environ[f"VS_{name.upper()}"] = str(work / name)
    from vessel_seg.dataset_conversion.synthetic import generate_dataset
    from vessel_seg.planners.pipeline import plan_and_preprocess
    from vessel_seg.planners.plans import Plans

    if not (work / "raw" / "Dataset950_Synthetic").is_dir():
        generate_dataset(950, 4, num_test_cases=0, size=args.size, seed=1)
    rows = []
    for plans_name, preset in (("cpu", "cpu"), ("vs_plans", None)):
        plan_and_preprocess(950, ["3d_fullres"], plans_name=plans_name, preset=preset, preprocess=False)
        config = Plans.load(work / "preprocessed" / "Dataset950_Synthetic" / f"{plans_name}.json").configuration("3d_fullres")
        rows.append({"plans": plans_name, **measure(config, work / "fold" / plans_name)})
    result = {"date": datetime.date.today().isoformat(), "host": socket.gethostname().split(".")[0],
              "machine": machine_info(), "rows": rows}
    lines = [f"# Latest checkpoint after every epoch ({result['date']}, {result['machine']['cpu']}, "
             f"{result['machine']['cpus']} CPUs)", "",
             "| plans | patch x batch | parameters | checkpoint | save | iteration | epoch (250 it) | save / epoch |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['plans']} | {'x'.join(map(str, r['patch']))} x {r['batch']} | {r['parameters_m']:.2f} M | "
                     f"{r['checkpoint_mb']:.1f} MB | {r['save_s']:.3f} s | {r['iteration_s']:.2f} s | "
                     f"{r['epoch_s']:.0f} s | {100 * r['save_share_of_epoch']:.2f} % |")
    write_results(args.out, result, "checkpoint-cost", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
