"""Predicting one preprocessed case with one or more networks (the core of every predictor)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from vessel_seg.inference.sliding_window import iter_logit_slabs
from vessel_seg.planners.plans import ConfigurationPlan

SLAB_VOXELS = 1 << 22  # voxels per class in one slab of softmax / arg-max work (16 MB of float32)


@torch.inference_mode()
def iter_probability_slabs(
    networks: Sequence[nn.Module],
    data: np.ndarray | torch.Tensor,
    config: ConfigurationPlan,
    num_classes: int,
    mirror_axes: Sequence[int] = (),
    device: torch.device | str = "cpu",
    amp: bool = False,
    step: float = 0.5,
    tiles_per_batch: int = 4,
    samples_per_forward: int | None = None,
    to_cpu: bool = True,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Softmax probabilities of a preprocessed case, averaged over ``networks``, as z-slabs.

    The networks advance through the case together (:func:`iter_logit_slabs` per network), so the
    memory is one rolling buffer of ``patch_z`` slices per network plus one slab: no volume-sized
    logits or probabilities exist. Averaging probabilities (not logits) across folds follows
    nnU-Net's ensembling; the arithmetic per voxel is that of a whole-volume softmax followed by
    a sum over networks and a division by their number. ``samples_per_forward`` and ``to_cpu``
    are those of :func:`iter_logit_slabs` (``to_cpu=False``: slabs stay on the device).

    Yields
    ------
    (z, probabilities) : (slice, Tensor)
        Consecutive slabs covering all z of ``data`` once, in order; float32 ``(K, dz, Y, X)``.
    """
    if not networks:
        raise ValueError("no network to predict with")
    states = []
    for network in networks:
        states.append(getattr(network, "deep_supervision", None))
        if hasattr(network, "deep_supervision"):
            network.deep_supervision = False
        network.eval()
    try:
        streams = [
            iter_logit_slabs(
                network, data, config.patch_size, num_classes, step=step, mirror_axes=mirror_axes,
                tiles_per_batch=tiles_per_batch, device=device, amp=amp,
                samples_per_forward=samples_per_forward, to_cpu=to_cpu,
            )
            for network in networks
        ]
        for parts in zip(*streams, strict=True):
            total = None
            for _, logits in parts:
                probs = torch.softmax(logits, dim=0)
                total = probs if total is None else total.add_(probs)
            total /= len(networks)
            yield parts[0][0], total
    finally:
        for network, state in zip(networks, states, strict=True):
            if state is not None:
                network.deep_supervision = state


@torch.inference_mode()
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
    dtype: torch.dtype = torch.float32,
    samples_per_forward: int | None = None,
) -> torch.Tensor:
    """Softmax probabilities ``(K, Z, Y, X)`` of a preprocessed case, averaged over ``networks``.

    Assembled from :func:`iter_probability_slabs`, so the result (of ``dtype``; float16 halves
    it) is the only volume-sized allocation. Values equal the float32 probabilities cast to ``dtype``.
    """
    out = torch.empty((num_classes, *data.shape[1:]), dtype=dtype)
    for z, probs in iter_probability_slabs(
        networks, data, config, num_classes, mirror_axes, device, amp, step, tiles_per_batch, samples_per_forward
    ):
        out[:, z] = probs
    return out


@torch.inference_mode()
def predict_labels(
    networks: Sequence[nn.Module],
    data: np.ndarray | torch.Tensor,
    config: ConfigurationPlan,
    label_values: Sequence[int],
    mirror_axes: Sequence[int] = (),
    device: torch.device | str = "cpu",
    amp: bool = False,
    step: float = 0.5,
    tiles_per_batch: int = 4,
    rounding: torch.dtype = torch.float16,
    samples_per_forward: int | None = None,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Label map ``(Z, Y, X)`` of a preprocessed case without any volume of probabilities.

    Each slab of fold-averaged probabilities (:func:`iter_probability_slabs`) is rounded to
    ``rounding`` and arg-maxed, so the labels equal :func:`labels_from_probabilities` of
    :func:`predict_probabilities` with ``dtype=rounding`` (ties, which rounding can create, go to
    the lower class either way). Memory: the uint8 result plus rolling slabs. ``foreground``, a
    uint8 array of the same shape, receives ``round(255 * (1 - p_background))`` slab by slab: one
    byte per voxel instead of a float volume (for gap bridging).
    """
    lookup = _label_lookup(label_values)
    out = np.empty(tuple(data.shape[1:]), dtype=lookup.dtype)
    for z, probs in iter_probability_slabs(
        networks, data, config, len(label_values), mirror_axes, device, amp, step, tiles_per_batch,
        samples_per_forward,
    ):
        out[z] = lookup[torch.argmax(probs.to(rounding), dim=0).numpy()]
        if foreground is not None:
            foreground[z] = torch.round((1.0 - probs[0].float()).clamp_(0, 1) * 255).to(torch.uint8).numpy()
    return out


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
    lookup = _label_lookup(label_values)
    out = np.empty(tuple(probabilities.shape[1:]), dtype=lookup.dtype)
    for sl in _z_slabs(probabilities.shape, slab_voxels):
        out[sl] = lookup[torch.argmax(probabilities[:, sl], dim=0).numpy()]
    return out


def _label_lookup(label_values: Sequence[int]) -> np.ndarray:
    """Class index -> label value, uint8 (int16 when a value exceeds 255)."""
    return np.asarray(label_values, dtype=np.int16 if max(label_values) > 255 else np.uint8)


def _z_slabs(shape: Sequence[int], slab_voxels: int) -> list[slice]:
    """Slices along z of a ``(K, Z, Y, X)`` shape, each about ``slab_voxels`` voxels per class."""
    plane = max(1, int(np.prod(shape[2:])))
    step = max(1, slab_voxels // plane)
    return [slice(z, min(z + step, shape[1])) for z in range(0, shape[1], step)]
