"""``vs_train DATASET CONFIG FOLD``: train one fold of one configuration."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vessel_seg.cli import run_cli, sleep_idle_openmp_threads

sleep_idle_openmp_threads()  # before torch is imported below
from vessel_seg.device import DEVICES  # noqa: E402
from vessel_seg.errors import VesselSegError  # noqa: E402
from vessel_seg.model_folder import DEFAULT_TRAINER, check_name_part, parse_fold  # noqa: E402
from vessel_seg.paths import preprocessed_root, raw_root, resolve_dataset  # noqa: E402
from vessel_seg.planners.pipeline import DEFAULT_PLANS  # noqa: E402
from vessel_seg.planners.plans import CONFIGURATIONS, find_plans_name  # noqa: E402
from vessel_seg.trainers.losses import loss_names  # noqa: E402
from vessel_seg.trainers.settings import COMPILE_MODES, OPTIMIZERS, TrainingSettings  # noqa: E402
from vessel_seg.trainers.trainer import TrainingJob, train  # noqa: E402
from vessel_seg.trainers.variants import TRAINERS, variant_settings  # noqa: E402
from vessel_seg.trainers.workers import env_override  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_train",
        description="Train a ResU-Net for one fold. Multi-GPU: torchrun --nproc_per_node N $(which vs_train) ...",
    )
    parser.add_argument("dataset", help="dataset id (501) or name (Dataset501_Synthetic)")
    parser.add_argument("configuration", choices=CONFIGURATIONS)
    parser.add_argument("fold", help="fold index (0-4) or 'all'")
    parser.add_argument("-pl", "-p", "--plans", default=None,
                        help="plans name (default: vs_plans, else the dataset's only plans; 'cpu' for the CPU preset)")
    parser.add_argument(
        "-tr", dest="trainer", default=DEFAULT_TRAINER,
        help=f"trainer variant ({', '.join(TRAINERS)}, or one a VS_PLUGINS module registers): its settings and the "
             f"run folder <trainer>__<plans>__<configuration>; flags given here override its settings (default {DEFAULT_TRAINER})",
    )
    parser.add_argument("--epochs", type=int, help=f"default {TrainingSettings.epochs}")
    parser.add_argument("--iterations-per-epoch", type=int, help=f"default {TrainingSettings.iterations_per_epoch}")
    parser.add_argument("--val-iterations", type=int, help=f"default {TrainingSettings.validation_iterations}")
    parser.add_argument(
        "--loss",
        help=f"training loss: {', '.join(loss_names())}, or one registered by a module in VS_PLUGINS "
             f"(default {TrainingSettings.loss}, or the trainer variant's)",
    )
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {TrainingSettings.optimizer}, or the variant's")
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate (default 3e-3 AdamW, 1e-2 SGD)")
    parser.add_argument("--device", help=f"one of {', '.join(DEVICES)} (default auto)")
    parser.add_argument(
        "--num-workers", type=int, default=None, metavar="N",
        help="data augmentation processes (default: env VS_N_PROC_DA, else nnUNet_n_proc_DA, else chosen from the "
             "usable CPUs and the device: CPUs per GPU process - 1 on a GPU, 2-4 on a CPU)",
    )
    parser.add_argument(
        "--no-amp", action="store_true",
        help="disable mixed precision (bf16 on CUDA GPUs and CPUs that support it natively, fp16 on older CUDA GPUs)",
    )
    parser.add_argument(
        "--compile", nargs="?", const="on", choices=COMPILE_MODES,
        help="torch.compile the network: auto (default: on CUDA for runs long enough to repay compiling), on, off; "
        "a bare --compile means on",
    )
    parser.add_argument("--no-channels-last", action="store_true", help="keep activations in NCDHW instead of channels_last_3d")
    parser.add_argument("--checkpoint-every", type=int, help=f"epochs between latest checkpoints (default {TrainingSettings.checkpoint_every})")
    parser.add_argument(
        "--snapshot-every", type=int, metavar="N",
        help="also keep the weights every N epochs as checkpoint_epochNNNN.pt (default 0: never)",
    )
    parser.add_argument("--seed", type=int, help=f"default {TrainingSettings.seed}")
    parser.add_argument("--warmup-iterations", type=int, help="linear learning-rate warm-up over the first N steps (default 0: none)")
    parser.add_argument("--continue", "--c", dest="resume", action="store_true", help="resume from the latest checkpoint")
    parser.add_argument("--pretrained", default=None,
                        help="initialise from another model's checkpoint file, or 'builtin' for the built-in pretrained "
                        "model (then the dataset must be planned with vs_plan_and_preprocess --plans-from builtin; "
                        "-pl defaults to vs_builtin)")
    parser.add_argument("--no-final-validation", action="store_true", help="skip full-volume validation at the end")
    parser.add_argument("--val", dest="validate_only", action="store_const", const="final",
                        help="no training: only the final validation of checkpoint_final.pt (nnU-Net's --val)")
    parser.add_argument("--val_best", "--val-best", dest="validate_only", action="store_const", const="best",
                        help="as --val, with checkpoint_best.pt")
    parser.add_argument(
        "--no-validation-probabilities", action="store_true",
        help="do not save validation probabilities (CASE.npz); vs_find_best_configuration then skips ensembles and gap bridging",
    )
    return parser




def _pretrained_checkpoint(args: argparse.Namespace) -> Path | None:
    """The ``--pretrained`` checkpoint, checked before any work ('builtin': the built-in model's, with its plans)."""
    if args.pretrained is None:
        return None
    from vessel_seg.trainers.checkpointer import pretrained_weights

    if args.pretrained == "builtin":
        from vessel_seg.builtin import BUILTIN_PLANS, builtin_model_dir

        folder = builtin_model_dir()
        args.plans = args.plans or BUILTIN_PLANS
        name = resolve_dataset(args.dataset, [preprocessed_root(), raw_root()])
        if not (preprocessed_root() / name / f"{args.plans}.json").is_file():
            raise VesselSegError(
                f"{preprocessed_root() / name}: no {args.plans} plans; run vs_plan_and_preprocess -d {args.dataset} "
                f"--plans-from builtin first, so the data is preprocessed as the built-in model expects"
            )
        path = folder / "fold_all" / "checkpoint_final.pt"
    else:
        path = Path(args.pretrained)
        if not path.is_file():
            raise VesselSegError(f"{path}: pretrained checkpoint not found (a file, or 'builtin')")
    pretrained_weights(path)  # a wrong file fails here, before any work or log line
    return path


def _plans_name(args: argparse.Namespace) -> str:
    """``-pl``, else vs_plans, else the dataset's only plans (announced)."""
    if args.plans is not None:
        return args.plans
    name = resolve_dataset(args.dataset, [preprocessed_root(), raw_root()])
    plans = find_plans_name(preprocessed_root() / name, None, DEFAULT_PLANS)
    if plans != DEFAULT_PLANS:
        logging.getLogger(__name__).info("plans: using %s, the only plans of %s (-pl to choose)", plans, name)
    return plans


def _command(args: argparse.Namespace) -> int:
    explicit = {
        "epochs": args.epochs, "iterations_per_epoch": args.iterations_per_epoch, "validation_iterations": args.val_iterations,
        "loss": args.loss, "optimizer": args.optimizer, "learning_rate": args.lr, "device": args.device,
        "num_workers": args.num_workers, "compile": args.compile, "checkpoint_every": args.checkpoint_every,
        "snapshot_every": args.snapshot_every, "seed": args.seed, "warmup_iterations": args.warmup_iterations,
        # switches: only a given flag overrides the variant
        "amp": False if args.no_amp else None, "channels_last": False if args.no_channels_last else None,
        "final_validation": False if args.no_final_validation else None,
        "save_validation_probabilities": False if args.no_validation_probabilities else None,
    }
    try:
        settings = variant_settings(args.trainer, explicit)
    except ValueError as exc:
        raise VesselSegError(str(exc)) from exc
    if args.num_workers is not None and args.num_workers < 0:
        raise VesselSegError("--num-workers must be 0 or more")
    if args.num_workers is None:
        env_override()  # a bad VS_N_PROC_DA / nnUNet_n_proc_DA fails here, before any work
    pretrained = _pretrained_checkpoint(args)
    check_name_part(args.trainer, "-tr")
    job = TrainingJob(
        args.dataset, args.configuration, parse_fold(args.fold), _plans_name(args), settings,
        resume=args.resume, pretrained=pretrained, trainer_name=args.trainer, validate_only=args.validate_only,
    )
    result = train(job)
    line = f"trained {result.epochs_run} epoch(s); model in {result.fold_dir}"
    if result.validation_summary:
        means = {k: round(v, 4) for k, v in result.validation_summary.get("foreground_mean", {}).items() if k in ("dice", "cldice", "vscore", "hd95")}
        line += f"; validation {means}"
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
