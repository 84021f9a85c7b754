"""Device-side prediction of one case: preprocessing, sliding window, ensembling and restore on the GPU.

The streamed path (:func:`~vessel_seg.inference.predictor.predict_image` without this module)
preprocesses on the CPU with scipy splines, sends every tile batch to the device and brings every
finished slab back for softmax, arg-max and label resampling on the CPU: its host memory is
bounded, but on a GPU the CPU work and the transfers dominate. When the device is CUDA or MPS and
the case fits in its free memory (:func:`plan_prediction`), this path instead

1. crops on the CPU (non-zero box) and copies the cropped float32 image to the device once;
2. normalises it there and resamples it with linear interpolation (see
   :mod:`vessel_seg.inference.device_resampling`: trilinear instead of the CPU path's order-3
   spline, so a small share of boundary voxels can differ);
3. runs the sliding window with its Gaussian accumulators, softmax, fold averaging, float16
   rounding and arg-max on the device, into a uint8 map of class indices;
4. resamples that map to the cropped original shape on the device (one-hot, order 1, the CPU
   path's taps and tie rules) and copies only the uint8 label map back, where it is pasted into
   the original shape.

Forward batching (:func:`choose_forward_batch`) applies to both paths on a GPU: the mirrorings of a
few tiles go through the network in one forward.

``VS_PREDICT_DEVICE_PATH=1`` forces this path (also on the CPU, which is how the tests run it),
``0`` forbids it, ``auto`` or unset decides by memory.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from vessel_seg.case_store import CaseProperties
from vessel_seg.device import mixed_precision_enabled
from vessel_seg.errors import VesselSegError
from vessel_seg.imageio import ImageGeometry
from vessel_seg.inference.case_prediction import iter_probability_slabs
from vessel_seg.inference.device_resampling import (
    DEVICE_SLAB_VOXELS,
    interpolated_axes,
    labels_to_shape_on_device,
    normalize_on_device,
    resample_on_device,
)
from vessel_seg.inference.sliding_window import mirror_combinations
from vessel_seg.planners.cost_model import layer_costs
from vessel_seg.planners.cropping import crop_to_bbox, nonzero_bbox, paste_into
from vessel_seg.planners.plans import ConfigurationPlan, NetworkTopology, Plans
from vessel_seg.planners.preprocessing import target_spacing
from vessel_seg.planners.resampling import compute_new_shape, separate_axis

if TYPE_CHECKING:
    from vessel_seg.inference.predictor import TrainedModel

log = logging.getLogger(__name__)

DEVICE_PATH_ENV = "VS_PREDICT_DEVICE_PATH"
DEVICE_MEMORY_FRACTION = 0.8  # share of the free device memory the device path may plan to use
FORWARD_MEMORY_FRACTION = 0.25  # share of the free device memory for the activations of one forward
FORWARD_VOXELS = 1 << 23  # input voxels per forward (samples x patch) that keep a large GPU busy
MAX_SAMPLES_PER_FORWARD = 32
LIVE_TENSORS = 4  # largest activations alive at once in an inference forward, besides the skips
DEFAULT_TILES_PER_BATCH = 4  # the CPU path's tiles per window step
RESTORE_ORDER, RESTORE_ANISOTROPY = 1, 3.0  # as predictor.predict_image's restore_to_original call


@dataclass(frozen=True)
class DeviceDecision:
    """Whether to predict on the device side, and why (for the debug log)."""

    use: bool
    reason: str


@dataclass(frozen=True)
class PredictionPlan:
    """How one case is predicted: device-side path or streamed, and the forward batching of both."""

    device_path: DeviceDecision
    tiles_per_batch: int
    samples_per_forward: int | None


def device_path_override(value: str | None = None) -> bool | None:
    """``VS_PREDICT_DEVICE_PATH`` (or ``value``): ``1`` forces the device path, ``0`` forbids it, unset/``auto`` decides."""
    value = os.environ.get(DEVICE_PATH_ENV, "") if value is None else value
    text = value.strip().lower()
    if text in ("", "auto"):
        return None
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise VesselSegError(f"{DEVICE_PATH_ENV}={value!r} is not valid; use 1 (force), 0 (never) or auto")


def choose_device_path(
    device_type: str, needed_bytes: float, free_bytes: float | None, override: bool | None = None
) -> DeviceDecision:
    """The decision rule, on plain numbers (bytes).

    Forced either way by ``override``; otherwise only on ``cuda`` or ``mps``, and only when
    ``needed_bytes`` (:func:`estimate_device_bytes`) is at most :data:`DEVICE_MEMORY_FRACTION` of
    ``free_bytes`` (``None``: unknown, so no).
    """
    need = f"{needed_bytes / 1e9:.2f} GB"
    if override is not None:
        return DeviceDecision(override, f"{'forced' if override else 'switched off'} by {DEVICE_PATH_ENV} (needs about {need})")
    if device_type not in ("cuda", "mps"):
        return DeviceDecision(False, f"device {device_type}: streamed path")
    if free_bytes is None:
        return DeviceDecision(False, f"free {device_type} memory unknown: streamed path")
    free = f"{free_bytes / 1e9:.2f} GB"
    if needed_bytes > DEVICE_MEMORY_FRACTION * free_bytes:
        return DeviceDecision(False, f"needs about {need}, {free} free on {device_type}: streamed path")
    return DeviceDecision(True, f"needs about {need} of {free} free on {device_type}")


def estimate_device_bytes(
    channels: int,
    original_shape: Sequence[int],
    resampled_shape: Sequence[int],
    num_classes: int,
    num_networks: int,
    patch_size: Sequence[int],
    forward_bytes: float,
) -> int:
    """Peak device memory (bytes) of the device path for one case, beyond the networks' weights.

    ``original_shape`` is the (cropped) input ``(Z, Y, X)``, ``resampled_shape`` the network's grid
    (``V0`` and ``V1`` voxels), ``forward_bytes`` the activations of one forward. The peak is the
    largest of three phases: resampling (float32 input and output, ``4 C (V0 + V1)``); prediction
    (the float32 input, padded when smaller than the patch, a uint8 label map, per network a
    rolling buffer of ``patch_z`` slices of ``K + 1`` float32 planes and a finished slab of ``K``,
    one shift copy, the probability sum and the forward); restore (the two uint8 maps and
    float64 slab temporaries).
    """
    v0, v1 = math.prod(original_shape), math.prod(resampled_shape)
    patch = [1, *patch_size] if len(patch_size) == 2 else list(patch_size)
    padded = math.prod(max(s, p) for s, p in zip(resampled_shape, patch, strict=True))
    rows = patch[0] * math.prod(max(s, p) for s, p in zip(resampled_shape[1:], patch[1:], strict=True))
    resample = 4 * channels * (v0 + v1) + 3 * 4 * min(v1, DEVICE_SLAB_VOXELS)
    window = 4 * rows * (num_networks * (2 * num_classes + 1) + 3 * num_classes)
    predict = 4 * channels * (v1 + (padded if padded != v1 else 0)) + v1 + window + forward_bytes
    restore = v1 + v0 + 8 * 8 * min(v0, DEVICE_SLAB_VOXELS)
    return int(max(resample, predict, restore))


def forward_bytes_per_sample(
    topology: NetworkTopology, patch_size: Sequence[int], in_channels: int, num_classes: int, bytes_per_element: int
) -> float:
    """Activation bytes of one tile in an inference forward of the ResU-Net (no autograd).

    The encoder outputs stay alive for the skip connections; besides them about
    :data:`LIVE_TENSORS` tensors of the largest layer output exist at once (block input, inner
    tensors, output). A model (``planners/cost_model.py``'s layer sizes), not a measurement.
    """
    costs = layer_costs(topology, patch_size, in_channels, num_classes)
    largest = max(c.out_elements for c in costs)
    shape, skips = [float(p) for p in patch_size], 0.0
    for features, stride in zip(topology.features_per_stage, topology.strides, strict=True):
        shape = [math.ceil(n / s) for n, s in zip(shape, stride, strict=True)]
        skips += features * math.prod(shape)
    return float(bytes_per_element * (skips + LIVE_TENSORS * largest))


def choose_forward_batch(
    device_type: str, num_flips: int, sample_bytes: float, patch_voxels: int, free_bytes: float | None
) -> tuple[int, int | None]:
    """``(tiles_per_batch, samples_per_forward)`` for the sliding window.

    On the CPU (or with unknown free memory): 4 tiles per step, one forward per mirroring (the
    streamed path's batching, whose memory bound the README states). On a GPU: as many samples
    (tiles x mirrorings) per forward as fit :data:`FORWARD_MEMORY_FRACTION` of the free memory,
    at most :data:`FORWARD_VOXELS` input voxels and :data:`MAX_SAMPLES_PER_FORWARD`; a step takes
    as many tiles as have all their mirrorings in one forward (at least one tile).
    """
    if device_type == "cpu" or free_bytes is None:
        return DEFAULT_TILES_PER_BATCH, None
    samples = min(
        MAX_SAMPLES_PER_FORWARD,
        FORWARD_VOXELS // max(1, patch_voxels),
        int(FORWARD_MEMORY_FRACTION * free_bytes // max(sample_bytes, 1.0)),
    )
    samples = max(1, samples)
    tiles = max(1, samples // num_flips)
    return tiles, (tiles * num_flips if samples >= num_flips else samples)


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (driver's free plus PyTorch's cached blocks) or of MPS; None elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps":
        try:
            return max(0, int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()))
        except (AttributeError, RuntimeError):
            return None
    return None


def _sample_bytes(model: TrainedModel, in_channels: int) -> float:
    """:func:`forward_bytes_per_sample` of ``model``'s network (2 bytes per element under autocast)."""
    element = 2 if mixed_precision_enabled(model.device, True) else 4
    config = model.config
    return forward_bytes_per_sample(config.network, config.patch_size, in_channels, len(model.label_values), element)


def forward_batch_for(model: TrainedModel, in_channels: int, use_tta: bool) -> tuple[int, int | None]:
    """:func:`choose_forward_batch` for ``model`` on its device, now (``in_channels`` network inputs)."""
    flips = len(mirror_combinations(model.mirror_axes if use_tta else ()))
    free = free_device_bytes(model.device)
    if model.device.type == "cpu" or free is None:
        return choose_forward_batch(model.device.type, flips, 0.0, 0, free)  # no estimate needed
    patch_voxels = math.prod(model.config.patch_size)
    return choose_forward_batch(model.device.type, flips, _sample_bytes(model, in_channels), patch_voxels, free)


def plan_prediction(model: TrainedModel, image_shape: Sequence[int], spacing: Sequence[float], use_tta: bool) -> PredictionPlan:
    """Path and batching for a raw image of ``image_shape`` ``(C, Z, Y, X)`` at ``spacing`` (mm).

    The uncropped shape stands in for the cropped one (an upper bound). Not the device path: a
    cascade stage (its previous stage's one-hot input is built on the CPU) or more than 256 classes.
    """
    config, device = model.config, model.device
    num_classes, channels = len(model.label_values), int(image_shape[0])
    tiles, samples = forward_batch_for(model, channels, use_tta)
    override = device_path_override()
    if override is None and device.type not in ("cuda", "mps"):
        return PredictionPlan(choose_device_path(device.type, 0, None), tiles, samples)
    if model.previous_stage is not None or num_classes > 256:
        why = "cascade stage" if model.previous_stage is not None else "more than 256 classes"
        return PredictionPlan(DeviceDecision(False, f"{why}: streamed path"), tiles, samples)
    shape = [int(s) for s in image_shape[1:]]
    new_shape = compute_new_shape(shape, spacing, target_spacing(config, spacing, shape))
    forward = (samples or tiles) * _sample_bytes(model, channels)
    free = free_device_bytes(device)
    needed = estimate_device_bytes(channels, shape, new_shape, num_classes, len(model.networks), config.patch_size, forward)
    return PredictionPlan(choose_device_path(device.type, needed, free, override), tiles, samples)


def preprocess_on_device(
    images: np.ndarray, geometry: ImageGeometry, plans: Plans, config: ConfigurationPlan, case_id: str,
    device: torch.device,
) -> tuple[torch.Tensor, CaseProperties]:
    """:func:`~vessel_seg.planners.preprocessing.preprocess_case` for prediction, on ``device``.

    Crops on the CPU (``images`` ``(C, Z, Y, X)`` is only read), then normalises and resamples the
    float32 copy on the device (linear, see the module docstring). Returns the device tensor
    ``(C, Z', Y', X')`` and the properties that map a prediction back.
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"{case_id}: images {images.shape} do not match geometry {geometry.shape}")
    bbox = nonzero_bbox(images)
    data = torch.from_numpy(crop_to_bbox(images, bbox)).to(device, torch.float32, copy=True)
    normalize_on_device(data, config.normalization, plans.intensity_properties)
    shape_after_crop = [int(s) for s in data.shape[1:]]
    spacing = [float(s) for s in geometry.spacing]
    new_spacing = target_spacing(config, spacing, shape_after_crop)
    new_shape = [int(s) for s in compute_new_shape(shape_after_crop, spacing, new_spacing)]
    if new_shape != shape_after_crop:
        axis = separate_axis(spacing, new_spacing, config.anisotropy_threshold, shape_after_crop, new_shape)
        linear = interpolated_axes(config.resampling_order_image, axis)
        resampled = torch.empty((data.shape[0], *new_shape), dtype=torch.float32, device=device)
        for c in range(data.shape[0]):
            resampled[c] = resample_on_device(data[c], new_shape, linear)
        data = resampled
    props = CaseProperties(case_id, geometry, bbox, shape_after_crop, new_shape, new_spacing)
    return data, props


@torch.inference_mode()
def labels_on_device(
    model: TrainedModel, data: torch.Tensor, use_tta: bool, step: float, plan: PredictionPlan
) -> torch.Tensor:
    """uint8 class indices ``(Z', Y', X')`` of a preprocessed device tensor ``(C, Z', Y', X')``.

    Slabs of fold-averaged probabilities stay on the device and are rounded to float16 before the
    arg-max, as :func:`~vessel_seg.inference.case_prediction.predict_labels` does on the CPU.
    """
    out = torch.empty(tuple(data.shape[1:]), dtype=torch.uint8, device=data.device)
    slabs = iter_probability_slabs(
        model.networks, data, model.config, len(model.label_values), model.mirror_axes if use_tta else (),
        model.device, mixed_precision_enabled(model.device, True), step, plan.tiles_per_batch,
        plan.samples_per_forward, to_cpu=False,
    )
    for z, probs in slabs:
        out[z] = torch.argmax(probs.to(out.device, torch.float16), dim=0).to(torch.uint8)
    return out


def restore_on_device(seg: torch.Tensor, props: CaseProperties, label_values: Sequence[int]) -> np.ndarray:
    """Class indices in preprocessed space -> label values on the original grid, as a NumPy array.

    The resampling of :func:`~vessel_seg.planners.preprocessing.restore_to_original` for labels
    (one-hot, order 1, separate coarse axis) runs on the device; the uint8 (int16 for values above
    255) map of the cropped shape is copied back and pasted into the original shape (0 outside).
    """
    crop_shape = tuple(props.shape_after_crop)
    original = props.original_geometry.spacing
    if tuple(seg.shape) != crop_shape:
        axis = separate_axis(props.spacing, original, RESTORE_ANISOTROPY, seg.shape, crop_shape)
        seg = labels_to_shape_on_device(seg, crop_shape, len(label_values), interpolated_axes(RESTORE_ORDER, axis))
    dtype = torch.int16 if max(label_values) > 255 else torch.uint8
    if list(label_values) != list(range(len(label_values))) or dtype != torch.uint8:
        values = torch.zeros(seg.shape, dtype=dtype, device=seg.device)
        for index, value in enumerate(label_values):
            if value:
                values.masked_fill_(seg == index, value)
        seg = values
    return paste_into(tuple(props.original_geometry.shape), seg.cpu().numpy(), props.crop_bbox, fill=0)


def predict_image_on_device(
    model: TrainedModel, images: np.ndarray, geometry: ImageGeometry, case_id: str, use_tta: bool, step: float,
    plan: PredictionPlan,
) -> np.ndarray:
    """Label map in the input geometry of one raw image ``(C, Z, Y, X)``, every step on ``model.device``."""
    data, props = preprocess_on_device(images, geometry, model.plans, model.config, case_id, model.device)
    del images
    seg = labels_on_device(model, data, use_tta, step, plan)
    del data
    return restore_on_device(seg, props, model.label_values)
