"""Optimiser and learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from vessel_seg.trainers.settings import TrainingSettings


def build_optimizer(
    network: nn.Module, settings: TrainingSettings, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (nnU-Net's default) or AdamW.

    On CUDA the fused implementation (one kernel for all parameters, and GradScaler's inf check
    without a host sync); on other devices the multi-tensor (foreach) one; torch's default when
    ``device`` is None.
    """
    kernels = {} if device is None else {"fused": True} if device.type == "cuda" else {"foreach": True}
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            network.parameters(), lr=settings.initial_lr, momentum=settings.momentum,
            nesterov=True, weight_decay=settings.weight_decay, **kernels,
        )
    return torch.optim.AdamW(network.parameters(), lr=settings.initial_lr, weight_decay=settings.weight_decay, **kernels)


def poly_lr(initial_lr: float, epoch: int, max_epochs: int, exponent: float = 0.9) -> float:
    """Polynomial decay: ``lr0 * (1 - epoch / max_epochs) ** exponent``."""
    return initial_lr * (1 - min(epoch, max_epochs) / max_epochs) ** exponent


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def scheduled_lr(settings: TrainingSettings, epoch: int, iteration: int) -> float:
    """Learning rate of ``iteration`` (0-based, within ``epoch``).

    Poly decay per epoch (nnU-Net's schedule), multiplied during the first
    ``settings.warmup_iterations`` steps of the run by a linear ramp ``(k + 1) / warmup`` (``k`` the
    0-based step of the whole run). The training loop calls this before every step.
    """
    lr = poly_lr(settings.initial_lr, epoch, settings.epochs)
    step = epoch * settings.iterations_per_epoch + iteration
    if step < settings.warmup_iterations:
        lr *= (step + 1) / settings.warmup_iterations
    return lr


def with_this_machines_kernels(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """``saved`` optimiser state with this machine's fused/foreach choice.

    ``load_state_dict`` restores every group option from the checkpoint, so a CPU checkpoint resumed
    on a GPU would otherwise keep the CPU's (unfused) kernels.
    """
    groups = [
        {**saved_group, **{k: group[k] for k in ("fused", "foreach") if k in group}}
        for saved_group, group in zip(saved.get("param_groups", []), optimizer.param_groups, strict=False)
    ]
    return {**saved, "param_groups": groups} if groups else saved
