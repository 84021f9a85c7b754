"""Training losses by name, with deep supervision.

``build_loss(name, deep_supervision, num_outputs)`` returns a module ``loss(output, target)``
where ``output`` is the network's logits (or its list of logits under deep supervision) and
``target`` the integer labels ``(B, 1, *spatial)`` or ``(B, *spatial)`` at full resolution.

========================  ===================================================================
name                      loss (each term minimised at 0)
========================  ===================================================================
``dice_ce``               ``(1 - soft Dice) + CE`` (nnU-Net's default)
``dice_ce_cldice``        ``(1 - soft Dice) + CE + alpha * (1 - soft-clDice)``, ``alpha = 0.5``
``dice_ce_center``        ``(1 - soft Dice) + centreline-weighted CE``
========================  ===================================================================

Shit et al. (CVPR 2021) train with ``(1 - alpha) * soft Dice + alpha * clDice`` for alpha up to
0.5; we keep nnU-Net's Dice + CE whole and add ``0.5 * clDice``, enough for clDice to steer
connectivity without outweighing the overlap terms that make the segmentation converge.

Extra cost over ``dice_ce`` (forward + backward, batch 2, 64³ patch with outputs at 1/2 and 1/4,
one CPU thread, torch 2.13): ~0.5 s for clDice with 10 skeleton steps (linear in the steps),
~0.06 s for the centreline weights; ``dice_ce`` itself takes ~0.01 s.
The term classes live in :mod:`~vessel_seg.trainers.losses_region` and
:mod:`~vessel_seg.trainers.losses_topology` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vessel_seg.trainers.losses_region import CrossEntropyLoss, DiceCELoss, SoftDiceLoss
from vessel_seg.trainers.losses_topology import CenterlineWeightedCELoss, SoftClDiceLoss, centerline_weights

__all__ = [
    "LOSS_NAMES",
    "CenterlineWeightedCELoss",
    "CrossEntropyLoss",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "SoftClDiceLoss",
    "SoftDiceLoss",
    "WeightedSum",
    "build_loss",
    "centerline_weights",
    "deep_supervision_weights",
    "downsample_target",
]

LOSS_NAMES = ("dice_ce", "dice_ce_cldice", "dice_ce_center")


class WeightedSum(nn.Module):
    """``sum_i weights[i] * losses[i](logits, target)``."""

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(losses) != len(weights):
            raise ValueError(f"{len(losses)} losses but {len(weights)} weights")
        self.losses = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses, strict=True))


def downsample_target(target: Tensor, shape: Sequence[int]) -> Tensor:
    """Integer labels resized to the spatial ``shape`` by nearest neighbour, layout and dtype kept.

    ``target`` is ``(B, 1, *spatial)`` or ``(B, *spatial)``; the last ``len(shape)`` axes are
    resized. Where an axis of ``n`` voxels maps to ``ceil(n / s)`` for an integer step ``s`` (what
    a stride-``s`` convolution produces), voxels ``0, s, 2s, ...`` are taken, the centres of the
    strided convolution's windows; this is a view, no copy. Other sizes fall back to
    ``torch.nn.functional.interpolate(mode="nearest")``.
    """
    shape = tuple(int(s) for s in shape)
    spatial = tuple(target.shape[-len(shape) :])
    if spatial == shape:
        return target
    steps = [max(1, round(n / m)) for n, m in zip(spatial, shape, strict=True)]
    if all(len(range(0, n, s)) == m for n, s, m in zip(spatial, steps, shape, strict=True)):
        return target[(Ellipsis, *(slice(None, None, s) for s in steps))]
    with_channel = target.dim() == len(shape) + 2
    values = target if with_channel else target.unsqueeze(1)
    resized = F.interpolate(values.float(), size=shape, mode="nearest").to(target.dtype)
    return resized if with_channel else resized[:, 0]


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's weights: ``1 / 2**i`` for output ``i`` (0 = full resolution), the lowest set to 0, sum 1.

    The lowest output is excluded because at ~1/16 resolution thin vessels have vanished from
    its target. A single output gets weight 1.
    """
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be at least 1, got {num_outputs}")
    weights = [0.5**i for i in range(num_outputs)]
    if num_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(nn.Module):
    """``sum_i weights[i] * loss(outputs[i], target resized to outputs[i])``.

    Parameters
    ----------
    loss : nn.Module
        Loss of one output, ``loss(logits, target)``.
    weights : sequence of float
        One weight per output, full resolution first (see :func:`deep_supervision_weights`).

    Notes
    -----
    ``forward(outputs, target)`` takes the list of logits (a single tensor is passed straight to
    ``loss``, for a network with deep supervision switched off) and either the full-resolution
    target, resized with :func:`downsample_target`, or a list of targets already at each
    output's size. Outputs of weight 0 enter as ``0 * sum(output)``, so their head still receives
    a (zero) gradient, as distributed data parallel requires of every parameter.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.loss = loss
        self.weights = [float(w) for w in weights]

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor | Sequence[Tensor]) -> Tensor:
        if isinstance(outputs, Tensor):
            return self.loss(outputs, target if isinstance(target, Tensor) else target[0])
        if len(outputs) != len(self.weights):
            raise ValueError(f"got {len(outputs)} outputs for {len(self.weights)} deep-supervision weights")
        targets = [target] * len(outputs) if isinstance(target, Tensor) else list(target)
        total = torch.zeros((), device=outputs[0].device)
        for weight, output, output_target in zip(self.weights, outputs, targets, strict=True):
            if weight == 0.0:
                total = total + 0.0 * output.sum()
            else:
                total = total + weight * self.loss(output, downsample_target(output_target, output.shape[2:]))
        return total


def build_loss(
    name: str,
    deep_supervision: bool,
    num_outputs: int = 1,
    *,
    batch_dice: bool = False,
    smooth: float = 1e-5,
    cldice_alpha: float = 0.5,
    cldice_iterations: int = 10,
    center_beta: float = 3.0,
    center_gamma: float = 2.0,
    center_iterations: int = 10,
    kernel_size: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
) -> nn.Module:
    """The training loss called ``name`` (see the module docstring), wrapped for deep supervision.

    Parameters
    ----------
    name : str
        One of ``LOSS_NAMES``.
    deep_supervision : bool
        Wrap in :class:`DeepSupervisionLoss` for ``num_outputs`` outputs (the network's
        ``num_outputs``).
    batch_dice, smooth
        Soft Dice options (:class:`SoftDiceLoss`).
    cldice_alpha, cldice_iterations
        Weight of the clDice term and its soft-skeleton steps (:class:`SoftClDiceLoss`).
    center_beta, center_gamma, center_iterations
        Centreline weighting (:func:`centerline_weights`).
    kernel_size : sequence of int, optional
        Per-axis morphology kernel (1 or 3) of clDice and centreline weights, e.g. ``(1, 3, 3)``
        when the first stage's convolutions skip the z axis.
    weights : sequence of float, optional
        Deep-supervision weights; default :func:`deep_supervision_weights`.

    Raises
    ------
    ValueError
        For an unknown ``name``.
    """
    if name == "dice_ce":
        loss: nn.Module = DiceCELoss(batch_dice=batch_dice, smooth=smooth)
    elif name == "dice_ce_cldice":
        loss = WeightedSum(
            [DiceCELoss(batch_dice=batch_dice, smooth=smooth), SoftClDiceLoss(cldice_iterations, kernel_size)],
            [1.0, cldice_alpha],
        )
    elif name == "dice_ce_center":
        loss = WeightedSum(
            [
                SoftDiceLoss(batch_dice=batch_dice, smooth=smooth),
                CenterlineWeightedCELoss(center_beta, center_gamma, center_iterations, kernel_size),
            ],
            [1.0, 1.0],
        )
    else:
        raise ValueError(f"unknown loss {name!r}: use one of {', '.join(LOSS_NAMES)}")
    if not deep_supervision:
        return loss
    return DeepSupervisionLoss(loss, weights if weights is not None else deep_supervision_weights(num_outputs))
