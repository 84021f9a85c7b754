"""Optimiser and learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from vessel_seg.trainers.settings import TrainingSettings


def build_optimizer(network: nn.Module, settings: TrainingSettings) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (nnU-Net's default) or AdamW."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            network.parameters(), lr=settings.initial_lr, momentum=settings.momentum,
            nesterov=True, weight_decay=settings.weight_decay,
        )
    return torch.optim.AdamW(network.parameters(), lr=settings.initial_lr, weight_decay=settings.weight_decay)


def poly_lr(initial_lr: float, epoch: int, max_epochs: int, exponent: float = 0.9) -> float:
    """Polynomial decay: ``lr0 * (1 - epoch / max_epochs) ** exponent``."""
    return initial_lr * (1 - min(epoch, max_epochs) / max_epochs) ** exponent


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
