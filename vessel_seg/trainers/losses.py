"""Training losses by name (a registry), with deep supervision.

``build_loss(name, deep_supervision, num_outputs)`` returns a module ``loss(output, target)``
where ``output`` is the network's logits (or its list of logits under deep supervision) and
``target`` the integer labels ``(B, 1, *spatial)`` or ``(B, *spatial)`` at full resolution; losses
registered with ``needs_skeleton=True`` get ``(B, 2, *spatial)``, whose second channel is the
label's tubed skeleton computed by the data pipeline (:mod:`vessel_seg.trainers.skeleton_target`).

==========================  =================================================================
name                        loss (each term minimised at 0)
==========================  =================================================================
``dice_ce``                 ``(1 - soft Dice) + CE`` (nnU-Net's default)
``dice_ce_cldice``          ``(1 - soft Dice) + CE + alpha * (1 - soft-clDice)``, ``alpha = 0.5``
``dice_ce_center``          ``(1 - soft Dice) + centreline-weighted CE``
``dice_ce_skeleton_recall`` ``(1 - soft Dice) + CE + w * (1 - skeleton recall)``, ``w = 1``
==========================  =================================================================

Shit et al. (CVPR 2021) train with ``(1 - alpha) * soft Dice + alpha * clDice`` for alpha up to
0.5; we keep nnU-Net's Dice + CE whole and add ``0.5 * clDice``, enough for clDice to steer
connectivity without outweighing the overlap terms that make the segmentation converge.
Skeleton Recall (Kirchhoff et al., ECCV 2024) moves the skeletonisation out of the loss into the
data pipeline (a CPU worker, once per patch, exact rather than soft), so the loss itself is one
product and two sums.

New losses register with :func:`register_loss` (e.g. from a module named in ``VS_PLUGINS``, see
:mod:`vessel_seg.plugins`); ``vs_train --loss NAME`` then finds them, nothing else changes.

Extra cost over ``dice_ce`` (forward + backward, batch 2, 64³ patch with outputs at 1/2 and 1/4,
one CPU thread, torch 2.13): ~0.5 s for clDice with 10 skeleton steps (linear in the steps),
~0.06 s for the centreline weights; ``dice_ce`` itself takes ~0.01 s. Skeleton recall costs
about as much as ``dice_ce`` in the step, plus the skeleton in the data workers
(``benchmarks/loss_costs.py`` measures all of them).
The term classes live in :mod:`~vessel_seg.trainers.losses_region` and
:mod:`~vessel_seg.trainers.losses_topology` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vessel_seg.registry import Registry
from vessel_seg.trainers.losses_region import CrossEntropyLoss, DiceCELoss, SoftDiceLoss
from vessel_seg.trainers.losses_topology import (
    CenterlineWeightedCELoss,
    SkeletonRecallLoss,
    SoftClDiceLoss,
    centerline_weights,
)

__all__ = [
    "CenterlineWeightedCELoss",
    "CrossEntropyLoss",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "LOSSES",
    "LossEntry",
    "LossOptions",
    "SkeletonRecallLoss",
    "SoftClDiceLoss",
    "SoftDiceLoss",
    "WeightedSum",
    "build_loss",
    "loss_entry",
    "loss_names",
    "register_loss",
    "centerline_weights",
    "deep_supervision_weights",
    "downsample_target",
]


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




@dataclass(frozen=True)
class LossOptions:
    """Options every registered loss may read (each reads those it needs).

    Attributes
    ----------
    batch_dice, smooth
        Soft Dice options (:class:`SoftDiceLoss`).
    kernel_size : tuple of int, optional
        Per-axis morphology kernel (1 or 3) of clDice and centreline weights, e.g. ``(1, 3, 3)``
        when the first stage's convolutions skip the z axis.
    cldice_alpha, cldice_iterations
        Weight of the clDice term and its soft-skeleton steps (:class:`SoftClDiceLoss`).
    center_beta, center_gamma, center_iterations
        Centreline weighting (:func:`centerline_weights`).
    skeleton_recall_weight
        Weight of the skeleton-recall term (:class:`SkeletonRecallLoss`; 1 as in the paper).
    extra : dict
        Options of losses registered outside the package, by name.
    """

    batch_dice: bool = False
    smooth: float = 1e-5
    kernel_size: tuple[int, ...] | None = None
    cldice_alpha: float = 0.5
    cldice_iterations: int = 10
    center_beta: float = 3.0
    center_gamma: float = 2.0
    center_iterations: int = 10
    skeleton_recall_weight: float = 1.0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LossEntry:
    """A registered loss: its factory, whether its target carries the skeleton channel, one line of help."""

    name: str
    build: Callable[[LossOptions], nn.Module]
    needs_skeleton: bool = False
    description: str = ""


LOSSES: Registry[LossEntry] = Registry("loss")


def register_loss(
    name: str, *, needs_skeleton: bool = False, description: str = "", replace_existing: bool = False
) -> Callable[[Callable[[LossOptions], nn.Module]], Callable[[LossOptions], nn.Module]]:
    """Decorator registering ``build(options) -> nn.Module`` as the loss ``name`` (for ``vs_train --loss``).

    ``needs_skeleton``: the data pipeline appends the tubed skeleton of the label as target channel
    1 (:class:`~vessel_seg.trainers.skeleton_target.SkeletonTarget`). Registering a taken name
    raises unless ``replace_existing``, so that two plugins cannot silently shadow each other.
    """

    def decorate(build: Callable[[LossOptions], nn.Module]) -> Callable[[LossOptions], nn.Module]:
        LOSSES.add(name, LossEntry(name, build, needs_skeleton, description), replace_existing=replace_existing)
        return build

    return decorate


def loss_names() -> tuple[str, ...]:
    """Names of the registered losses, in registration order."""
    return LOSSES.names()


def loss_entry(name: str) -> LossEntry:
    """The registered loss ``name``; ``ValueError`` naming the registered ones otherwise."""
    return LOSSES.get(name)


@register_loss("dice_ce", description="soft Dice + cross-entropy (nnU-Net's loss)")
def _dice_ce(options: LossOptions) -> nn.Module:
    return DiceCELoss(batch_dice=options.batch_dice, smooth=options.smooth)


@register_loss("dice_ce_cldice", description="Dice + CE + 0.5 soft-clDice (Shit et al. 2021)")
def _dice_ce_cldice(options: LossOptions) -> nn.Module:
    return WeightedSum(
        [_dice_ce(options), SoftClDiceLoss(options.cldice_iterations, options.kernel_size)], [1.0, options.cldice_alpha]
    )


@register_loss("dice_ce_center", description="Dice + centreline-weighted CE (CerebralDoc's idea)")
def _dice_ce_center(options: LossOptions) -> nn.Module:
    center = CenterlineWeightedCELoss(
        options.center_beta, options.center_gamma, options.center_iterations, options.kernel_size
    )
    return WeightedSum([SoftDiceLoss(batch_dice=options.batch_dice, smooth=options.smooth), center], [1.0, 1.0])


@register_loss(
    "dice_ce_skeleton_recall", needs_skeleton=True,
    description="Dice + CE + recall of the tubed skeleton (Kirchhoff et al. 2024)",
)
def _dice_ce_skeleton_recall(options: LossOptions) -> nn.Module:
    return WeightedSum([_dice_ce(options), SkeletonRecallLoss()], [1.0, options.skeleton_recall_weight])


def build_loss(
    name: str,
    deep_supervision: bool,
    num_outputs: int = 1,
    *,
    weights: Sequence[float] | None = None,
    **options,
) -> nn.Module:
    """The registered loss ``name`` (see the module docstring), wrapped for deep supervision.

    Parameters
    ----------
    name : str
        A registered name (:func:`loss_names`).
    deep_supervision : bool
        Wrap in :class:`DeepSupervisionLoss` for ``num_outputs`` outputs (the network's
        ``num_outputs``).
    weights : sequence of float, optional
        Deep-supervision weights; default :func:`deep_supervision_weights`.
    **options
        Fields of :class:`LossOptions` (``batch_dice``, ``kernel_size``, ``cldice_alpha``, ...).

    Raises
    ------
    ValueError
        For an unknown ``name`` or option.
    """
    entry = loss_entry(name)
    if "kernel_size" in options and options["kernel_size"] is not None:
        options["kernel_size"] = tuple(int(k) for k in options["kernel_size"])
    try:
        loss_options = replace(LossOptions(), **options)
    except TypeError as exc:
        raise ValueError(f"loss {name!r}: {exc}") from None
    loss = entry.build(loss_options)
    if not deep_supervision:
        return loss
    return DeepSupervisionLoss(loss, weights if weights is not None else deep_supervision_weights(num_outputs))
