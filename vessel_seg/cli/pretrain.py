"""``vs_pretrain``: pretrain the modality-free vessel model on domain-randomised volumes and export it.

Resumable: the data, preprocessing and training each continue where a killed run stopped; rerun
the same command. The exported folder is what ``vs_predict --model builtin`` ships with.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from collections.abc import Sequence
from pathlib import Path

from vessel_seg.cli import run_cli, sleep_idle_openmp_threads

sleep_idle_openmp_threads()  # training starts augmentation workers; before torch is imported


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vs_pretrain", description=__doc__)
    parser.add_argument("-d", "--dataset", type=int, default=990, metavar="NNN", help="dataset id for the generated data (default 990)")
    parser.add_argument("--cases", type=int, default=400, help="domain-randomised training cases (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--epochs", type=int, default=36, help="training epochs (default 36, as the shipped model)")
    parser.add_argument("--iterations-per-epoch", type=int, default=50, help="iterations per epoch (default 50)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--num-workers", type=int, default=None, help="augmentation workers (default: from the CPUs)")
    parser.add_argument("--init", default=None, metavar="builtin|DIR",
                        help="continue from a modality-free model folder ('builtin': the shipped one): its plans and "
                        "weights; the exported card lists its earlier runs too")
    parser.add_argument("--warmup", type=int, default=0, metavar="STEPS",
                        help="linear learning-rate warm-up steps (useful with --init)")
    parser.add_argument("-np", "--num-processes", type=int, default=None, metavar="N",
                        help="processes that write and preprocess the randomised cases (default: the CPUs, at most 8)")
    parser.add_argument("--export", type=Path, default=None,
                        help="folder to write the built-in model into (default: VS_RESULTS/builtin_export)")
    return parser


def _command(args: argparse.Namespace) -> int:
    from vessel_seg.checkpoint import load_checkpoint
    from vessel_seg.errors import VesselSegError
    from vessel_seg.paths import results_root
    from vessel_seg.pretraining import (
        RANDOMISER_VERSION,
        PretrainingRun,
        export_builtin_model,
        model_card,
        pretrain,
        read_runs,
    )
    from vessel_seg.trainers.settings import TrainingSettings

    if args.cases < 2 or args.epochs < 1 or args.iterations_per_epoch < 1:
        raise VesselSegError("--cases must be >= 2, --epochs and --iterations-per-epoch >= 1")
    settings = TrainingSettings(
        epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, validation_iterations=5,
        num_workers=args.num_workers, device=args.device, final_validation=False, checkpoint_every=1,
        warmup_iterations=args.warmup,
    )
    init = _init_folder(args.init)
    started = time.perf_counter()
    processes = args.num_processes if args.num_processes is not None else min(8, os.cpu_count() or 1)
    if processes < 1:
        raise VesselSegError("-np must be 1 or more")
    result = pretrain(args.dataset, args.cases, settings, seed=args.seed, num_workers=processes, init=init)
    from vessel_seg.planners.plans import Plans

    config = Plans.load(result.fold_dir.parent / "plans.json").configuration("3d_fullres")
    weights = load_checkpoint(result.fold_dir / "checkpoint_final.pt")["network_weights"]
    parameters = sum(v.numel() for v in weights.values() if v.is_floating_point())
    run = PretrainingRun(date=datetime.date.today().isoformat(), machine=_hardware(args.device), cases=args.cases,
                         seed=args.seed, randomiser=RANDOMISER_VERSION,
                         iterations=args.epochs * args.iterations_per_epoch, batch=config.batch_size,
                         patch=list(config.patch_size), wall_s=round(time.perf_counter() - started, 1),
                         init=str(args.init) if args.init else None)
    runs = [*(read_runs(init) if init is not None else []), run]
    card = model_card(runs=runs, parameters=parameters)
    out = args.export if args.export is not None else results_root() / "builtin_export"
    print(export_builtin_model(result.fold_dir.parent, out, card, runs=runs))
    return 0


def _init_folder(value: str | None) -> Path | None:
    """The ``--init`` model folder, checked to hold plans and weights ('builtin': the shipped model)."""
    from vessel_seg.builtin import builtin_model_dir
    from vessel_seg.errors import VesselSegError

    if value is None:
        return None
    folder = builtin_model_dir() if value == "builtin" else Path(value)
    if not (folder / "plans.json").is_file() or not (folder / "fold_all" / "checkpoint_final.pt").is_file():
        raise VesselSegError(f"{folder}: --init needs a model folder with plans.json and fold_all/checkpoint_final.pt")
    return folder


def _hardware(requested: str) -> str:
    """The device the run trained on, in words for the model card (GPU name, or CPU model and core count)."""
    import os
    import platform

    import torch

    from vessel_seg.device import select_device

    device = select_device(requested)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    return f"CPU {model}, {os.cpu_count()} cores"


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
