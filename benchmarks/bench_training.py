"""Section ``train``: seconds per training iteration, data wait and peak memory of both frameworks.

Two comparisons, each a fresh training process per framework (fold 0, no final validation):

- ``*_train_same``: the same patch size, batch size, stages, features per stage, kernel sizes,
  strides and spacing. Ours uses the ``-pl cpu`` 3d_fullres plan; nnU-Net gets a configuration
  ``3d_vs`` (``nnunet_driver.py add-config``): its 3d_fullres with those sizes, preprocessed anew.
  Both train ``epochs x iterations`` with ``val_iterations`` validation batches per epoch, then
  their checkpoints serve the inference section.
- ``*_train_default``: each framework's own default 3d_fullres plan (ours ``vs_plans``, nnU-Net
  ``nnUNetPlans``) for one epoch of a few iterations, for the time per iteration only.

Per-iteration timings come from the drivers (``vs_driver.py``, ``nnunet_driver.py``): one
iteration is the wait for its batch plus its step. The first ``warmup`` iterations of a run are
dropped (allocation, thread-pool and data-loader start-up); ``s_per_it`` is the median of the
rest and ``data_wait_s_per_it`` the median wait (``data_wait_mean_s`` the mean).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_common import HERE, BenchmarkContext, Measurement, measure, read_json
from bench_plan import ensure_nnunet_preprocessed, ensure_ours_preprocessed, plans_summary, run_unmeasured
from nnunet_driver import same_settings_configuration  # imports nnunetv2 only inside its commands

from vessel_seg.model_folder import DEFAULT_TRAINER

OURS_SAME_PLANS = "cpu"
OURS_DEFAULT_PLANS = "vs_plans"
NNUNET_PLANS = "nnUNetPlans"
NNUNET_SAME_CONFIGURATION = "3d_vs"


@dataclass
class TrainingBudget:
    """Iterations to run: ``epochs x iterations`` (same settings) and ``default_iterations`` (defaults)."""

    epochs: int = 2
    iterations: int = 25
    val_iterations: int = 2
    default_iterations: int = 3
    warmup: int = 1
    ours_amp: bool = True


def iteration_stats(timings: dict, warmup: int) -> dict[str, float]:
    """Median seconds per iteration and data wait from a driver's ``iterations`` list (see module docstring).

    Returns ``{}`` when no iteration is left after dropping ``warmup``.
    """
    rows = timings.get("iterations", [])[warmup:]
    if not rows:
        return {}
    totals = [r["wait_s"] + r["step_s"] for r in rows]
    waits = [r["wait_s"] for r in rows]
    return {"s_per_it": round(statistics.median(totals), 3), "s_per_it_mean": round(statistics.fmean(totals), 3),
            "data_wait_s_per_it": round(statistics.median(waits), 4), "data_wait_mean_s": round(statistics.fmean(waits), 4),
            "iterations_timed": len(rows), "train_total_s": round(timings.get("run_training_s", 0.0), 2)}


def _timings_path(ctx: BenchmarkContext, name: str) -> Path:
    path = ctx.work / "timings" / f"{name}.json"
    path.unlink(missing_ok=True)
    return path


def _finish(m: Measurement, timings: Path, warmup: int, plans: dict[str, dict]) -> Measurement:
    m.metrics = iteration_stats(read_json(timings), warmup)
    m.plans = plans
    if m.returncode == 0 and not m.metrics:
        m.error_tail = f"no timed iterations in {timings}"
    if m.metrics:
        print(f"    {m.metrics['s_per_it']:.2f} s/it (median of {m.metrics['iterations_timed']}), "
              f"data wait {m.metrics['data_wait_s_per_it']:.3f} s/it", flush=True)
    return m


def train_ours(ctx: BenchmarkContext, name: str, plans_name: str, epochs: int, iterations: int, val_iterations: int,
               budget: TrainingBudget) -> Measurement:
    """Train our 3d_fullres model of ``plans_name`` (fold 0) from scratch through ``vs_driver.py train``."""
    plans = ensure_ours_preprocessed(ctx, plans_name)
    shutil.rmtree(ctx.work / "vs_results" / ctx.dataset / f"{DEFAULT_TRAINER}__{plans_name}__3d_fullres", ignore_errors=True)
    timings = _timings_path(ctx, name)
    command = [sys.executable, str(HERE / "vs_driver.py"), "--timings", str(timings), "train", str(ctx.dataset_id),
               "3d_fullres", "0", "-pl", plans_name, "--epochs", str(epochs), "--iterations-per-epoch", str(iterations),
               "--val-iterations", str(val_iterations), "--num-workers", str(ctx.num_processes), "--device", "cpu",
               "--checkpoint-every", str(epochs), "--no-final-validation", "--no-validation-probabilities",
               *([] if budget.ours_amp else ["--no-amp"])]
    m = measure(ctx, name, "vessel_seg", "train", command, ctx.ours_env())
    return _finish(m, timings, budget.warmup, {k: v for k, v in plans_summary(plans).items() if k == "3d_fullres"})


def add_nnunet_same_configuration(ctx: BenchmarkContext, ours_plans: Path) -> None:
    """Add ``3d_vs`` (our sizes) to nnU-Net's plans and preprocess for it, unless already there and current."""
    assert ctx.nnunet_python is not None
    plans_path = ensure_nnunet_preprocessed(ctx)
    ours = json.loads(ours_plans.read_text())["configurations"]["3d_fullres"]
    plans = json.loads(plans_path.read_text())
    wanted = same_settings_configuration(plans, ours, NNUNET_SAME_CONFIGURATION)["configurations"][NNUNET_SAME_CONFIGURATION]
    data_dir = plans_path.parent / wanted["data_identifier"]
    if plans["configurations"].get(NNUNET_SAME_CONFIGURATION) == wanted and data_dir.is_dir():
        return
    shutil.rmtree(data_dir, ignore_errors=True)
    command = [ctx.nnunet_python, str(HERE / "nnunet_driver.py"), "add-config", "-d", str(ctx.dataset_id),
               "--ours-plans", str(ours_plans), "--name", NNUNET_SAME_CONFIGURATION, "-np", str(ctx.num_processes)]
    run_unmeasured(command, ctx.nnunet_env(), ctx.work / "logs" / "setup_nnunet_3d_vs.log",
                    "nnU-Net same-settings configuration")


def train_nnunet(ctx: BenchmarkContext, name: str, configuration: str, epochs: int, iterations: int,
                 val_iterations: int, budget: TrainingBudget) -> Measurement:
    """Train ``nnUNetTrainer`` on ``configuration`` (fold 0) from scratch through ``nnunet_driver.py train``."""
    assert ctx.nnunet_python is not None
    plans_path = ensure_nnunet_preprocessed(ctx)
    shutil.rmtree(ctx.work / "nnUNet_results" / ctx.dataset / f"nnUNetTrainer__{NNUNET_PLANS}__{configuration}",
                  ignore_errors=True)
    timings = _timings_path(ctx, name)
    command = [ctx.nnunet_python, str(HERE / "nnunet_driver.py"), "train", "-d", str(ctx.dataset_id), "-c", configuration,
               "--epochs", str(epochs), "--iterations", str(iterations), "--val-iterations", str(val_iterations),
               "--timings", str(timings)]
    m = measure(ctx, name, "nnunetv2", "train", command, ctx.nnunet_env())
    return _finish(m, timings, budget.warmup, {k: v for k, v in plans_summary(plans_path).items() if k == configuration})


def run_training_section(ctx: BenchmarkContext, budget: TrainingBudget) -> list[Measurement]:
    """Same-settings training (ours, then nnU-Net), then both default plans for a few iterations."""
    results = []
    ours_plans = ensure_ours_preprocessed(ctx, OURS_SAME_PLANS)
    if ctx.nnunet_python:
        add_nnunet_same_configuration(ctx, ours_plans)
    results.append(train_ours(ctx, "ours_train_same", OURS_SAME_PLANS, budget.epochs, budget.iterations,
                              budget.val_iterations, budget))
    if ctx.nnunet_python:
        results.append(train_nnunet(ctx, "nnunet_train_same", NNUNET_SAME_CONFIGURATION, budget.epochs,
                                    budget.iterations, budget.val_iterations, budget))
    if budget.default_iterations > budget.warmup:
        results.append(train_ours(ctx, "ours_train_default", OURS_DEFAULT_PLANS, 1, budget.default_iterations, 1, budget))
        if ctx.nnunet_python:
            results.append(train_nnunet(ctx, "nnunet_train_default", "3d_fullres", 1, budget.default_iterations, 1, budget))
    return results
