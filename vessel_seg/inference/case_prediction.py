"""Predicting one preprocessed case with one or more networks (the core of every predictor)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vessel_seg.inference.sliding_window import predict_logits
from vessel_seg.planners.plans import ConfigurationPlan

SLAB_VOXELS = 1 << 22  # voxels per class in one slab of softmax / arg-max work (16 MB of float32)


@torch.inference_mode()  # the logits are inference tensors, overwritten in place below
def predict_probabilities(
    networks: Sequence[nn.Module],
    data: np.ndarray | torch.Tensor,
    config: ConfigurationPlan,
    num_classes: int,
    mirror_axes: Sequence[int] = (),
    device: torch.device | str = "cpu",
    amp: bool = False,
    step: float = 0.5,
    tiles_per_batch: int = 4,
) -> torch.Tensor:
    """Softmax probabilities ``(K, Z, Y, X)`` of a preprocessed case, averaged over ``networks``.

    Averaging probabilities (not logits) across folds follows nnU-Net's ensembling.
    """
    total = None
    for network in networks:
        was_ds = getattr(network, "deep_supervision", False)
        if hasattr(network, "deep_supervision"):
            network.deep_supervision = False
        network.eval()
        try:
            logits = predict_logits(
                network, data, config.patch_size, num_classes, step=step, mirror_axes=mirror_axes,
                tiles_per_batch=tiles_per_batch, device=device, amp=amp,
            )
        finally:
            if hasattr(network, "deep_supervision"):
                network.deep_supervision = was_ds
        probs = softmax_inplace(logits)
        del logits
        if total is None:
            total = probs
        else:
            total += probs
    total /= len(networks)
    return total


@torch.inference_mode()
def softmax_inplace(logits: torch.Tensor, slab_voxels: int = SLAB_VOXELS) -> torch.Tensor:
    """Softmax over the class axis of ``(K, Z, Y, X)`` logits, written over the logits and returned.

    Works on slabs of z-slices of about ``slab_voxels`` voxels, so the only extra memory is a slab,
    not a second volume-sized tensor per class. Equal to ``torch.softmax(logits, dim=0)``.
    """
    for sl in _z_slabs(logits.shape, slab_voxels):
        logits[:, sl] = torch.softmax(logits[:, sl], dim=0)
    return logits


def labels_from_probabilities(
    probabilities: torch.Tensor, label_values: Sequence[int], slab_voxels: int = SLAB_VOXELS
) -> np.ndarray:
    """Arg-max over classes mapped to the dataset's label values (class i -> ``label_values[i]``).

    Computed in slabs of z-slices, so the int64 arg-max indices never exist for the whole volume
    (they would take twice the memory of a float32 volume).
    """
    lookup = np.asarray(label_values, dtype=np.int16 if max(label_values) > 255 else np.uint8)
    out = np.empty(tuple(probabilities.shape[1:]), dtype=lookup.dtype)
    for sl in _z_slabs(probabilities.shape, slab_voxels):
        out[sl] = lookup[torch.argmax(probabilities[:, sl], dim=0).numpy()]
    return out


def _z_slabs(shape: Sequence[int], slab_voxels: int) -> list[slice]:
    """Slices along z of a ``(K, Z, Y, X)`` shape, each about ``slab_voxels`` voxels per class."""
    plane = max(1, int(np.prod(shape[2:])))
    step = max(1, slab_voxels // plane)
    return [slice(z, min(z + step, shape[1])) for z in range(0, shape[1], step)]
