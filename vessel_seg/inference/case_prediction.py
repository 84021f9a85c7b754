"""Predicting one preprocessed case with one or more networks (the core of every predictor)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vessel_seg.inference.sliding_window import predict_logits
from vessel_seg.planners.plans import ConfigurationPlan


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
        probs = torch.softmax(logits, dim=0)
        del logits
        if total is None:
            total = probs
        else:
            total += probs
    total /= len(networks)
    return total


def labels_from_probabilities(probabilities: torch.Tensor, label_values: Sequence[int]) -> np.ndarray:
    """Arg-max over classes mapped to the dataset's label values (class i -> ``label_values[i]``)."""
    index = torch.argmax(probabilities, dim=0).numpy()
    lookup = np.asarray(label_values, dtype=np.int16 if max(label_values) > 255 else np.uint8)
    return lookup[index]
