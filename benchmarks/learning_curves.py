"""Held-out learning curves of vessel_seg and nnU-Net v2, side by side, at equal iterations and equal wall time.

Usage::

    .venv/bin/python benchmarks/learning_curves.py --nnunet-python /tmp/nnunet_venv/bin/python \\
        [--seed 2026] [--cases 12] [--test-cases 4] [--epochs 10] [--iterations 50] [--snapshot-every 2] \\
        [--arms ours,nnunet,nnunet_resenc] [--ours-train-args "--optimizer sgd"] [--final-tta] [--work benchmarks/work/curves] [--out benchmarks/results]

One synthetic dataset (``--cases`` training and ``--test-cases`` held-out cases of ``--size``^3 from
``--seed``; pick a seed nobody tuned on) is trained on by every arm with the **same patch, batch,
spacing, stages, features, kernels and strides** (ours ``-pl cpu`` 3d_fullres):

- ``ours``: ``vs_train ... all -pl cpu`` (the ResU-Net of bottleneck residual blocks, defaults);
- ``nnunet``: ``nnUNetTrainer`` with PlainConvUNet (nnU-Net's default network) on configuration ``3d_vs``;
- ``nnunet_resenc``: ``nnUNetTrainer`` with the ResEnc-M preset's ResidualEncoderUNet on ``3d_vs_resenc``;
- ``ours+LOSS``: ours trained with ``--loss LOSS`` (run folder ``vsTrainer_LOSS``), so that losses are
  compared on one dataset and one preprocessing, e.g. ``--arms ours,ours+dice_ce_skeleton_recall``.

All train on every training case (fold ``all``) for ``--epochs`` x ``--iterations`` with the same
poly schedule, keep a snapshot every ``--snapshot-every`` epochs, and every snapshot segments the
held-out cases without mirroring; Dice and clDice come from vessel_seg's evaluator for all arms.
Wall time at a snapshot is the summed training-step time (data wait + step) up to it, from each
arm's own per-epoch log: the same definition for all arms, start-up excluded. On a shared machine
per-iteration times are noisy; equal-iteration numbers are not. Steps are resumable: a finished
training or evaluation is reused when ``--work`` already holds it.

``--final-postprocessed`` also scores every ours arm's final weights as a user gets them: plain
``vs_predict`` (mirroring TTA and the default postprocessing). Every score has Dice, clDice, mean
connected components per case and Betti-0 error.

Writes ``<out>/<YYYY-MM-DD>-<host>-curves.{json,md}`` (``--name`` replaces ``curves``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules; benchmarks/ is not a package
from bench_common import (  # noqa: E402
    HERE,
    BenchmarkContext,
    machine_info,
    measure,
    nnunet_command,
    ours_command,
    read_json,
    write_results,
)
from bench_plan import ensure_nnunet_preprocessed, ensure_ours_preprocessed, run_unmeasured  # noqa: E402
from bench_training import add_nnunet_same_configuration  # noqa: E402
from compare_nnunet import prepare_dataset  # noqa: E402

from vessel_seg.atomic import write_text_atomic  # noqa: E402
from vessel_seg.errors import VesselSegError  # noqa: E402
from vessel_seg.evaluation.evaluate import evaluate_folders  # noqa: E402

ARMS = ("ours", "nnunet", "nnunet_resenc")
OURS_PLANS = "cpu"
OURS_TRAINER = "vsTrainer"
SAMPLE_S = 2.0  # memory sampling of the training trees: rare, it costs CPU the arms would otherwise get
NNUNET_CONFIGURATIONS = {"nnunet": "3d_vs", "nnunet_resenc": "3d_vs_resenc"}


@dataclass
class Budget:
    epochs: int
    iterations: int
    val_iterations: int
    snapshot_every: int
    ours_train_args: tuple[str, ...] = ()  # extra vs_train flags of the ``ours`` arm (an A/B of one setting)

    @property
    def snapshot_epochs(self) -> list[int]:
        return list(range(self.snapshot_every, self.epochs + 1, self.snapshot_every))


def _done_marker(ctx: BenchmarkContext, arm: str) -> Path:
    return ctx.work / "timings" / f"curve_{arm}.done.json"


def is_ours(arm: str) -> bool:
    return arm == "ours" or arm.startswith("ours+")


def ours_loss_flags(arm: str) -> list[str]:
    """vs_train/vs_predict flags of an ours arm: ``ours+LOSS`` trains with ``--loss LOSS`` in its own run folder."""
    if arm == "ours":
        return []
    loss = arm.removeprefix("ours+")
    return ["-tr", f"{OURS_TRAINER}_{loss}"]


def _fold_dir(ctx: BenchmarkContext, arm: str) -> Path:
    if is_ours(arm):
        trainer = OURS_TRAINER if arm == "ours" else f"{OURS_TRAINER}_{arm.removeprefix('ours+')}"
        return ctx.work / "vs_results" / ctx.dataset / f"{trainer}__{OURS_PLANS}__3d_fullres" / "fold_all"
    return ctx.work / "nnUNet_results" / ctx.dataset / f"nnUNetTrainer__nnUNetPlans__{NNUNET_CONFIGURATIONS[arm]}" / "fold_all"


def train_arm(ctx: BenchmarkContext, arm: str, budget: Budget) -> dict:
    """Train one arm from scratch (unless done before); returns its measurement and per-epoch seconds."""
    marker = _done_marker(ctx, arm)
    if marker.is_file():
        return json.loads(marker.read_text())
    shutil.rmtree(_fold_dir(ctx, arm), ignore_errors=True)
    timings = ctx.work / "timings" / f"curve_{arm}.json"
    common = ["--epochs", str(budget.epochs)]
    if is_ours(arm):
        loss = [] if arm == "ours" else ["--loss", arm.removeprefix("ours+")]
        command = [sys.executable, "-m", "vessel_seg.cli.train", str(ctx.dataset_id), "3d_fullres", "all",
                   "-pl", OURS_PLANS, *common, "--iterations-per-epoch", str(budget.iterations),
                   "--val-iterations", str(budget.val_iterations), "--snapshot-every", str(budget.snapshot_every),
                   "--num-workers", str(ctx.num_processes), "--no-final-validation", *budget.ours_train_args,
                   *ours_loss_flags(arm), *loss]
        m = measure(ctx, f"curve_{arm}", "vessel_seg", "curves", command, ctx.ours_env(), interval_s=SAMPLE_S)
        epoch_s = [r["epoch_seconds"] for r in _jsonl(_fold_dir(ctx, arm) / "training_log.jsonl")]
    else:
        assert ctx.nnunet_python is not None
        command = [ctx.nnunet_python, str(HERE / "nnunet_driver.py"), "train", "-d", str(ctx.dataset_id),
                   "-c", NNUNET_CONFIGURATIONS[arm], "-f", "all", *common, "--iterations", str(budget.iterations),
                   "--val-iterations", str(budget.val_iterations), "--snapshot-every", str(budget.snapshot_every),
                   "--timings", str(timings)]
        m = measure(ctx, f"curve_{arm}", "nnunetv2", "curves", command, ctx.nnunet_env(), interval_s=SAMPLE_S)
        epoch_s = _nnunet_epoch_seconds(read_json(timings), budget.epochs)
    if m.returncode != 0:
        raise VesselSegError(f"training arm {arm} failed (rc {m.returncode}); see {m.log}\n{m.error_tail}")
    result = {"arm": arm, "wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb, "load_before": m.load_before,
              "epoch_train_s": epoch_s}
    write_text_atomic(marker, json.dumps(result, indent=2) + "\n")
    return result


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _nnunet_epoch_seconds(timings: dict, epochs: int) -> list[float]:
    """Summed data wait + step seconds per epoch from the driver's per-iteration records."""
    totals = [0.0] * epochs
    for record in timings.get("iterations", []):
        totals[int(record["epoch"])] += record["wait_s"] + record["step_s"]
    return totals


def evaluate_snapshot(ctx: BenchmarkContext, arm: str, epoch: int | None, tta: bool, postprocess: bool = False) -> dict:
    """Held-out Dice / clDice / components / Betti-0 error of one snapshot (``epoch`` None: the final weights).

    ``postprocess`` (ours only): vs_predict's own postprocessing, as a user gets it; otherwise the network
    alone. Cached under ``work``.
    """
    tag = f"{arm}_{'final' if epoch is None else f'epoch{epoch:04d}'}_{'tta' if tta else 'notta'}"
    tag += "_postprocessed" if postprocess else ""
    cache = ctx.work / "timings" / f"curve_eval_{tag}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    raw = ctx.work / "vs_raw" / ctx.dataset
    output = ctx.work / "predictions" / tag
    shutil.rmtree(output, ignore_errors=True)
    flags = [] if tta else ["--disable-tta"]
    if is_ours(arm):
        checkpoint = "final" if epoch is None else f"epoch{epoch:04d}"
        command = [sys.executable, "-m", "vessel_seg.cli.predict", "-i", str(raw / "imagesTs"), "-o", str(output),
                   "-d", str(ctx.dataset_id), "-c", "3d_fullres", "-pl", OURS_PLANS, "-f", "all",
                   "--checkpoint", checkpoint, "--device", "cpu", *ours_loss_flags(arm), *flags]
        command += [] if postprocess else ["--no-postprocessing"]
        env = ctx.ours_env()  # the network alone, as nnU-Net's prediction (its postprocessing is a separate step)
    else:
        checkpoint = "checkpoint_final.pth" if epoch is None else f"checkpoint_epoch{epoch:04d}.pth"
        command = [ctx.nnunet_python, str(HERE / "nnunet_driver.py"), "predict", "-d", str(ctx.dataset_id),
                   "-c", NNUNET_CONFIGURATIONS[arm], "-f", "all", "--checkpoint", checkpoint, "-i", str(raw / "imagesTs"),
                   "-o", str(output), "--timings", str(ctx.work / "timings" / f"curve_predict_{tag}.json"), *flags]
        env = ctx.nnunet_env()
    log = ctx.work / "logs" / f"curve_predict_{tag}.log"
    run_unmeasured(command, env, log, f"held-out prediction {tag}")
    result = evaluate_folders(raw / "labelsTs", output)
    point = {"arm": arm, "epoch": epoch, "tta": tta, "postprocessed": postprocess, "dice": round(result.mean("dice"), 4),
             "cldice": round(result.mean("cldice"), 4), "components": round(result.mean("components_pred"), 2),
             "betti0_error": round(result.mean("betti0_error"), 2)}
    write_text_atomic(cache, json.dumps(point) + "\n")
    return point


def add_resenc_configuration(ctx: BenchmarkContext, ours_plans: Path) -> None:
    """nnU-Net's ResEnc-M network on the same sizes and preprocessed data as ``3d_vs``."""
    plans = json.loads(ensure_nnunet_preprocessed(ctx).read_text())
    if NNUNET_CONFIGURATIONS["nnunet_resenc"] in plans["configurations"]:
        return
    command = [ctx.nnunet_python, str(HERE / "nnunet_driver.py"), "add-config", "-d", str(ctx.dataset_id),
               "--ours-plans", str(ours_plans), "--name", NNUNET_CONFIGURATIONS["nnunet_resenc"], "--network", "resenc",
               "-np", str(ctx.num_processes)]
    run_unmeasured(command, ctx.nnunet_env(), ctx.work / "logs" / "setup_nnunet_resenc.log", "nnU-Net ResEnc-M configuration")


def arm_curve(ctx: BenchmarkContext, arm: str, budget: Budget, trained: dict) -> list[dict]:
    """Held-out points of one arm: iterations, cumulative training seconds, Dice, clDice (no TTA)."""
    epoch_s = trained["epoch_train_s"]
    points = []
    for epoch in budget.snapshot_epochs:
        point = evaluate_snapshot(ctx, arm, epoch, tta=False)
        point.update(iterations=epoch * budget.iterations, train_s=round(sum(epoch_s[:epoch]), 1))
        points.append(point)
        print(f"    {arm:14s} {point['iterations']:5d} it {point['train_s']:7.0f} s  Dice {point['dice']:.3f}  "
              f"clDice {point['cldice']:.3f}", flush=True)
    return points


def value_at_time(points: list[dict], seconds: float, key: str = "dice") -> float | None:
    """``key`` of the last snapshot reached within ``seconds`` of training (None: none reached)."""
    reached = [p for p in points if p["train_s"] <= seconds * 1.0001]
    return reached[-1][key] if reached else None


ARM_NAMES = {"ours": "vessel_seg (ResU-Net, bottleneck blocks)", "nnunet": "nnU-Net v2 PlainConvUNet",
             "nnunet_resenc": "nnU-Net v2 ResEnc-M"}


def arm_name(arm: str) -> str:
    return ARM_NAMES.get(arm) or f"vessel_seg --loss {arm.removeprefix('ours+')}"


def _final_rows(points: list[dict]) -> list[str]:
    lines = ["| arm | Dice | clDice | components / case | Betti-0 error |", "|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {arm_name(p['arm'])} | {p['dice']:.3f} | {p['cldice']:.3f} | {p.get('components', float('nan')):.1f} | "
                     f"{p.get('betti0_error', float('nan')):.1f} |")
    return lines


def render(result: dict) -> str:
    arms = list(result["curves"])
    names = {a: arm_name(a) for a in arms}
    lines = [f"# Held-out learning curves ({result['date']}, {result['host']})", "",
             f"{result['cases']} training + {result['test_cases']} held-out synthetic cases of {result['size']}^3 "
             f"(seed {result['seed']}); every arm: patch {result['plan']['patch_size']}, batch {result['plan']['batch_size']}, "
             f"features {result['plan']['features']}, fold all, {result['epochs']} x {result['iterations']} iterations, "
             f"{result['machine'].get('cpus', '?')} CPU cores. Held-out Dice / clDice without TTA.", "",
             "## Equal iterations", "", "| iterations | " + " | ".join(names[a] for a in arms) + " |",
             "|---|" + "---|" * len(arms)]
    by_arm = {a: {p["iterations"]: p for p in result["curves"][a]} for a in arms}
    for its in sorted(by_arm[arms[0]]):
        cells = [f"{by_arm[a][its]['dice']:.3f} / {by_arm[a][its]['cldice']:.3f}" if its in by_arm[a] else "-" for a in arms]
        lines.append(f"| {its} | " + " | ".join(cells) + " |")
    lines += ["", "## Training seconds per iteration (median epoch, data wait + step)", "",
              "| " + " | ".join(names[a] for a in arms) + " |", "|" + "---|" * len(arms),
              "| " + " | ".join(f"{result['s_per_iteration'][a]:.3f}" for a in arms) + " |"]
    if "ours" in arms and any(not is_ours(a) for a in arms):
        lines += ["", "## Equal wall time (ours at the training seconds each nnU-Net snapshot took)", "",
                  "| arm | iterations | training s | its Dice | ours Dice at that time |", "|---|---|---|---|---|"]
        for arm in (a for a in arms if not is_ours(a)):
            for p in result["curves"][arm]:
                ours = value_at_time(result["curves"]["ours"], p["train_s"])
                lines.append(f"| {names[arm]} | {p['iterations']} | {p['train_s']:.0f} | {p['dice']:.3f} | "
                             f"{'-' if ours is None else f'{ours:.3f}'} |")
    if result.get("final_tta"):
        lines += ["", "## Final weights with mirroring TTA, network alone", "", *_final_rows(result["final_tta"])]
    if result.get("final_postprocessed"):
        lines += ["", "## Final weights as plain vs_predict gives them (TTA + default postprocessing)", "",
                  *_final_rows(result["final_postprocessed"])]
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def run(args: argparse.Namespace) -> dict:
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS and not (a.startswith("ours+") and len(a) > 5) for a in arms):
        raise VesselSegError(f"--arms {args.arms!r}: use a comma-separated subset of {','.join(ARMS)} or ours+LOSS")
    nn_python, nn_command = None, None
    if any(not is_ours(a) for a in arms):
        nn_python, nn_command = nnunet_command(args.nnunet_python)
    ctx = BenchmarkContext(work=args.work.resolve(), dataset_id=args.dataset_id, num_processes=args.num_processes,
                           ours_command=ours_command(), nnunet_command=nn_command, nnunet_python=nn_python)
    budget = Budget(args.epochs, args.iterations, args.val_iterations, args.snapshot_every,
                    tuple(shlex.split(args.ours_train_args)))
    if not (ctx.work / "vs_raw" / ctx.dataset / "dataset.json").is_file():
        prepare_dataset(ctx, args.cases, args.test_cases, args.size, args.seed, tuple(args.spacing))
    ours_plans = ensure_ours_preprocessed(ctx, OURS_PLANS)
    if "nnunet" in arms or "nnunet_resenc" in arms:
        add_nnunet_same_configuration(ctx, ours_plans)
    if "nnunet_resenc" in arms:
        add_resenc_configuration(ctx, ours_plans)
    config = json.loads(ours_plans.read_text())["configurations"]["3d_fullres"]
    result = {"date": datetime.date.today().isoformat(), "host": socket.gethostname().split(".")[0],
              "machine": machine_info(), "seed": args.seed, "cases": args.cases, "test_cases": args.test_cases,
              "size": args.size, "epochs": args.epochs, "iterations": args.iterations,
              "plan": {"patch_size": config["patch_size"], "batch_size": config["batch_size"],
                       "features": config["network"]["features_per_stage"]},
              "curves": {}, "training": {}, "s_per_iteration": {}}
    for arm in arms:
        trained = train_arm(ctx, arm, budget)
        result["training"][arm] = trained
        result["s_per_iteration"][arm] = round(_median(trained["epoch_train_s"]) / budget.iterations, 4)
        result["curves"][arm] = arm_curve(ctx, arm, budget, trained)
    if args.final_tta:
        result["final_tta"] = [evaluate_snapshot(ctx, arm, None, tta=True) for arm in arms]
    if args.final_postprocessed:
        result["final_postprocessed"] = [evaluate_snapshot(ctx, arm, None, True, postprocess=True) for arm in arms if is_ours(arm)]
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--test-cases", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.5, 0.5))
    parser.add_argument("--seed", type=int, default=2026, help="dataset seed (use one nobody tuned on)")
    parser.add_argument("--dataset-id", type=int, default=520)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=2, help="pseudo-validation batches per epoch")
    parser.add_argument("--snapshot-every", type=int, default=2, help="epochs between evaluated snapshots")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="augmentation workers of every arm")
    parser.add_argument("--ours-train-args", default="",
                        help="extra vs_train flags for the ours arm, e.g. '--optimizer sgd' (use a fresh --work)")
    parser.add_argument("--final-tta", action="store_true", help="also score the final weights with mirroring TTA")
    parser.add_argument("--final-postprocessed", action="store_true",
                        help="also score ours' final weights as plain vs_predict gives them (TTA + default postprocessing)")
    parser.add_argument("--name", default="curves", help="result file name part: <date>-<host>-<name>.{json,md}")
    parser.add_argument("--nnunet-python", help="interpreter of an environment with nnunetv2")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "curves")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.snapshot_every < 1 or args.epochs % args.snapshot_every:
        raise SystemExit("--epochs must be a multiple of --snapshot-every")
    try:
        result = run(args)
    except VesselSegError as exc:
        print(f"learning_curves: {exc}", file=sys.stderr)
        return 2
    write_results(args.out, result, args.name, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
