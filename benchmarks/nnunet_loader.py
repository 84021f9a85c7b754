"""nnU-Net v2's training data loader, timed; runs with nnU-Net's own interpreter (see loader_throughput.py).

Usage (``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` set in the environment)::

    python nnunet_loader.py -d 502 -c 3d_fullres --workers 4 --batches 40 --warmup 8 --out timing.json

It builds what ``nnUNetTrainer.get_dataloaders`` builds for training, and nothing else (no validation
loader, no network): ``nnUNetDataLoader`` over all preprocessed cases of the configuration, with
the initial (enlarged) patch size, foreground oversampling and the transforms of
``nnUNetTrainer.get_training_transforms`` (deep-supervision targets included), behind a
``NonDetMultiThreadedAugmenter`` with ``num_cached = max(6, workers // 2)`` and
``wait_time = 0.002``, as nnU-Net 2.8.1 does (``--workers 0``: ``SingleThreadedAugmenter``).

:func:`time_batches` and :func:`cpu_seconds` are shared with vessel_seg's side of the benchmark, so
both loaders are timed by the same code. This file never imports vessel_seg, and imports nnunetv2
only inside :func:`build_nnunet_loader`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by the live processes ``pids`` (read from ``/proc/<pid>/stat``)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:  # already gone
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def time_batches(batches: Iterator, warmup: int, count: int, worker_pids: Callable[[], Sequence[int]]) -> dict:
    """Consume ``warmup`` batches untimed, then ``count`` batches timed, as fast as they come.

    Returns ``batches_per_s`` (``count`` over the wall seconds of the timed part), ``seconds``,
    ``consumer_cpu_s_per_batch`` (CPU seconds of this process, its queue threads included, per timed
    batch: what the training process pays to receive a batch) and ``worker_cpu_s_per_batch`` (CPU
    seconds of the worker processes over the timed part, per batch: the cost of producing one).
    """
    for _ in range(warmup):
        next(batches)
    pids = list(worker_pids())
    wall, cpu, workers = time.perf_counter(), time.process_time(), cpu_seconds(pids)
    for _ in range(count):
        next(batches)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    workers = cpu_seconds(pids) - workers
    return {"batches": count, "warmup": warmup, "seconds": round(wall, 3), "batches_per_s": round(count / wall, 3),
            "consumer_cpu_s_per_batch": round(cpu / count, 4),
            "worker_cpu_s_per_batch": round(workers / count, 4) if pids else round(cpu / count, 4)}


def build_nnunet_loader(dataset_id: int, configuration: str, plans: str, workers: int):
    """``(augmenter, patch_size, batch_size)``: nnU-Net's training loader for all cases of ``configuration``."""
    import torch
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunet_driver import _dataset_dir
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    pre = _dataset_dir("nnUNet_preprocessed", dataset_id)
    plans_dict = json.loads((pre / f"{plans}.json").read_text())
    plans_dict["continue_training"] = False  # 2.8.x's __init__ pops this key
    trainer = nnUNetTrainer(plans_dict, configuration, 0, json.loads((pre / "dataset.json").read_text()),
                            device=torch.device("cpu"))
    trainer._set_batch_size_and_oversample()  # what initialize() does for the loader (batch size, oversampling)
    cm, lm = trainer.configuration_manager, trainer.label_manager
    rotation, dummy_2d, initial_patch, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    transforms = trainer.get_training_transforms(
        cm.patch_size, rotation, trainer._get_deep_supervision_scales(), mirror_axes, dummy_2d,
        use_mask_for_norm=cm.use_mask_for_norm, is_cascaded=trainer.is_cascaded,
        foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
        ignore_label=lm.ignore_label)
    folder = str(pre / cm.data_identifier)
    loader = nnUNetDataLoader(infer_dataset_class(folder)(folder), trainer.batch_size, initial_patch, cm.patch_size, lm,
                              oversample_foreground_percent=trainer.oversample_foreground_percent,
                              sampling_probabilities=None, pad_sides=None, transforms=transforms,
                              probabilistic_oversampling=trainer.probabilistic_oversampling)
    if workers == 0:
        return SingleThreadedAugmenter(loader, None), list(cm.patch_size), trainer.batch_size
    augmenter = NonDetMultiThreadedAugmenter(loader, None, workers, num_cached=max(6, workers // 2), seeds=None,
                                             pin_memory=False, wait_time=0.002)
    return augmenter, list(cm.patch_size), trainer.batch_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time nnU-Net v2's training data loader")
    parser.add_argument("-d", "--dataset", type=int, required=True)
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    augmenter, patch, batch_size = build_nnunet_loader(args.dataset, args.configuration, args.plans, args.workers)
    try:
        timing = time_batches(augmenter, args.warmup, args.batches,
                              lambda: [p.pid for p in getattr(augmenter, "_processes", [])])
    finally:
        if hasattr(augmenter, "_finish"):
            augmenter._finish()
    timing.update(patch_size=patch, batch_size=batch_size, workers=args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(timing, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # nnunet_driver beside this file
    sys.exit(main())
