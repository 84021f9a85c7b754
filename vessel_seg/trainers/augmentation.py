"""Data augmentation for training and validation batches, built from batchgenerators transforms.

Batches are dicts ``{"data": (B, C, *S), "target": (B, T, *S)}`` as produced by
:class:`vessel_seg.trainers.dataloading.PatchLoader`, where ``S`` is the loader's *sample* patch
size (larger than the network patch when spatial augmentation is on, see
:func:`initial_patch_size`) and ``T`` is 1, or 2 for the cascade, whose second target channel is the
previous stage's segmentation. The pipelines end with C-contiguous numpy arrays, float32 ``data`` of
shape ``(B, C + L, *patch_size)`` (``L`` one-hot channels of the previous stage, 0 without
cascade) and uint8 ``target`` of shape ``(B, 1, *patch_size)``; :func:`batch_to_tensors` turns
them into float32 torch tensors. That last step is left to the consumer because torch tensors
sent from worker processes travel as shared file descriptors, which race with worker shutdown
and can exhaust the open-file limit, whereas numpy arrays are simply copied through the pipe.
Targets stay at full resolution: deep-supervision downsampling is the loss's job.

The training recipe follows nnU-Net v2 (probabilities are per sample):

========================  ======================================================  =====
transform                 parameters                                              p
========================  ======================================================  =====
rotation                  ±30° about each axis (3D); ±180° in plane (2D, dummy      0.2
                          2D; ±15° for elongated in-plane patches)
scaling                   factor 0.7-1.4 (one factor for all axes)                0.2
elastic deformation       off by default (slow, and it can break 1-voxel vessels)  0.2
Gaussian noise            variance 0-0.1                                          0.1
Gaussian blur             sigma 0.5-1 voxel, each channel with p 0.5              0.2
brightness (multiply)     0.75-1.25                                               0.15
contrast                  0.75-1.25                                               0.15
simulate low resolution   zoom 0.5-1, each channel with p 0.5                     0.25
gamma, inverted image     0.7-1.5, statistics kept                                0.1
gamma                     0.7-1.5, statistics kept                                0.3
mirroring                 each mirror axis with p 0.5                             1
cascade: morphology       dilation/erosion/opening/closing, ball radius 1-3 vox   0.4
cascade: remove component one random component covering <= 15% of the patch     0.2
========================  ======================================================  =====

For strongly anisotropic 3D data (largest over smallest voxel spacing above
``anisotropy_threshold``), rotation and scaling are done slice-wise in the plane of the two finer
axes ("dummy 2D"), and low-resolution simulation leaves the coarse axis alone.

Rotation, scaling and elastic deformation (:class:`~vessel_seg.trainers.spatial.SpatialAugmentation`)
and low-resolution simulation (:class:`~vessel_seg.trainers.low_resolution.SimulateLowResolution`)
draw and compute what batchgenerators' ``SpatialTransform`` and ``SimulateLowResolutionTransform``
do, several times faster: a sample without a spatial draw is a plain centre crop, a transformed one
only reads the region its coordinates reach, and the upsampling is separable. The image in
transformed samples is interpolated linearly by default (``spatial_order=1``, as nnU-Net v2 does;
``spatial_order=3`` gives the cubic B-spline used before). A held-out A/B on 2026-11-30 (seed 2026,
docs/benchmarks.md) found no loss from linear: held-out Dice 0.688 / 0.690 / 0.693 after 100 / 200 /
300 iterations against 0.686 / 0.649 / 0.663 with the spline. Labels are resampled per label,
linearly, as before. Transform CPU time per batch
for the default GPU plans' 128x96x96 patch, batch 2, on this project's 2-core CPU: 0.23 s (spline) or
0.15 s (linear), against 1.2 s with batchgenerators' ``SpatialTransform`` (loading excluded).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from batchgenerators.augmentations.utils import rotate_coords_2d, rotate_coords_3d
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform

from vessel_seg.trainers.cascade_transforms import CascadeToOneHot, RandomBinaryMorphology, RandomComponentRemoval
from vessel_seg.trainers.low_resolution import SimulateLowResolution
from vessel_seg.trainers.skeleton_target import SkeletonTarget
from vessel_seg.trainers.spatial import SpatialAugmentation

DATA, TARGET = "data", "target"


@dataclass
class Augmentation:
    """A transform pipeline and the geometry the loader and the predictor need to match it.

    Attributes
    ----------
    transform : Compose
        Callable as ``transform(**batch) -> batch``.
    patch_size : tuple of int
        Spatial size of the output patches (the network's patch size).
    sample_patch_size : tuple of int
        Spatial size the loader must crop before this pipeline (``>= patch_size``).
    mirror_axes : tuple of int
        Spatial axes (0-based, array order) that training mirrors; test-time augmentation should
        mirror the same axes.
    dummy_2d_axis : int or None
        Coarse axis kept out of rotation and scaling for anisotropic 3D data, else None.
    """

    transform: Compose
    patch_size: tuple[int, ...]
    sample_patch_size: tuple[int, ...]
    mirror_axes: tuple[int, ...]
    dummy_2d_axis: int | None = None


def dummy_2d_axis(spacing: Sequence[float], dim: int, anisotropy_threshold: float = 3.0) -> int | None:
    """Axis to keep out of 3D rotations, or None.

    For 3D patches whose voxel spacing ``(z, y, x)`` (mm) has ``max / min > anisotropy_threshold``,
    returns the index of the coarsest axis; otherwise (and always in 2D) None.
    """
    if dim != 3:
        return None
    spacing = np.asarray(spacing[-3:], dtype=float)
    if spacing.max() / spacing.min() > anisotropy_threshold:
        return int(np.argmax(spacing))
    return None


def _angles(limit: float) -> np.ndarray:
    # extents of a rotated box peak at the range ends or at multiples of 45 degrees
    grid = np.linspace(-limit, limit, 13)
    diagonals = np.arange(-4, 5) * (math.pi / 4)
    return np.unique(np.concatenate([grid, diagonals[np.abs(diagonals) <= limit]]))


def initial_patch_size(
    patch_size: Sequence[int], rotation_rad: float, scale_range: tuple[float, float], fixed_axis: int | None = None
) -> tuple[int, ...]:
    """Sample patch size that covers ``patch_size`` after any rotation and scaling in range.

    batchgenerators' spatial transform maps each output voxel to input coordinates rotated by up
    to ``rotation_rad`` (about every axis in 3D, in plane in 2D) and multiplied by a factor up to
    ``scale_range[1]``. The returned size is the axis-aligned extent of all such rotated and scaled
    output patches (angles evaluated on a grid of at most 5 degree steps plus the 45 degree
    diagonals), so sampled coordinates stay inside the loaded region (no artificial borders inside
    the image). ``fixed_axis`` (dummy 2D) keeps its size and is not rotated.
    """
    patch = np.asarray(patch_size, dtype=float)
    scale = max(1.0, float(scale_range[1]))
    if fixed_axis is not None:
        in_plane = [a for a in range(len(patch)) if a != fixed_axis]
        sizes = list(patch)
        for axis, size in zip(in_plane, initial_patch_size(patch[in_plane], rotation_rad, scale_range), strict=True):
            sizes[axis] = size
        return tuple(int(s) for s in sizes)
    half = patch / 2.0
    corners = np.array(list(itertools.product(*[(-h, h) for h in half]))).T  # (dim, 2**dim)
    angles = _angles(abs(rotation_rad))
    extent = np.abs(corners).max(axis=1)
    if len(patch) == 2:
        for a in angles:
            extent = np.maximum(extent, np.abs(rotate_coords_2d(corners, a)).max(axis=1))
    else:
        for ax, ay, az in itertools.product(angles, angles, angles):
            extent = np.maximum(extent, np.abs(rotate_coords_3d(corners, ax, ay, az)).max(axis=1))
    return tuple(int(math.ceil(2 * e * scale - 1e-6)) for e in extent)


class Convert3DTo2D(AbstractTransform):
    """Fold spatial axis ``axis`` of (B, C, Z, Y, X) data and target into the channel axis."""

    def __init__(self, axis: int):
        self.axis = axis

    def __call__(self, **batch):
        shapes = {}
        for key in (DATA, TARGET):
            array = np.moveaxis(batch[key], self.axis + 2, 2)
            shapes[key] = array.shape[1:3]
            batch[key] = array.reshape(array.shape[0], -1, *array.shape[3:])
        batch["_dummy_2d_shapes"] = shapes
        return batch


class Convert2DTo3D(AbstractTransform):
    """Undo :class:`Convert3DTo2D` after the in-plane spatial transform."""

    def __init__(self, axis: int):
        self.axis = axis

    def __call__(self, **batch):
        shapes = batch.pop("_dummy_2d_shapes")
        for key in (DATA, TARGET):
            array = batch[key]
            array = array.reshape(array.shape[0], *shapes[key], *array.shape[2:])
            batch[key] = np.ascontiguousarray(np.moveaxis(array, 2, self.axis + 2))
        return batch


class FinalizeArrays(AbstractTransform):
    """Last step: contiguous float32 ``data`` and uint8 ``target`` (labels after interpolation are whole numbers)."""

    def __call__(self, **batch):
        batch[DATA] = np.ascontiguousarray(batch[DATA], dtype=np.float32)
        target = batch[TARGET]
        if not np.issubdtype(target.dtype, np.integer):  # float labels after a float interpolation
            target = np.rint(target)
        batch[TARGET] = np.ascontiguousarray(target, dtype=np.uint8)
        return batch


def batch_to_tensors(batch: dict, pin_memory: bool = False) -> dict:
    """Turn ``data`` and ``target`` into float32 torch tensors (sharing memory where possible).

    With ``pin_memory`` (and CUDA available) the tensors are page-locked for fast, asynchronous
    copies to the GPU. Other keys are left as they are.
    """
    pin = pin_memory and torch.cuda.is_available()
    for key in (DATA, TARGET):
        tensor = torch.as_tensor(batch[key]).float()
        batch[key] = tensor.pin_memory() if pin else tensor
    return batch


def _cascade_transforms(cascade_labels: Sequence[int] | None, num_image_channels: int | None, train: bool) -> list:
    if not cascade_labels:
        return []
    if num_image_channels is None:
        raise ValueError("num_image_channels is required with cascade_labels")
    steps: list = [CascadeToOneHot(cascade_labels)]
    if train:
        channels = list(range(num_image_channels, num_image_channels + len(cascade_labels)))
        steps += [RandomBinaryMorphology(channels), RandomComponentRemoval(channels)]
    return steps


def _final_steps(skeleton_target: bool) -> list:
    """Dtypes and layout, then (if asked) the skeleton channel, which needs the final integer labels."""
    return [FinalizeArrays(), SkeletonTarget()] if skeleton_target else [FinalizeArrays()]


def _intensity_steps(fixed: int | None) -> list:
    """The intensity part of the recipe (noise, blur, brightness, contrast, low resolution, gamma); image only.

    ``fixed`` is the coarse axis of dummy-2D data, which low-resolution simulation leaves alone.
    """
    return [
        GaussianNoiseTransform(noise_variance=(0.0, 0.1), p_per_sample=0.1, data_key=DATA),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5,
                              data_key=DATA),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15, data_key=DATA),
        ContrastAugmentationTransform(p_per_sample=0.15, data_key=DATA),
        SimulateLowResolution((0.5, 1.0), p_per_sample=0.25, p_per_channel=0.5,
                              ignore_axes=(fixed,) if fixed is not None else None, data_key=DATA),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1,
                       data_key=DATA),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3,
                       data_key=DATA),
    ]


def default_rotation_deg(patch: tuple[int, ...], fixed: int | None) -> float:
    """nnU-Net's rotation range in degrees: 30 in 3D; in plane (2D or dummy 2D) 180, or 15 for patches more
    than 1.5 times longer than wide (rotating those would cut off their ends)."""
    if len(patch) == 3 and fixed is None:
        return 30.0
    in_plane = [p for a, p in enumerate(patch) if a != fixed][-2:]
    return 180.0 if max(in_plane) / min(in_plane) <= 1.5 else 15.0


def training_transforms(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    *,
    mirror_axes: Sequence[int] | None = None,
    rotation_deg: float | None = None,
    scale_range: tuple[float, float] = (0.7, 1.4),
    p_rotation: float = 0.2,
    p_scale: float = 0.2,
    elastic: bool = False,
    p_elastic: float = 0.2,
    anisotropy_threshold: float = 3.0,
    cascade_labels: Sequence[int] | None = None,
    num_image_channels: int | None = None,
    spatial_order: int = 1,
    skeleton_target: bool = False,
) -> Augmentation:
    """The training augmentation pipeline (see the module docstring for the recipe).

    Parameters
    ----------
    patch_size : sequence of int
        Network patch size, ``(z, y, x)`` in 3D or ``(y, x)`` in 2D; its length sets the dimension.
    spacing : sequence of float
        Voxel spacing of the configuration in mm, ``(z, y, x)`` (for 2D the last two are used);
        decides dummy-2D augmentation.
    mirror_axes : sequence of int, optional
        Spatial axes to mirror; all axes by default, ``()`` for none.
    rotation_deg : float, optional
        Maximum rotation angle in degrees; by default 30 in 3D and 180 in plane (15 when the
        in-plane patch is more than 1.5 times longer than wide).
    scale_range : (float, float)
        Range of the coordinate scaling factor (> 1 zooms out).
    p_rotation, p_scale, p_elastic : float
        Probabilities per sample.
    elastic : bool
        Enable elastic deformation (alpha 0-900, sigma 9-13 voxels).
    anisotropy_threshold : float
        See :func:`dummy_2d_axis`.
    cascade_labels : sequence of int, optional
        Foreground labels of the previous stage; enables the cascade channels and their augmentation.
    num_image_channels : int, optional
        Number of image channels ``C`` (required with ``cascade_labels``).
    spatial_order : int
        Interpolation of the image in rotated/scaled/deformed samples: 1 (linear, default, as in
        nnU-Net v2) or 3 (cubic B-spline, about 1.5x the transform time per batch); labels are always
        resampled per label, linearly (see :mod:`vessel_seg.trainers.spatial`).
    skeleton_target : bool
        Append the label's tubed skeleton as target channel 1 (losses that need it, such as skeleton
        recall), computed from the augmented label.

    Returns
    -------
    Augmentation
        The pipeline; feed the loader ``sample_patch_size`` and TTA ``mirror_axes``.
    """
    patch = tuple(int(p) for p in patch_size)
    dim = len(patch)
    fixed = dummy_2d_axis(spacing, dim, anisotropy_threshold)
    axes = tuple(range(dim)) if mirror_axes is None else tuple(int(a) for a in mirror_axes)
    if any(not 0 <= a < dim for a in axes):
        raise ValueError(f"mirror axes {axes} are not spatial axes of a {dim}D patch")
    angle = math.radians(rotation_deg if rotation_deg is not None else default_rotation_deg(patch, fixed))
    spatial_on = p_rotation > 0 or p_scale > 0 or (elastic and p_elastic > 0)
    sample = initial_patch_size(patch, angle, scale_range, fixed) if spatial_on else patch

    spatial_patch = tuple(p for a, p in enumerate(patch) if a != fixed)
    spatial = SpatialAugmentation(
        spatial_patch, angle, scale_range, p_rotation=p_rotation, p_scale=p_scale, elastic=elastic,
        p_elastic=p_elastic, alpha=(0.0, 900.0), sigma=(9.0, 13.0), order_data=spatial_order, data_key=DATA,
        label_key=TARGET,
    )
    steps: list = [Convert3DTo2D(fixed), spatial, Convert2DTo3D(fixed)] if fixed is not None else [spatial]
    steps += _intensity_steps(fixed)
    if axes:
        steps.append(MirrorTransform(axes, data_key=DATA, label_key=TARGET))
    steps += _cascade_transforms(cascade_labels, num_image_channels, train=True)
    steps += _final_steps(skeleton_target)
    return Augmentation(Compose(steps), patch, tuple(int(s) for s in sample), axes, fixed)


def validation_transforms(
    patch_size: Sequence[int],
    *,
    cascade_labels: Sequence[int] | None = None,
    num_image_channels: int | None = None,
    skeleton_target: bool = False,
) -> Augmentation:
    """The validation pipeline: cascade one-hot channels (if any), the final dtypes and the skeleton target.

    The loader must crop ``patch_size`` directly (``sample_patch_size == patch_size``); mirror
    axes are empty.
    """
    patch = tuple(int(p) for p in patch_size)
    steps = _cascade_transforms(cascade_labels, num_image_channels, train=False) + _final_steps(skeleton_target)
    return Augmentation(Compose(steps), patch, patch, (), None)
