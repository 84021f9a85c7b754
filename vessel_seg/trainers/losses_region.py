"""Region losses (soft Dice, cross-entropy) and the target handling every loss shares.

Conventions for all losses in ``vessel_seg.trainers.losses*``:

* ``logits`` are raw network outputs ``(B, C, *spatial)`` with ``C >= 2`` softmax classes
  (class 0 is background); 2D and 3D alike.
* ``target`` holds integer class indices, ``(B, 1, *spatial)`` or ``(B, *spatial)``; a target
  ``(B, T, *spatial)`` with ``T > 1`` carries auxiliary targets after channel 0 (the tubed skeleton
  of skeleton recall) that only the losses asking for them read.
* Losses are computed in float32 with autocast disabled, whatever the network ran in: sums over
  a 64³ patch in bfloat16 would lose most of their digits.
* Losses are *minimised at 0*: Dice enters as ``1 - Dice`` (nnU-Net uses ``-Dice``, minimum -1;
  the gradients are identical, but a loss that reaches 0 reads more easily in the logs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def as_index_target(target: Tensor, logits: Tensor) -> Tensor:
    """``target`` as int64 class indices of shape ``(B, *spatial)`` matching ``logits`` ``(B, C, *spatial)``.

    With a channel axis, channel 0 holds the class indices (further channels are auxiliary targets).
    """
    if target.dim() == logits.dim():
        target = target[:, 0]
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"losses need at least 2 softmax classes (background + vessel), got {logits.shape[1]}")
    return target.long()


def one_hot(index: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot encoding ``(B, num_classes, *spatial)`` of class indices ``(B, *spatial)``."""
    out = torch.zeros((index.shape[0], num_classes, *index.shape[1:]), dtype=dtype, device=index.device)
    return out.scatter_(1, index.unsqueeze(1), 1)


def float32_loss(forward: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorate a loss ``forward(self, logits, target)`` to run in float32 with autocast off."""

    @functools.wraps(forward)
    def wrapper(self: nn.Module, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            return forward(self, logits.float(), target)

    return wrapper


class SoftDiceLoss(nn.Module):
    """``1 - mean_c Dice_c`` over the foreground classes, on softmax probabilities.

    ``Dice_c = (2 * sum(p_c * y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)`` with ``p`` the
    softmax and ``y`` the one-hot target. The sums run over the spatial axes of each sample (and
    the Dice is then averaged over samples and classes) or, with ``batch_dice``, over the batch
    too (nnU-Net's choice when the batch is a sample of one large image).

    Parameters
    ----------
    batch_dice : bool
        Sum over the batch axis as well.
    smooth : float
        Added to numerator and denominator; a class absent from both target and prediction then
        scores Dice 1 rather than 0/0.
    include_background : bool
        Also average class 0.

    Notes
    -----
    Perfect prediction gives 0 (up to ``smooth``); the maximum is 1.
    """

    def __init__(self, batch_dice: bool = False, smooth: float = 1e-5, include_background: bool = False) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.include_background = include_background

    @float32_loss
    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        index = as_index_target(target, logits)
        probs = torch.softmax(logits, dim=1)
        with torch.no_grad():
            onehot = one_hot(index, logits.shape[1])
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        axes = ([0] if self.batch_dice else []) + list(range(2, logits.dim()))
        intersection = (probs * onehot).sum(axes)
        denominator = probs.sum(axes) + onehot.sum(axes)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth).clamp_min(1e-8)
        return 1 - dice.mean()


class CrossEntropyLoss(nn.Module):
    """Mean voxel-wise softmax cross-entropy against integer targets (either target layout)."""

    @float32_loss
    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, as_index_target(target, logits))


class DiceCELoss(nn.Module):
    """nnU-Net's default loss: ``weight_dice * (1 - soft Dice) + weight_ce * cross-entropy``.

    Parameters
    ----------
    batch_dice, smooth
        Passed to :class:`SoftDiceLoss`.
    weight_dice, weight_ce : float
        Weights of the two terms (1 and 1 as in nnU-Net).

    Notes
    -----
    Minimum 0 for a perfect, confident prediction.
    """

    def __init__(
        self, batch_dice: bool = False, smooth: float = 1e-5, weight_dice: float = 1.0, weight_ce: float = 1.0
    ) -> None:
        super().__init__()
        self.dice = SoftDiceLoss(batch_dice=batch_dice, smooth=smooth)
        self.ce = CrossEntropyLoss()
        self.weight_dice = weight_dice
        self.weight_ce = weight_ce

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.weight_dice * self.dice(logits, target) + self.weight_ce * self.ce(logits, target)
