"""Cost per iteration of each registered training loss on one machine, and of the skeleton target in the data workers.

Usage::

    .venv/bin/python benchmarks/loss_costs.py --preprocessed DIR [--plans cpu] [--repeats 10] [--threads 2]

``DIR`` is a preprocessed dataset (``VS_PREPROCESSED/DatasetNNN_Name``, e.g. the one a
``learning_curves.py`` run made). For every registered loss the script builds the plans' 3d_fullres
ResU-Net and times full training steps (forward, loss, backward, AdamW step; bf16 autocast where the
CPU has it, as ``vs_train``) on the plans' batch of real label patches (centre crops of the first
cases); for losses that need the skeleton it also times :class:`SkeletonTarget` on those label
patches (one worker's CPU seconds per batch, which the step does not wait for while the workers
keep up). Prints one Markdown table: median seconds per step and the ratio to ``dice_ce``.
The step times are on this machine only; ratios travel better than seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vessel_seg.case_store import list_cases, load_case
from vessel_seg.device import amp_dtype
from vessel_seg.networks.resunet import build_network
from vessel_seg.planners.plans import Plans
from vessel_seg.trainers.losses import build_loss, loss_entry, loss_names
from vessel_seg.trainers.skeleton_target import SkeletonTarget


def label_batch(data_dir: Path, patch: tuple[int, ...], batch_size: int) -> np.ndarray:
    """``(B, 1, *patch)`` uint8 centre crops of the labels of the first ``batch_size`` cases (zero-padded)."""
    cases = list_cases(data_dir)[:batch_size]
    out = np.zeros((batch_size, 1, *patch), np.uint8)
    for b, case in enumerate(cases * batch_size if len(cases) < batch_size else cases):
        _, seg, _ = load_case(data_dir, case)
        seg = seg[0] if seg.ndim == len(patch) + 1 else seg
        start = [max(0, (n - p) // 2) for n, p in zip(seg.shape, patch, strict=True)]
        crop = seg[tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))]
        out[b, 0][tuple(slice(0, n) for n in crop.shape)] = np.maximum(crop, 0)
        if b + 1 == batch_size:
            break
    return out


def time_steps(name: str, plans: Plans, labels: np.ndarray, repeats: int) -> float:
    """Median seconds of one training step with loss ``name``."""
    config = plans.configuration("3d_fullres")
    network = build_network(config.network, 1, len(plans.labels))
    kernel = [1 if k == 1 else 3 for k in config.network.kernel_sizes[0]]
    loss_fn = build_loss(name, network.deep_supervision, network.num_outputs, batch_dice=config.batch_dice, kernel_size=kernel)
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
    target_np = SkeletonTarget()(target=labels)["target"] if loss_entry(name).needs_skeleton else labels
    target = torch.from_numpy(target_np).long()
    data = torch.randn(labels.shape, dtype=torch.float32)
    dtype = amp_dtype(torch.device("cpu"), True)
    times = []
    for i in range(repeats + 2):  # two warm-up steps
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(network(data), target)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_skeleton(labels: np.ndarray, repeats: int) -> float:
    """Median seconds of :class:`SkeletonTarget` on one batch of label patches (one process)."""
    transform = SkeletonTarget()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        transform(target=labels.copy())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preprocessed", type=Path, required=True, help="a preprocessed dataset folder")
    parser.add_argument("--plans", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the step (the machine's cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plans = Plans.load(args.preprocessed / f"{args.plans}.json")
    config = plans.configuration("3d_fullres")
    labels = label_batch(args.preprocessed / config.data_identifier, tuple(config.patch_size), config.batch_size)
    rows = {name: time_steps(name, plans, labels, args.repeats) for name in loss_names()}
    skeleton_s = time_skeleton(labels, args.repeats)
    base = rows["dice_ce"]
    print(f"patch {'x'.join(map(str, config.patch_size))}, batch {config.batch_size}, {args.threads} thread(s), "
          f"torch {torch.__version__}\n")
    print("| loss | step s (median) | ratio to dice_ce | data workers: skeleton s / batch |")
    print("|---|---|---|---|")
    for name, seconds in rows.items():
        extra = f"{skeleton_s:.3f}" if loss_entry(name).needs_skeleton else "-"
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f} | {extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
