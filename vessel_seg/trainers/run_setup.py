"""What a training run sets up before its first step: runtime, fold split, model parts, resume state, the step,
the fold folder and the start banner (the loop itself is :class:`vessel_seg.trainers.trainer.Trainer`)."""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vessel_seg.atomic import remove_stale_temporaries
from vessel_seg.device import configure_backends, dtype_name, select_device
from vessel_seg.errors import CheckpointError
from vessel_seg.trainers.checkpointer import Checkpointer, unwrap
from vessel_seg.trainers.distributed import DistributedContext, barrier, init_distributed
from vessel_seg.trainers.optimization import with_this_machines_kernels
from vessel_seg.trainers.progress import TrainingLog
from vessel_seg.trainers.settings import TrainingSettings
from vessel_seg.trainers.splits import fold_cases, load_or_create_splits
from vessel_seg.trainers.step import CompileDecision, TrainingStep, compile_decision
from vessel_seg.trainers.training_context import TrainingContext, TrainingJob
from vessel_seg.trainers.workers import resolve_num_workers

log = logging.getLogger(__name__)


@dataclass
class ModelParts:
    """The network and what trains it (before DDP wrapping and compiling)."""

    network: torch.nn.Module
    in_channels: int
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loss_fn: Callable


@dataclass
class RunState:
    """Where training stands: the first epoch to run, the best EMA score so far and the EMA itself."""

    start_epoch: int = 0
    best_score: float = -math.inf
    ema: float | None = None


@dataclass
class Run:
    ctx: TrainingContext
    settings: TrainingSettings
    dist: DistributedContext
    model: ModelParts
    checkpointer: Checkpointer
    progress: TrainingLog
    state: RunState


def prepare_fold(fold_dir: Path, progress: TrainingLog, state: RunState, settings: TrainingSettings) -> None:
    """Log truncated to the resumed epoch, temporaries of killed writes removed, stale validation dropped."""
    progress.truncate(state.start_epoch)
    # A fold belongs to one run: temporaries of a killed checkpoint write are garbage now, whatever their age.
    remove_stale_temporaries(fold_dir, older_than_s=0)
    if state.start_epoch < settings.epochs:
        drop_stale_validation(fold_dir)


def start_runtime(settings: TrainingSettings) -> tuple[torch.device, DistributedContext]:
    """The device (this process's GPU under DDP), its backend settings, the process group and seeds."""
    device = select_device(settings.device)
    configure_backends(device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(settings.seed + dist.rank)
    np.random.seed(settings.seed + dist.rank)
    return device, dist


def resolve_workers(settings: TrainingSettings, device: torch.device, dist: DistributedContext) -> TrainingSettings:
    """``settings`` with ``num_workers`` resolved (None: VS_N_PROC_DA, nnUNet_n_proc_DA, else from CPUs and device)."""
    workers = resolve_num_workers(settings.num_workers, device.type)
    if dist.is_main:
        log.info("%s", workers.describe())
    return replace(settings, num_workers=workers.count)


def fold_split(ctx: TrainingContext, job: TrainingJob, dist: DistributedContext) -> tuple[list[str], list[str]]:
    """Training and validation cases of the fold (the main process writes the splits)."""
    splits = load_or_create_splits(ctx.preprocessed_dir, ctx.case_ids) if dist.is_main else None
    barrier(dist)
    if splits is None:
        splits = load_or_create_splits(ctx.preprocessed_dir, ctx.case_ids)
    return fold_cases(splits, job.fold)


def resume_state(checkpointer: Checkpointer, model: ModelParts, settings: TrainingSettings, device: torch.device) -> RunState:
    """Weights, optimiser and scaler state from the latest checkpoint (``--continue``)."""
    state = checkpointer.load_for_resume(map_location=device)
    if state is None:
        log.warning("--continue: no checkpoint in %s, starting from scratch", checkpointer.fold_dir)
        return RunState()
    check_same_run(checkpointer.fold_dir, (state.get("metadata") or {}).get("settings") or {}, settings)
    unwrap(model.network).load_state_dict(state["network_weights"])
    model.optimizer.load_state_dict(with_this_machines_kernels(state["optimizer_state"], model.optimizer))
    if model.scaler is not None and state.get("grad_scaler_state"):
        model.scaler.load_state_dict(state["grad_scaler_state"])
    return RunState(int(state["epoch"]), float(state.get("best_score", -math.inf)), state.get("ema_score"))


# Settings that define what a run learns: --continue must not mix them (the optimiser state of one
# optimiser cannot drive the other; a new loss is a new experiment, give it its own -tr).
RUN_DEFINING_SETTINGS = {"optimizer": "--optimizer", "loss": "--loss"}


def check_same_run(fold_dir: Path, saved: dict, settings: TrainingSettings) -> None:
    for key, flag in RUN_DEFINING_SETTINGS.items():
        before, now = saved.get(key), getattr(settings, key)
        if before is not None and before != now:
            raise CheckpointError(
                f"{fold_dir}: this run was trained with {flag} {before}, not {now}; continue it with {flag} {before} "
                "or start another run with -tr NAME"
            )


def make_training_step(
    model: ModelParts, settings: TrainingSettings, device: torch.device, dist: DistributedContext,
    dtype: torch.dtype | None, memory_format: torch.memory_format, remaining_iterations: int,
) -> tuple[TrainingStep, CompileDecision]:
    """The per-iteration step around the (DDP-wrapped, maybe compiled) network."""
    wrapped = model.network
    if dist.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model.network, device_ids=[device.index] if device.type == "cuda" else None
        )
    decision = compile_decision(settings.compile, device, remaining_iterations)
    step = TrainingStep(
        wrapped, model.optimizer, model.loss_fn, device, dtype=dtype, grad_clip=settings.grad_clip,
        memory_format=memory_format, scaler=model.scaler, compile_model=decision.enabled,
    )
    return step, decision


def drop_stale_validation(fold_dir: Path) -> None:
    """Remove the validation of earlier weights: the weights are about to change, and a model selection
    (vs_find_best_configuration) must not rank a fold by a validation its final weights never had."""
    folder = fold_dir / "validation"
    if folder.is_dir():
        shutil.rmtree(folder)
        log.info("%s: removed the validation of the earlier weights (this run changes them)", folder)


def start_banner(
    run: Run, device: torch.device, dtype: torch.dtype | None, compiling: CompileDecision,
    memory_format: torch.memory_format, num_train: int, num_val: int, batch_size: int,
) -> str:
    """One line with what decides the speed of this run."""
    where = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    layout = "channels_last_3d" if memory_format == torch.channels_last_3d else "contiguous"
    batch = f"{batch_size} x {run.dist.world_size} processes" if run.dist.enabled else str(batch_size)
    return (
        f"training on {where}: mixed precision: {dtype_name(dtype)}, compile: {compiling}, memory format: {layout}, "
        f"{run.settings.num_workers} worker(s), {num_train} training / {num_val} validation cases, "
        f"patch {'x'.join(str(s) for s in run.ctx.config.patch_size)}, batch {batch}"
    )
