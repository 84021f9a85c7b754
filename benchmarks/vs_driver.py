"""Our side of the benchmark: ``vs_train`` / ``vs_predict`` with per-iteration timings written to a JSON file.

Usage (``VS_RAW``, ``VS_PREPROCESSED`` and ``VS_RESULTS`` set in the environment)::

    python vs_driver.py --timings t.json train 501 3d_fullres 0 -pl cpu --epochs 1 ...   # vs_train's arguments
    python vs_driver.py --timings p.json predict -i imagesTs -o out -d 501 ...           # vs_predict's arguments

``train`` runs ``vs_train``'s ``main`` with the trainer's training batch iterator wrapped in a timer
(the benchmark's only hook; the training loop itself is unchanged). Per iteration it records
``wait_s`` (time inside the iterator's ``next()``: the loop stalled for data) and ``step_s`` (from the
batch's arrival to the next ``next()`` call, or to the end of the epoch for its last iteration:
transfer, forward, backward and optimiser step), the same split that ``nnunet_driver.py`` makes.
``predict`` times ``vs_predict``'s ``main`` (model loading plus prediction of all cases, interpreter
start-up excluded) as ``predict_s``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class TimedBatches:
    """Proxy of the trainer's training-batch iterator that records wait and step time per batch."""

    def __init__(self, batches, records: list[dict]):
        self._batches = batches
        self.records = records
        self._epoch = 0
        self._index = 0
        self._arrived: float | None = None

    def __iter__(self):
        return self

    def __next__(self):
        began = time.perf_counter()
        self._close_step(began)
        batch = next(self._batches)
        self._arrived = time.perf_counter()
        self.records.append({"epoch": self._epoch, "index": self._index, "wait_s": self._arrived - began, "step_s": 0.0})
        self._index += 1
        return batch

    def _close_step(self, now: float) -> None:
        if self._arrived is not None:
            self.records[-1]["step_s"] = now - self._arrived
            self._arrived = None

    def pop_mean_wait(self) -> float:
        # the trainer calls this right after an epoch's last iteration: it closes that iteration
        self._close_step(time.perf_counter())
        self._epoch += 1
        self._index = 0
        return self._batches.pop_mean_wait()

    def __getattr__(self, name: str):
        return getattr(self._batches, name)


def _write_json(path: Path, content: dict) -> None:
    from vessel_seg.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(content, indent=2))


def cuda_peak() -> dict[str, float]:
    """This process's peak CUDA memory in GiB (torch's caching allocator); ``{}`` when CUDA was not used."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {"cuda_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "cuda_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}


def run_train(argv: list[str], timings: Path) -> int:
    # vs_train's module sets the OpenMP wait policy before torch is imported, as when run as a command
    from vessel_seg.cli import train as train_cli  # isort: skip
    import torch

    from vessel_seg.trainers import trainer as trainer_module

    records: list[dict] = []
    make_batches = trainer_module._batches

    def timed_batches(ctx, ids, settings, dist, aug, train: bool, batch_size: int):
        batches = make_batches(ctx, ids, settings, dist, aug, train, batch_size)
        return TimedBatches(batches, records) if train else batches

    trainer_module._batches = timed_batches
    started = time.perf_counter()
    code = train_cli.main(argv)
    _write_json(timings, {"iterations": records, "run_training_s": time.perf_counter() - started,
                          "torch_threads": torch.get_num_threads(), **cuda_peak()})
    return code


def run_predict(argv: list[str], timings: Path) -> int:
    started = time.perf_counter()
    import torch

    from vessel_seg.cli import predict as predict_cli

    imported = time.perf_counter()
    code = predict_cli.main(argv)
    ended = time.perf_counter()
    args = predict_cli.build_parser().parse_args(argv)
    cases = len(list(args.input.glob("*_0000.*"))) if args.input.is_dir() else 1
    _write_json(timings, {"predict_s": ended - imported, "import_s": imported - started, "num_cases": cases,
                          "use_mirroring": not args.disable_tta, "torch_threads": torch.get_num_threads(),
                          **cuda_peak()})
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="vessel_seg side of benchmarks/compare_nnunet.py", allow_abbrev=False)
    parser.add_argument("--timings", type=Path, required=True, help="JSON file for the timings")
    parser.add_argument("command", choices=("train", "predict"))
    args, rest = parser.parse_known_args(argv)
    return (run_train if args.command == "train" else run_predict)(rest, args.timings)


if __name__ == "__main__":
    sys.exit(main())
