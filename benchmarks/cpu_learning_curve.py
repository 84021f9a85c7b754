"""Held-out learning curve of the CPU preset: does a 3D model learn the synthetic vessels in 10 minutes?

Usage::

    .venv/bin/python benchmarks/cpu_learning_curve.py [--epochs 20] [--iterations 50] [--snapshot-every 2] \\
        [--cases 12] [--test-cases 4] [--size 96] [--fold all] [--work /tmp/vs_cpu_curve] [--out benchmarks/results]

Steps, each in a private ``VS_RAW`` / ``VS_PREPROCESSED`` / ``VS_RESULTS`` tree under ``--work``:

1. generate ``--cases`` training and ``--test-cases`` held-out synthetic cases (``imagesTs`` / ``labelsTs``);
2. ``-pl cpu`` plans and preprocessing of ``3d_fullres`` (not timed);
3. ``vs_train DATASET 3d_fullres FOLD -pl cpu --snapshot-every S --no-final-validation`` in a subprocess:
   its wall time, from launch to exit (start-up, data workers, checkpoints included), is the training
   time that the 10-minute target is about;
4. every snapshot (and the final weights) segments the held-out cases without mirroring, the final
   weights also with mirroring TTA; Dice and clDice come from :func:`vessel_seg.evaluation.evaluate_folders`.

The training time of a snapshot is the wall time of the training command scaled by the share of the
summed epoch times (``training_log.jsonl``) spent up to that epoch, so start-up is spread evenly.
Writes ``<out>/<YYYY-MM-DD>-<host>-cpu-learning.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import vessel_seg_roots  # noqa: E402  (sibling script, not a package)

DATASET_ID = 510
PLANS = "cpu"
CONFIGURATION = "3d_fullres"


def prepare(args: argparse.Namespace) -> dict:
    """Generate and preprocess the dataset (reused when ``--work`` already holds it); returns the plan."""
    from vessel_seg.dataset_conversion.synthetic import generate_dataset
    from vessel_seg.paths import dataset_name, raw_root
    from vessel_seg.planners.pipeline import plan_and_preprocess

    if not (raw_root() / dataset_name(DATASET_ID, "Synthetic") / "dataset.json").is_file():
        generate_dataset(DATASET_ID, args.cases, num_test_cases=args.test_cases, size=args.size, seed=args.seed)
    plans = plan_and_preprocess(DATASET_ID, [CONFIGURATION], num_workers=2, plans_name=PLANS).plans
    config = plans.configuration(CONFIGURATION)
    return {
        "spacing": list(config.spacing), "patch_size": list(config.patch_size), "batch_size": config.batch_size,
        "features": list(config.network.features_per_stage),
    }


def train_timed(args: argparse.Namespace, env: dict[str, str], log_path: Path) -> float:
    """Run ``vs_train`` as users do; returns its wall seconds."""
    command = [
        sys.executable, "-m", "vessel_seg.cli.train", str(DATASET_ID), CONFIGURATION, args.fold, "-pl", PLANS,
        "--epochs", str(args.epochs), "--iterations-per-epoch", str(args.iterations),
        "--val-iterations", str(args.val_iterations), "--num-workers", str(args.num_workers),
        "--snapshot-every", str(args.snapshot_every), "--no-final-validation", "--seed", str(args.seed),
    ]
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        result = subprocess.run(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"training failed (exit {result.returncode}); see {log_path}")
    return seconds


def evaluate_checkpoint(model_dir: Path, fold: str, checkpoint: str, tta: bool, work: Path) -> dict:
    """Segment the held-out cases with one checkpoint; mean foreground Dice/clDice and seconds per case."""
    from vessel_seg.evaluation.evaluate import evaluate_folders
    from vessel_seg.inference.prediction_run import predict_folder
    from vessel_seg.inference.predictor import load_trained_model
    from vessel_seg.paths import dataset_name, raw_root

    raw = raw_root() / dataset_name(DATASET_ID, "Synthetic")
    out = work / "predictions" / f"{checkpoint}_{'tta' if tta else 'no_tta'}"
    model = load_trained_model(model_dir, folds=[fold], checkpoint=checkpoint)
    seconds = predict_folder(model, raw / "imagesTs", out, use_tta=tta, overwrite=True)
    means = evaluate_folders(raw / "labelsTs", out).summary["foreground_mean"]
    return {
        "checkpoint": checkpoint, "tta": tta, "dice": means["dice"], "cldice": means["cldice"],
        "vscore": means.get("vscore"), "seconds_per_case": sum(seconds.values()) / max(len(seconds), 1),
    }


def curve(args: argparse.Namespace, work: Path, train_wall_s: float) -> list[dict]:
    """Held-out metrics of every snapshot, with the training seconds spent to reach it."""
    from vessel_seg.model_folder import model_dir, snapshot_name
    from vessel_seg.paths import dataset_name

    folder = model_dir(dataset_name(DATASET_ID, "Synthetic"), CONFIGURATION, PLANS)
    records = [json.loads(line) for line in (folder / f"fold_{args.fold}" / "training_log.jsonl").read_text().splitlines()]
    epoch_seconds = [r["epoch_seconds"] for r in records]
    scale = train_wall_s / sum(epoch_seconds)
    points = []
    for epoch in range(args.snapshot_every, args.epochs + 1, args.snapshot_every):
        point = evaluate_checkpoint(folder, args.fold, snapshot_name(epoch), False, work)
        point.update(epoch=epoch, iterations=epoch * args.iterations,
                     train_seconds=round(sum(epoch_seconds[:epoch]) * scale, 1),
                     pseudo_dice=records[epoch - 1]["pseudo_dice"])
        points.append(point)
        print(f"epoch {epoch:3d} ({point['train_seconds']:6.0f} s): held-out Dice {point['dice']:.3f} clDice {point['cldice']:.3f}")
    for tta in (False, True):
        point = evaluate_checkpoint(folder, args.fold, "final", tta, work)
        point.update(epoch=args.epochs, iterations=args.epochs * args.iterations, train_seconds=round(train_wall_s, 1))
        points.append(point)
    return points


def write_report(result: dict, out_dir: Path) -> Path:
    from vessel_seg.atomic import write_text_atomic
    from vessel_seg.evaluation.atomic import save_figure_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{result['date']}-{result['host']}-cpu-learning"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    plan = result["plan"]
    lines = [
        f"# CPU preset learning curve ({result['date']}, {result['host']})", "",
        f"{result['cases']} training + {result['test_cases']} held-out synthetic cases of {result['size']}^3; "
        f"`-pl cpu` 3d_fullres: patch {plan['patch_size']}, batch {plan['batch_size']}, features {plan['features']}; "
        f"fold {result['fold']}; {result['epochs']} epochs x {result['iterations']} iterations; {result['threads']} CPU cores.", "",
        f"Training wall time (vs_train, start to exit): **{result['train_wall_s'] / 60:.1f} min**.", "",
        "| epoch | iterations | training s | TTA | held-out Dice | clDice | V-score | s/case |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        lines.append(
            f"| {p['epoch']}{'' if p['checkpoint'].startswith('epoch') else ' (final)'} | {p['iterations']} | {p['train_seconds']:.0f} "
            f"| {'yes' if p['tta'] else 'no'} | {p['dice']:.3f} | {p['cldice']:.3f} | {p['vscore']:.3f} | {p['seconds_per_case']:.1f} |"
        )
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snaps = [p for p in result["points"] if p["checkpoint"].startswith("epoch")]
    fig, ax = plt.subplots(figsize=(6, 4))
    minutes = [p["train_seconds"] / 60 for p in snaps]
    ax.plot(minutes, [p["dice"] for p in snaps], "o-", label="held-out Dice (no TTA)")
    ax.plot(minutes, [p["cldice"] for p in snaps], "s-", label="held-out clDice (no TTA)")
    ax.axhline(0.85, color="grey", linestyle="--", linewidth=1, label="target Dice 0.85")
    ax.set_xlabel("training wall time (min)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure_atomic(stem.with_suffix(".png"), fig, dpi=110)
    plt.close(fig)
    return stem.with_suffix(".md")


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--test-cases", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=5, help="pseudo-validation batches per epoch")
    parser.add_argument("--snapshot-every", type=int, default=2, help="epochs between evaluated snapshots")
    parser.add_argument("--num-workers", type=int, default=1, help="augmentation worker processes")
    parser.add_argument("--fold", default="all", help="fold to train ('all' trains on every training case)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vs_cpu_curve"))
    parser.add_argument("--out", type=Path, default=here / "results")
    args = parser.parse_args(argv)
    if args.snapshot_every < 1 or args.epochs % args.snapshot_every:
        parser.error("--epochs must be a multiple of --snapshot-every")

    work = args.work.resolve()
    os.environ.update(vessel_seg_roots(work))
    plan = prepare(args)
    train_wall_s = train_timed(args, dict(os.environ), work / "train.log")
    print(f"training took {train_wall_s:.0f} s")
    result = {
        "date": datetime.date.today().isoformat(), "host": socket.gethostname().split(".")[0],
        "threads": os.cpu_count(), "cases": args.cases, "test_cases": args.test_cases, "size": args.size,
        "fold": args.fold, "epochs": args.epochs, "iterations": args.iterations, "plan": plan,
        "train_wall_s": round(train_wall_s, 1), "points": curve(args, work, train_wall_s),
    }
    print(write_report(result, args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
