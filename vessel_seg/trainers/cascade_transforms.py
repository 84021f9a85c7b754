"""Augmentations of the previous cascade stage's segmentation (nnU-Net's recipe, scaled to vessels).

The low-resolution prediction reaches the full-resolution stage as extra one-hot input channels;
random morphology and random removal of connected components keep the model from copying it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import edt
import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform

DATA, TARGET = "data", "target"


class CascadeToOneHot(AbstractTransform):
    """Move the previous stage's segmentation (``target`` channel 1) into one-hot ``data`` channels.

    One float32 channel per label in ``labels`` (foreground labels of the previous stage) is
    appended to ``data``; ``target`` keeps only channel 0.
    """

    def __init__(self, labels: Sequence[int]):
        self.labels = tuple(int(label) for label in labels)

    def __call__(self, **batch):
        target = batch[TARGET]
        if target.shape[1] < 2:
            raise ValueError("cascade transforms need the previous stage's segmentation as target channel 1")
        previous = target[:, 1:2]
        one_hot = np.concatenate([(previous == label) for label in self.labels], axis=1).astype(np.float32)
        batch[DATA] = np.concatenate([batch[DATA].astype(np.float32, copy=False), one_hot], axis=1)
        batch[TARGET] = target[:, :1]
        return batch


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    if not mask.any():
        return mask
    return mask | (edt.edt(~mask) <= radius)


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    # black_border=False: the patch border is not background, so cropping does not erode
    return edt.edt(mask, black_border=False) > radius


_MORPHOLOGY = {
    "dilation": _dilate,
    "erosion": _erode,
    "opening": lambda m, r: _dilate(_erode(m, r), r),
    "closing": lambda m, r: _erode(_dilate(m, r), r),
}


class RandomBinaryMorphology(AbstractTransform):
    """Randomly dilate, erode, open or close the one-hot channels ``channels`` of ``data``.

    Per sample with probability ``p_per_sample``, each channel (in random order) gets one random
    operator with a ball of integer radius drawn from ``radius_range`` (voxels). Voxels a channel
    gains are removed from the other channels so the encoding stays one-hot. Vessels are thin, so
    the radii are small (nnU-Net uses 1-8 for organs; radius 3 already removes most small vessels).
    """

    def __init__(self, channels: Sequence[int], p_per_sample: float = 0.4, radius_range: tuple[int, int] = (1, 3)):
        self.channels = list(channels)
        self.p_per_sample = p_per_sample
        self.radius_range = radius_range

    def __call__(self, **batch):
        data = batch[DATA]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            for c in np.random.permutation(self.channels):
                operator = _MORPHOLOGY[np.random.choice(list(_MORPHOLOGY))]
                radius = np.random.randint(self.radius_range[0], self.radius_range[1] + 1)
                before = data[b, c] > 0.5
                after = operator(before, radius)
                gained = after & ~before
                for other in self.channels:
                    if other != c:
                        data[b, other][gained] = 0
                data[b, c] = after
        return batch


class RandomComponentRemoval(AbstractTransform):
    """Delete one random connected component from the one-hot ``data`` channels ``channels``.

    Per sample with probability ``p_per_sample`` and per channel with ``p_per_channel``, one
    component (full connectivity) covering at most ``max_fraction`` of the patch is set to 0, so the
    network learns to recover vessels the previous stage missed.
    """

    def __init__(
        self, channels: Sequence[int], p_per_sample: float = 0.2, p_per_channel: float = 1.0, max_fraction: float = 0.15
    ):
        self.channels = list(channels)
        self.p_per_sample = p_per_sample
        self.p_per_channel = p_per_channel
        self.max_fraction = max_fraction

    def __call__(self, **batch):
        data = batch[DATA]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            for c in self.channels:
                mask = data[b, c] > 0.5
                if np.random.uniform() >= self.p_per_channel or not mask.any():
                    continue
                labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=26 if mask.ndim == 3 else 8)
                sizes = np.bincount(labels.ravel())[1:]
                candidates = np.flatnonzero(sizes <= self.max_fraction * mask.size) + 1
                if len(candidates):
                    data[b, c][labels == np.random.choice(candidates)] = 0
        return batch
