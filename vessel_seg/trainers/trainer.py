"""The training loop, composed from small parts (data, network, loss, optimiser, log, checkpoints).

``train(job)`` is the library entry point behind ``vs_train``. Everything about the data comes from
the plans; everything about the run from :class:`TrainingSettings`.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vessel_seg.case_store import list_cases
from vessel_seg.dataset import DatasetInfo
from vessel_seg.device import autocast, configure_backends, mixed_precision_enabled, select_device
from vessel_seg.errors import DatasetError, VesselSegError
from vessel_seg.model_folder import DEFAULT_TRAINER, fold_name, model_dir, snapshot_name
from vessel_seg.networks.resunet import build_network
from vessel_seg.paths import preprocessed_root, raw_root, resolve_dataset
from vessel_seg.planners.plans import ConfigurationPlan, Plans
from vessel_seg.trainers.augmentation import training_transforms, validation_transforms
from vessel_seg.trainers.background import BackgroundBatches
from vessel_seg.trainers.checkpointer import Checkpointer, load_pretrained_weights, settings_metadata, unwrap
from vessel_seg.trainers.dataloading import PatchLoader
from vessel_seg.trainers.distributed import DistributedContext, barrier, init_distributed, shutdown
from vessel_seg.trainers.losses import build_loss
from vessel_seg.trainers.optimization import build_optimizer, poly_lr, set_lr
from vessel_seg.trainers.progress import EpochRecord, TrainingLog
from vessel_seg.trainers.settings import TrainingSettings
from vessel_seg.trainers.splits import fold_cases, load_or_create_splits
from vessel_seg.trainers.validation import (
    PseudoMetrics,
    predict_next_stage,
    selection_score,
    validate_full_volumes,
)

log = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    dataset: str | int
    configuration: str
    fold: int | str
    plans_name: str = "vs_plans"
    settings: TrainingSettings | None = None
    resume: bool = False
    pretrained: Path | None = None
    trainer_name: str = DEFAULT_TRAINER


@dataclass
class TrainingResult:
    fold_dir: Path
    epochs_run: int
    best_score: float
    validation_summary: dict | None
    network: torch.nn.Module | None = None


class _Context:
    """Resolved paths, plans and data folders of one job."""

    def __init__(self, job: TrainingJob):
        self.dataset_name = resolve_dataset(job.dataset, [preprocessed_root(), raw_root()])
        self.preprocessed_dir = preprocessed_root() / self.dataset_name
        self.plans = Plans.load(self.preprocessed_dir / f"{job.plans_name}.json")
        self.config: ConfigurationPlan = self.plans.configuration(job.configuration)
        self.info = DatasetInfo.load(self.preprocessed_dir / "dataset.json")
        self.data_dir = self.preprocessed_dir / self.config.data_identifier
        self.case_ids = list_cases(self.data_dir)
        if not self.case_ids:
            raise DatasetError(
                f"{self.data_dir}: no preprocessed cases; run vs_plan_and_preprocess -d {job.dataset} "
                f"-pl {job.plans_name} -c {job.configuration}"
            )
        self.model_dir = model_dir(self.dataset_name, job.configuration, job.plans_name, job.trainer_name)
        self.fold_dir = self.model_dir / fold_name(job.fold)
        self.label_values = sorted(self.plans.labels.values())
        self.previous_stage_dir = self._previous_stage_dir(job)

    def _previous_stage_dir(self, job: TrainingJob) -> Path | None:
        previous = self.config.previous_stage
        if previous is None:
            return None
        folder = (
            model_dir(self.dataset_name, previous, job.plans_name, job.trainer_name)
            / fold_name(job.fold) / "predicted_next_stage" / self.config.name
        )
        missing = [c for c in self.case_ids if not (folder / f"{c}.npy").is_file()]
        if missing:
            raise VesselSegError(
                f"{folder}: the {previous} predictions of fold {job.fold} are missing for {len(missing)} case(s) "
                f"(e.g. {missing[0]}); train the previous stage first: vs_train {job.dataset} {previous} {job.fold}"
            )
        return folder


def _copy_model_files(ctx: _Context) -> None:
    ctx.model_dir.mkdir(parents=True, exist_ok=True)
    ctx.plans.save(ctx.model_dir / "plans.json")
    for name in ("dataset.json", "fingerprint.json"):
        if (ctx.preprocessed_dir / name).is_file():
            shutil.copyfile(ctx.preprocessed_dir / name, ctx.model_dir / name)


def _batches(ctx: _Context, ids, settings, dist: DistributedContext, train: bool, batch_size: int):
    """Background batch iterator and the augmentation that feeds it."""
    cascade_labels = ctx.label_values[1:] if ctx.previous_stage_dir is not None else None
    num_channels = ctx.info.num_channels
    seed = settings.seed + 1000 * dist.rank + (0 if train else 500)
    if train:
        aug = training_transforms(
            ctx.config.patch_size, ctx.config.spacing[-len(ctx.config.patch_size):],
            cascade_labels=cascade_labels, num_image_channels=num_channels,
        )
    else:
        aug = validation_transforms(ctx.config.patch_size, cascade_labels=cascade_labels, num_image_channels=num_channels)
    loader = PatchLoader(
        ctx.data_dir, ids, ctx.config.patch_size, batch_size, sample_patch_size=aug.sample_patch_size,
        previous_stage_dir=ctx.previous_stage_dir, seed=seed,
    )
    workers = settings.num_workers if train else min(settings.num_workers, 1)
    batches = BackgroundBatches(
        loader, aug.transform, workers, pin_memory=torch.cuda.is_available(), seed=seed, deterministic=not train
    )
    return batches, aug


def train(job: TrainingJob) -> TrainingResult:
    """Train one fold of one configuration (see :class:`TrainingSettings` for the defaults)."""
    settings = job.settings or TrainingSettings()
    ctx = _Context(job)
    device = select_device(settings.device)
    configure_backends(device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(settings.seed + dist.rank)
    np.random.seed(settings.seed + dist.rank)

    splits = load_or_create_splits(ctx.preprocessed_dir, ctx.case_ids) if dist.is_main else None
    barrier(dist)
    if splits is None:
        splits = load_or_create_splits(ctx.preprocessed_dir, ctx.case_ids)
    train_ids, val_ids = fold_cases(splits, job.fold)
    if dist.is_main:
        _copy_model_files(ctx)
        ctx.fold_dir.mkdir(parents=True, exist_ok=True)

    in_channels = ctx.info.num_channels + (len(ctx.label_values) - 1 if ctx.previous_stage_dir else 0)
    network = build_network(ctx.config.network, in_channels, len(ctx.label_values)).to(device)
    if device.type == "cpu" and ctx.config.dim == 3:
        network = network.to(memory_format=torch.channels_last_3d)
    if job.pretrained is not None:
        load_pretrained_weights(network, job.pretrained)
    optimizer = build_optimizer(network, settings)
    use_amp = mixed_precision_enabled(device, settings.amp)
    scaler = torch.amp.GradScaler("cuda") if use_amp and device.type == "cuda" else None  # bf16 needs no scaling
    loss_fn = build_loss(
        settings.loss, network.deep_supervision, network.num_outputs, batch_dice=ctx.config.batch_dice,
        kernel_size=[1 if k == 1 else 3 for k in ctx.config.network.kernel_sizes[0]],
    )

    checkpointer = Checkpointer(ctx.fold_dir, {
        "dataset": ctx.dataset_name, "configuration": ctx.config.name, "plans": job.plans_name,
        "fold": str(job.fold), "in_channels": in_channels, "num_classes": len(ctx.label_values),
        "trainer": job.trainer_name, "settings": settings_metadata(settings),
    })
    start_epoch, best_score, ema = 0, -math.inf, None
    if job.resume:
        state = checkpointer.load_for_resume(map_location=device)
        if state is not None:
            unwrap(network).load_state_dict(state["network_weights"])
            optimizer.load_state_dict(state["optimizer_state"])
            if scaler is not None and state.get("grad_scaler_state"):
                scaler.load_state_dict(state["grad_scaler_state"])
            start_epoch = int(state["epoch"])
            best_score = float(state.get("best_score", -math.inf))
            ema = state.get("ema_score")
        else:
            log.warning("--continue: no checkpoint in %s, starting from scratch", ctx.fold_dir)
    progress = TrainingLog(ctx.fold_dir)
    if dist.is_main:
        progress.truncate(start_epoch)

    model = network
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    if settings.compile:
        model = torch.compile(model)

    batch_size = max(1, ctx.config.batch_size // dist.world_size)
    train_batches, aug = _batches(ctx, train_ids, settings, dist, True, batch_size)
    val_batches, _ = _batches(ctx, val_ids, settings, dist, False, batch_size)
    mirror_axes = tuple(aug.mirror_axes)
    checkpointer.metadata["mirror_axes"] = list(mirror_axes)  # the predictor mirrors the same axes
    show_bar = dist.is_main and sys.stderr.isatty()
    try:
        for epoch in range(start_epoch, settings.epochs):
            started = time.perf_counter()
            lr = poly_lr(settings.initial_lr, epoch, settings.epochs)
            set_lr(optimizer, lr)
            model.train()
            loss_sum = torch.zeros((), device=device)  # summed on the device: no GPU sync per iteration
            for _ in tqdm(range(settings.iterations_per_epoch), desc=f"epoch {epoch}", disable=not show_bar, leave=False):
                batch = next(train_batches)
                data = batch["data"].to(device, non_blocking=True)
                target = batch["target"].to(device, non_blocking=True)
                if device.type == "cpu" and data.ndim == 5:
                    data = data.contiguous(memory_format=torch.channels_last_3d)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, use_amp):
                    loss = loss_fn(model(data), target)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
                    optimizer.step()
                loss_sum += loss.detach()
            data_wait = train_batches.pop_mean_wait()
            train_loss = loss_sum.item() / settings.iterations_per_epoch

            model.eval()
            metrics = PseudoMetrics(len(ctx.label_values))
            val_losses = []
            with torch.no_grad():
                for _ in range(settings.validation_iterations):
                    batch = next(val_batches)
                    data = batch["data"].to(device, non_blocking=True)
                    target = batch["target"].to(device, non_blocking=True)
                    with autocast(device, use_amp):
                        out = model(data)
                        val_losses.append(loss_fn(out, target).item())
                    metrics.update((out[0] if isinstance(out, (list, tuple)) else out).float(), target)
            val_batches.pop_mean_wait()
            score = selection_score(metrics.dice, metrics.cldice)
            ema = score if ema is None else settings.ema_decay * ema + (1 - settings.ema_decay) * score
            extra = {"best_score": max(best_score, ema), "ema_score": ema}
            if dist.is_main:
                if ema > best_score:
                    best_score = ema
                    checkpointer.save("best", checkpointer.state(network, None, None, epoch + 1, extra))
                if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == settings.epochs:
                    checkpointer.save("latest", checkpointer.state(network, optimizer, scaler, epoch + 1, extra))
                if settings.snapshot_every and (epoch + 1) % settings.snapshot_every == 0:
                    checkpointer.save(snapshot_name(epoch + 1), checkpointer.state(network, None, None, epoch + 1, extra))
                progress.append(EpochRecord(
                    epoch=epoch, train_loss=train_loss, val_loss=float(np.mean(val_losses)),
                    pseudo_dice=metrics.dice, pseudo_cldice=metrics.cldice, ema_score=float(ema), learning_rate=lr,
                    epoch_seconds=time.perf_counter() - started, data_wait_seconds=data_wait,
                ))
                log.info(
                    "epoch %d: train loss %.4f, val loss %.4f, pseudo Dice %.4f, pseudo clDice %.4f, %.1f s (data wait %.3f s/it)",
                    epoch, train_loss, np.mean(val_losses), metrics.dice, metrics.cldice,
                    time.perf_counter() - started, data_wait,
                )
    finally:
        train_batches.close()
        val_batches.close()

    summary = None
    if dist.is_main:
        checkpointer.save("final", checkpointer.state(network, None, None, settings.epochs, {"best_score": best_score}))
        if settings.final_validation:
            summary = _final_validation(
                ctx, network, val_ids, mirror_axes, device, use_amp, settings.save_validation_probabilities
            )
            _predict_for_next_stage(ctx, network, job, mirror_axes, device, use_amp)
    barrier(dist)
    shutdown(dist)
    return TrainingResult(ctx.fold_dir, settings.epochs - start_epoch, best_score, summary, network)


def _final_validation(ctx: _Context, network, val_ids, mirror_axes, device, amp, save_probabilities: bool) -> dict:
    started = time.perf_counter()
    summary = validate_full_volumes(
        network, ctx.plans, ctx.config, ctx.info, val_ids, ctx.data_dir, raw_root() / ctx.dataset_name / "labelsTr",
        ctx.fold_dir / "validation", mirror_axes, device, amp, ctx.previous_stage_dir,
        save_probabilities_too=save_probabilities,
    )
    means = {k: round(v, 4) for k, v in summary.get("foreground_mean", {}).items() if k in ("dice", "cldice", "vscore", "hd95")}
    log.info("validation of %d case(s) in %.1f s: %s", len(val_ids), time.perf_counter() - started, means)
    return summary


def _predict_for_next_stage(ctx: _Context, network, job: TrainingJob, mirror_axes, device, amp) -> None:
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
