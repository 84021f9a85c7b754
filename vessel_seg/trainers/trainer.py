"""The training loop, composed from small parts (data, network, loss, optimiser, log, checkpoints).

``train(job)`` is the library entry point behind ``vs_train``. Everything about the data comes from
the plans; everything about the run from :class:`TrainingSettings`.

:class:`Trainer` runs one job; its ``make_*`` methods build the parts (network, loss, optimiser,
augmentation) and ``run_epoch`` / ``end_epoch`` / ``finish`` are the steps of the loop, so a
variant subclasses it and overrides only what it changes, as nnU-Net's trainer classes do. Variants
are registered by name (:mod:`vessel_seg.trainers.variants`); ``vs_train -tr NAME`` picks one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vessel_seg.case_store import list_cases
from vessel_seg.checkpoint import load_checkpoint
from vessel_seg.device import amp_dtype, preferred_memory_format
from vessel_seg.errors import CheckpointError, TrainingError
from vessel_seg.file_lock import hold_or_refuse
from vessel_seg.model_folder import DEFAULT_TRAINER, snapshot_name
from vessel_seg.networks.registry import build_network
from vessel_seg.paths import raw_root
from vessel_seg.trainers.augmentation import Augmentation, training_transforms, validation_transforms
from vessel_seg.trainers.background import BackgroundBatches
from vessel_seg.trainers.checkpointer import Checkpointer, load_pretrained_weights, settings_metadata
from vessel_seg.trainers.dataloading import PatchLoader
from vessel_seg.trainers.distributed import DistributedContext, barrier, shutdown
from vessel_seg.trainers.losses import build_loss, loss_entry
from vessel_seg.trainers.optimization import build_optimizer, scheduled_lr, set_lr
from vessel_seg.trainers.progress import EpochRecord, TrainingLog, fold_text_log
from vessel_seg.trainers.run_setup import (
    ModelParts,
    Run,
    RunState,
    fold_split,
    make_training_step,
    prepare_fold,
    resolve_workers,
    resume_state,
    start_banner,
    start_runtime,
)
from vessel_seg.trainers.settings import TrainingSettings
from vessel_seg.trainers.step import TrainingStep, make_grad_scaler
from vessel_seg.trainers.stop_request import StopRequest, TrainingInterrupted, resume_command
from vessel_seg.trainers.training_context import TrainingContext, TrainingJob, copy_model_files
from vessel_seg.trainers.validation import (
    PseudoMetrics,
    predict_next_stage,
    selection_score,
    validate_full_volumes,
)
from vessel_seg.trainers.variants import trainer_for

log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    fold_dir: Path
    epochs_run: int
    best_score: float
    validation_summary: dict | None
    network: torch.nn.Module | None = None


def default_augmentation(ctx: TrainingContext, settings: TrainingSettings, train: bool) -> Augmentation:
    """nnU-Net's augmentation recipe for the configuration (validation: none), with the plans' anisotropy threshold,
    the run's ``settings.augmentation`` changes, and the skeleton channel if the loss reads it."""
    cascade_labels = ctx.label_values[1:] if ctx.previous_stage_dir is not None else None
    num_channels = ctx.info.num_channels
    skeleton = loss_entry(settings.loss).needs_skeleton
    if train:
        return training_transforms(
            ctx.config.patch_size, ctx.config.spacing[-len(ctx.config.patch_size):],
            anisotropy_threshold=ctx.config.anisotropy_threshold, cascade_labels=cascade_labels,
            num_image_channels=num_channels, skeleton_target=skeleton, **settings.augmentation,
        )
    return validation_transforms(
        ctx.config.patch_size, cascade_labels=cascade_labels, num_image_channels=num_channels, skeleton_target=skeleton,
    )


def _batches(ctx: TrainingContext, ids, settings, dist: DistributedContext, aug: Augmentation, train: bool, batch_size: int):
    """Background batch iterator fed by ``aug``."""
    seed = settings.seed + 1000 * dist.rank + (0 if train else 500)
    loader = PatchLoader(
        ctx.data_dir, ids, ctx.config.patch_size, batch_size, sample_patch_size=aug.sample_patch_size,
        previous_stage_dir=ctx.previous_stage_dir, seed=seed,
    )
    workers = settings.num_workers if train else min(settings.num_workers, 1)
    batches = BackgroundBatches(
        loader, aug.transform, workers, pin_memory=torch.cuda.is_available(), seed=seed, deterministic=not train
    )
    return batches


class Trainer:
    """One training job: builds its parts with the ``make_*`` methods and runs the loop.

    Override points (each a small method): :meth:`make_network`, :meth:`make_loss`,
    :meth:`make_optimizer`, :meth:`make_augmentation`, :meth:`run_epoch`, :meth:`end_epoch` and
    :meth:`finish`. Register a subclass as a trainer variant
    (:func:`vessel_seg.trainers.variants.register_trainer`) to use it from ``vs_train -tr``.
    """

    def __init__(self, job: TrainingJob, settings: TrainingSettings | None = None) -> None:
        self.job = job
        self.settings = settings or job.settings or TrainingSettings()
        self.ctx = TrainingContext(job)

    # ---------------------------------------------------------------- parts a variant may replace

    def make_network(self, in_channels: int) -> torch.nn.Module:
        """The network the plans describe (``NetworkTopology.network_class``), fresh weights."""
        return build_network(self.ctx.config.network, in_channels, len(self.ctx.label_values))

    def make_loss(self, network: torch.nn.Module) -> Callable:
        """The registered loss ``settings.loss``, wrapped for the network's deep supervision."""
        kernel = [1 if k == 1 else 3 for k in self.ctx.config.network.kernel_sizes[0]]
        return build_loss(
            self.settings.loss, network.deep_supervision, network.num_outputs, batch_dice=self.ctx.config.batch_dice,
            kernel_size=kernel,
        )

    def make_optimizer(self, network: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
        return build_optimizer(network, self.settings, device)

    def make_augmentation(self, train: bool) -> Augmentation:
        return default_augmentation(self.ctx, self.settings, train)

    # ---------------------------------------------------------------- the loop

    def run(self) -> TrainingResult:
        """Train the fold: set up, run the remaining epochs, finish (final checkpoint, validation)."""
        if self.job.validate_only is not None:
            return self.validate(self.job.validate_only)
        job, ctx = self.job, self.ctx
        device, dist = start_runtime(self.settings)
        self.settings = settings = resolve_workers(self.settings, device, dist)
        train_ids, val_ids = fold_split(ctx, job, dist)
        dtype = amp_dtype(device, settings.amp)
        memory_format = preferred_memory_format(device, ctx.config.dim, dtype, settings.channels_last)
        model = self._build_model(device, memory_format)
        if dist.is_main:  # only now: a refused --pretrained or plans leaves no model folder behind
            copy_model_files(ctx)
            ctx.fold_dir.mkdir(parents=True, exist_ok=True)
        lock = hold_or_refuse(ctx.fold_dir / ".vs_train.lock", f"{ctx.fold_dir}",
                              "two trainings of one fold would overwrite each other's checkpoints; wait for that run "
                              "or stop it, then resume with --continue") if dist.is_main else contextlib.nullcontext()
        with lock, fold_text_log(ctx.fold_dir, enabled=dist.is_main), logging_redirect_tqdm():
            return self._run_in_fold(device, dist, dtype, memory_format, model, train_ids, val_ids)

    def _run_in_fold(self, device, dist, dtype, memory_format, model: ModelParts, train_ids, val_ids) -> TrainingResult:
        """The part of :meth:`run` that logs into the fold's ``training_log.txt``."""
        job, ctx, settings = self.job, self.ctx, self.settings
        checkpointer = Checkpointer(ctx.fold_dir, {
            "dataset": ctx.dataset_name, "configuration": ctx.config.name, "plans": job.plans_name,
            "fold": str(job.fold), "in_channels": model.in_channels, "num_classes": len(ctx.label_values),
            "trainer": job.trainer_name, "settings": settings_metadata(settings),
        })
        state = resume_state(checkpointer, model, settings, device) if job.resume else RunState()
        if state.start_epoch > settings.epochs:
            raise TrainingError(
                f"{ctx.fold_dir}: this run is already at epoch {state.start_epoch}, past --epochs {settings.epochs}; "
                f"give --epochs above {state.start_epoch} to train it further (its checkpoints are unchanged)"
            )
        progress = TrainingLog(ctx.fold_dir)
        if dist.is_main:
            prepare_fold(ctx.fold_dir, progress, state, settings)
        self.run_state = run = Run(ctx, settings, dist, model, checkpointer, progress, state)
        remaining = (settings.epochs - state.start_epoch) * settings.iterations_per_epoch
        step, compiling = make_training_step(model, settings, device, dist, dtype, memory_format, remaining)

        batch_size = max(1, ctx.config.batch_size // dist.world_size)
        aug = self.make_augmentation(True)
        train_batches = _batches(ctx, train_ids, settings, dist, aug, True, batch_size)
        val_batches = _batches(ctx, val_ids, settings, dist, self.make_augmentation(False), False, batch_size)
        mirror_axes = tuple(aug.mirror_axes)
        checkpointer.metadata["mirror_axes"] = list(mirror_axes)  # the predictor mirrors the same axes
        if dist.is_main:
            log.info(start_banner(run, device, dtype, compiling, memory_format, len(train_ids), len(val_ids), batch_size))
        show_bar = dist.is_main and sys.stderr.isatty()
        try:
            with StopRequest() as self.stop_request:
                for epoch in range(state.start_epoch, settings.epochs):
                    self.run_epoch(step, train_batches, val_batches, epoch, show_bar)
        except _Stopped as stopped:
            self._save_interrupted(step, stopped)
        finally:
            train_batches.close()
            val_batches.close()
        summary = self.finish(val_ids, mirror_axes, device, dtype is not None)
        return TrainingResult(ctx.fold_dir, settings.epochs - state.start_epoch, state.best_score, summary, model.network)

    def _save_interrupted(self, step: TrainingStep, stopped: _Stopped) -> None:
        """Save the weights of the interrupted epoch as ``checkpoint_latest.pt`` (resuming re-runs that epoch from
        its start, with the learning-rate schedule at that point) and end with one line saying how to resume."""
        run, job = self.run_state, self.job
        if run.dist.is_main:
            extra = {"best_score": run.state.best_score, "ema_score": run.state.ema}
            run.checkpointer.save("latest", run.checkpointer.state(
                run.model.network, step.optimizer, step.scaler, stopped.epoch, extra))
        command = resume_command(str(job.dataset), self.ctx.config.name, str(job.fold), job.plans_name,
                                 job.trainer_name, DEFAULT_TRAINER)
        raise TrainingInterrupted(
            f"{self.ctx.fold_dir}: stopped by {stopped.signal_name} in epoch {stopped.epoch} after iteration "
            f"{stopped.iteration}; saved checkpoint_latest.pt ({stopped.epoch} epoch(s) completed); resume with: {command}"
        )

    def validate(self, checkpoint: str = "final") -> TrainingResult:
        """Only the final full-volume validation of the fold's ``checkpoint_<checkpoint>.pt`` (``vs_train --val``)."""
        ctx = self.ctx
        path = ctx.fold_dir / f"checkpoint_{checkpoint}.pt"
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint; train this fold first (vs_train without --val)")
        device, dist = start_runtime(self.settings)
        _, val_ids = fold_split(ctx, self.job, dist)
        state = load_checkpoint(path, map_location=device)
        in_channels = ctx.info.num_channels + (len(ctx.label_values) - 1 if ctx.previous_stage_dir else 0)
        network = self.make_network(in_channels).to(device)
        network.load_state_dict(state["network_weights"])
        metadata = state.get("metadata") or {}
        mirror_axes = tuple(metadata.get("mirror_axes", range(ctx.config.dim)))
        amp = amp_dtype(device, self.settings.amp) is not None
        with fold_text_log(ctx.fold_dir, enabled=dist.is_main):
            log.info("validating %s only (--val): %d case(s)", path.name, len(val_ids))
            summary = _final_validation(ctx, network, val_ids, mirror_axes, device, amp, self.settings.save_validation_probabilities)
        shutdown(dist)
        return TrainingResult(ctx.fold_dir, 0, float(state.get("best_score", math.nan)), summary, network)

    def run_epoch(self, step: TrainingStep, train_batches, val_batches, epoch: int, show_bar: bool) -> None:
        """Train ``iterations_per_epoch`` steps, validate on patches, then :meth:`end_epoch`."""
        _run_epoch(self, step, train_batches, val_batches, epoch, show_bar)

    def end_epoch(self, step: TrainingStep, epoch: int, record: EpochRecord, started: float) -> None:
        """EMA score, checkpoints, the progress log and the epoch's log line."""
        _end_epoch(self.run_state, step, epoch, record, started)

    def finish(self, val_ids, mirror_axes, device: torch.device, amp: bool) -> dict | None:
        """Final checkpoint, full-volume validation and next-stage predictions."""
        return _finish(self.run_state, self.job, val_ids, mirror_axes, device, amp)

    def _build_model(self, device: torch.device, memory_format: torch.memory_format) -> ModelParts:
        ctx = self.ctx
        in_channels = ctx.info.num_channels + (len(ctx.label_values) - 1 if ctx.previous_stage_dir else 0)
        network = self.make_network(in_channels).to(device)
        if memory_format != torch.contiguous_format:
            network = network.to(memory_format=memory_format)
        if self.job.pretrained is not None:
            load_pretrained_weights(network, self.job.pretrained)
        optimizer = self.make_optimizer(network, device)
        scaler = make_grad_scaler(device, amp_dtype(device, self.settings.amp))
        return ModelParts(network, in_channels, optimizer, scaler, self.make_loss(network))


def train(job: TrainingJob) -> TrainingResult:
    """Train one fold of one configuration with the trainer variant ``job.trainer_name`` (default :class:`Trainer`).

    A registered variant brings its trainer class and, when ``job.settings`` is None, its settings;
    an unregistered name trains with the default trainer into a run folder of that name.
    """
    trainer_class, settings = trainer_for(job.trainer_name, job.settings)
    return (trainer_class or Trainer)(job, settings).run()


def _run_epoch(trainer: Trainer, step: TrainingStep, train_batches, val_batches, epoch: int, show_bar: bool) -> None:
    run = trainer.run_state
    settings = run.settings
    started = time.perf_counter()
    lr = scheduled_lr(settings, epoch, 0)
    step.model.train()
    stop = getattr(trainer, "stop_request", None)
    for iteration in tqdm(range(settings.iterations_per_epoch), desc=f"epoch {epoch}", disable=not show_bar, leave=False):
        set_lr(step.optimizer, scheduled_lr(settings, epoch, iteration))
        step(next(train_batches))
        if stop is not None and stop.requested:
            raise _Stopped(stop.signal_name, epoch, iteration + 1)
    data_wait = train_batches.pop_mean_wait()
    train_loss = step.pop_mean_loss()  # the epoch's one synchronisation for training
    if not math.isfinite(train_loss):
        # Stop before this epoch's weights reach any checkpoint: the earlier ones stay usable.
        raise TrainingError(
            f"{run.ctx.fold_dir}: the training loss became {train_loss} in epoch {epoch}; stopped, checkpoints of "
            "earlier epochs are kept; lower --lr (or check the images for extreme values) and resume with --continue"
        )

    step.model.eval()
    metrics = PseudoMetrics(len(run.ctx.label_values))
    val_loss_sum = torch.zeros((), device=step.device)  # summed on the device: no sync per batch
    for _ in range(settings.validation_iterations):
        out, target, loss = step.evaluate(next(val_batches))
        val_loss_sum += loss
        metrics.update((out[0] if isinstance(out, (list, tuple)) else out).float(), target)
    val_batches.pop_mean_wait()
    val_loss = val_loss_sum.item() / settings.validation_iterations if settings.validation_iterations else math.nan
    trainer.end_epoch(step, epoch, EpochRecord(
        epoch=epoch, train_loss=train_loss, val_loss=val_loss, pseudo_dice=metrics.dice, pseudo_cldice=metrics.cldice,
        ema_score=math.nan, learning_rate=lr, epoch_seconds=0.0, data_wait_seconds=data_wait,
        pseudo_betti0_error=metrics.betti0_error,
    ), started)


class _Stopped(Exception):
    """Raised inside the loop when a stop was requested; carries where the run stopped."""

    def __init__(self, signal_name: str, epoch: int, iteration: int) -> None:
        super().__init__(signal_name)
        self.signal_name, self.epoch, self.iteration = signal_name, epoch, iteration


def _end_epoch(run: Run, step: TrainingStep, epoch: int, record: EpochRecord, started: float) -> None:
    """EMA score, best/latest/snapshot checkpoints, the progress log and the epoch's log line."""
    settings, state, checkpointer = run.settings, run.state, run.checkpointer
    score = selection_score(record.pseudo_dice, record.pseudo_cldice, record.pseudo_betti0_error)
    state.ema = score if state.ema is None else settings.ema_decay * state.ema + (1 - settings.ema_decay) * score
    if not run.dist.is_main:
        return
    network = run.model.network
    extra = {"best_score": max(state.best_score, state.ema), "ema_score": state.ema}
    if state.ema > state.best_score:
        state.best_score = state.ema
        checkpointer.save("best", checkpointer.state(network, None, None, epoch + 1, extra))
    if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == settings.epochs:
        checkpointer.save("latest", checkpointer.state(network, step.optimizer, step.scaler, epoch + 1, extra))
    if settings.snapshot_every and (epoch + 1) % settings.snapshot_every == 0:
        checkpointer.save(snapshot_name(epoch + 1), checkpointer.state(network, None, None, epoch + 1, extra))
    record.ema_score = float(state.ema)
    record.epoch_seconds = time.perf_counter() - started
    run.progress.append(record)
    log.info(
        "epoch %d: train loss %.4f, val loss %.4f, pseudo Dice %.4f, pseudo clDice %.4f, Betti-0 error %.2f, "
        "%.1f s (data wait %.3f s/it)",
        epoch, record.train_loss, record.val_loss, record.pseudo_dice, record.pseudo_cldice, record.pseudo_betti0_error,
        time.perf_counter() - started, record.data_wait_seconds,
    )


def _finish(run: Run, job: TrainingJob, val_ids, mirror_axes, device: torch.device, amp: bool) -> dict | None:
    """Final checkpoint, full-volume validation and next-stage predictions (main process), then shut down."""
    summary = None
    settings, network = run.settings, run.model.network
    if run.dist.is_main:
        run.checkpointer.save(
            "final", run.checkpointer.state(network, None, None, settings.epochs, {"best_score": run.state.best_score})
        )
        if settings.final_validation:
            summary = _final_validation(
                run.ctx, network, val_ids, mirror_axes, device, amp, settings.save_validation_probabilities
            )
            _predict_for_next_stage(run.ctx, network, job, mirror_axes, device, amp)
    barrier(run.dist)
    shutdown(run.dist)
    return summary


def _final_validation(ctx: TrainingContext, network, val_ids, mirror_axes, device, amp, save_probabilities: bool) -> dict:
    started = time.perf_counter()
    summary = validate_full_volumes(
        network, ctx.plans, ctx.config, ctx.info, val_ids, ctx.data_dir, raw_root() / ctx.dataset_name / "labelsTr",
        ctx.fold_dir / "validation", mirror_axes, device, amp, ctx.previous_stage_dir,
        save_probabilities_too=save_probabilities,
    )
    means = {k: round(v, 4) for k, v in summary.get("foreground_mean", {}).items() if k in ("dice", "cldice", "vscore", "hd95")}
    log.info("validation of %d case(s) in %.1f s: %s", len(val_ids), time.perf_counter() - started, means)
    return summary


def _predict_for_next_stage(ctx: TrainingContext, network, job: TrainingJob, mirror_axes, device, amp) -> None:
    """3d_lowres feeds the cascade: segment every case of this fold for the next stage."""
    next_name = ctx.config.next_stage
    if next_name is None:
        return
    next_config = ctx.plans.configuration(next_name)
    next_data_dir = ctx.preprocessed_dir / next_config.data_identifier
    if not list_cases(next_data_dir):
        log.warning("%s is not preprocessed, so no predictions for %s were made", next_name, next_name)
        return
    predict_next_stage(
        network, ctx.config, next_config, ctx.label_values, ctx.case_ids, ctx.data_dir, next_data_dir,
        ctx.fold_dir / "predicted_next_stage" / next_name, mirror_axes, device, amp,
    )
