"""Experiment planner: fingerprint + ``dataset.json`` -> :class:`~vessel_seg.planners.plans.Plans`.

Configurations
--------------
``3d_fullres``
    At the target spacing of :func:`vessel_seg.planners.spacing.fullres_spacing` (median, anisotropy
    and vessel-radius rules).
``2d``
    The same in-plane spacing; ``spacing`` holds ``(y, x)`` only and each case keeps its own z
    spacing (slices stay slices). ``batch_dice`` is on: a single slice holds little vessel.
``3d_lowres`` and ``3d_cascade_fullres``
    Only when the ``3d_fullres`` patch covers less than :data:`LOWRES_COVERAGE` (a quarter) of the
    median image volume. The low-resolution spacing is coarsened step by step
    (:func:`~vessel_seg.planners.spacing.lowres_step`, x1.15) until its patch covers at least that
    share of its median image or reaches the relaxed vessel rule of
    :func:`~vessel_seg.planners.spacing.lowres_spacing_cap`; it is dropped when it would hold more
    than half the full-resolution voxels (too close to ``3d_fullres`` to be worth a second stage). ``3d_cascade_fullres`` equals
    ``3d_fullres`` (same preprocessed data) with ``previous_stage="3d_lowres"``; its network gets
    the image channels plus one channel per foreground label, which the trainer adds.

Datasets of single-slice (2D) images get only ``2d``.

Patch and batch size
--------------------
The patch starts as the median image shape at the configuration's spacing (rounded up to the
network's divisibility; a patch larger than an image is padded). While a training step with batch
:data:`MIN_BATCH_SIZE` (2) exceeds the budget, the axis whose patch edge is largest relative to the
median shape (ties: the longest in mm) shrinks by its stride product, and the topology is re-planned.
Then the batch grows while the step stays within budget and one batch covers at most
:data:`MAX_DATASET_FRACTION_PER_BATCH` (5 %) of the dataset's voxels (nnU-Net's rule).

Presets
-------
``"gpu"``
    Features 32 -> 320 (3D) or 32 -> 512 (2D); budget: :func:`~vessel_seg.planners.cost_model.estimate_memory_gb`
    with mixed precision (2 bytes per activation) <= ``gpu_memory_gb``.
``"cpu"``
    Sized for >= 1 training iteration per second on 2 CPU cores: features 16 -> 128 and, on top of
    the memory budget (read as RAM, fp32), a forward-pass budget of
    :data:`CPU_FORWARD_GFLOP_BUDGET` GFLOP per batch (see the constants below).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import PlansError
from vessel_seg.planners.fingerprint import DatasetFingerprint
from vessel_seg.planners.plans import ConfigurationPlan, NetworkTopology, Plans
from vessel_seg.planners.spacing import (
    LOWRES_MIN_RADIUS_VOXELS,
    MIN_DIAMETER_VOXELS,
    anisotropic_axis,
    fullres_spacing,
    lowres_spacing_cap,
    lowres_step,
    median_resampled_shape,
    planar_axes,
    resampled_shapes,
)
from vessel_seg.planners.topology import estimate_gflops, estimate_memory_gb, fit_patch_to_topology, shape_divisor
from vessel_seg.registry import Registry

log = logging.getLogger(__name__)

MIN_BATCH_SIZE = 2
MAX_DATASET_FRACTION_PER_BATCH = 0.05
LOWRES_COVERAGE = 0.25
LOWRES_MAX_VOXEL_FRACTION = 0.5
MAX_LOWRES_STEPS = 60
MIN_PATCH_EDGE = 8

# CPU preset budget. The project's CPU runs a 3x3x3 convolution at ~70 GFLOP/s in fp32 on 2 threads,
# and a training step (forward + backward + optimiser) costs ~3x the forward pass. Measured on that
# CPU (1 thread, CPU time), a step of the ResU-Net runs at 32-39 GFLOP/s of forward-equivalent work
# per thread, so a perfect 2-thread step would need about half the time this budget allows:
# CPU_EFFICIENCY = 0.5 leaves the other half for data loading and augmentation (on the same two
# cores) and imperfect thread scaling. At 1 iteration/s this allows ~12 GFLOP of forward pass per batch.
CPU_CONV_GFLOPS = 70.0
TRAINING_COST_FACTOR = 3.0
CPU_EFFICIENCY = 0.5
CPU_TARGET_ITERATIONS_PER_S = 1.0
CPU_FORWARD_GFLOP_BUDGET = CPU_CONV_GFLOPS * CPU_EFFICIENCY / (TRAINING_COST_FACTOR * CPU_TARGET_ITERATIONS_PER_S)


@dataclass(frozen=True)
class PresetSettings:
    """Network width, network class and budget of one preset (register new ones with :func:`register_preset`).

    ``bytes_per_element`` is 2 where training runs in mixed precision (GPUs), 4 in fp32;
    ``gflop_budget`` caps the forward pass of a batch (None: memory decides alone);
    ``network_class`` is the registered network the plans ask for (:mod:`vessel_seg.networks.registry`);
    ``plans_transform`` (optional) rewrites the finished plans, e.g. into voxel units for pretraining.
    """

    base_features: int
    max_features_3d: int
    max_features_2d: int
    bytes_per_element: int
    overhead_gb: float
    gflop_budget: float | None
    network_class: str = "ResUNet"
    plans_transform: Callable[[Plans], Plans] | None = None


PRESETS: Registry[PresetSettings] = Registry("planner preset")


def register_preset(name: str, settings: PresetSettings, *, replace_existing: bool = False) -> PresetSettings:
    """Make ``name`` a preset of ``vs_plan_and_preprocess --preset`` (and of ``-pl name``); returns ``settings``."""
    return PRESETS.add(name, settings, replace_existing=replace_existing)


register_preset("gpu", PresetSettings(32, 320, 512, bytes_per_element=2, overhead_gb=0.5, gflop_budget=None))
register_preset("cpu", PresetSettings(16, 128, 128, bytes_per_element=4, overhead_gb=0.25, gflop_budget=CPU_FORWARD_GFLOP_BUDGET))


def modality_free_plans(plans: Plans) -> Plans:
    """Plans for a model of any modality and voxel size (pretraining, the built-in model).

    Every configuration measures spacing in multiples of the image's finest voxel (3D: isotropic at
    the finest spacing, ``[1, 1, 1]``; 2D: ``[1, 1]``) and normalises each channel by its own
    percentiles; the cascade is dropped (a low-resolution stage has no meaning in voxel units).
    """
    for name in ("3d_lowres", "3d_cascade_fullres"):
        plans.configurations.pop(name, None)
    for config in plans.configurations.values():
        config.spacing = [1.0] * len(config.spacing)
        config.spacing_mode = "finest_voxel"
        config.normalization = ["percentile"] * len(config.normalization)
        config.next_stage = None
    plans.notes.append("modality-free: spacing in multiples of each image's finest voxel, per-image percentile normalisation")
    return plans


# Pretraining on domain-randomised volumes: the CPU preset's widths, in voxel units (see vs_pretrain).
register_preset("pretrain", replace(PRESETS.get("cpu"), plans_transform=modality_free_plans))


@dataclass
class _Budget:
    settings: PresetSettings
    memory_gb: float
    in_channels: int
    num_classes: int

    def fits(self, topology: NetworkTopology, patch: Sequence[int], batch: int) -> bool:
        memory = estimate_memory_gb(
            topology, patch, batch, self.in_channels, self.num_classes,
            bytes_per_element=self.settings.bytes_per_element, overhead_gb=self.settings.overhead_gb,
        )
        if memory > self.memory_gb:
            return False
        budget = self.settings.gflop_budget
        return budget is None or estimate_gflops(topology, patch, batch, self.in_channels, self.num_classes) <= budget


def _coverage(patch: Sequence[int], median_shape: Sequence[int]) -> float:
    """Share of the median image volume one patch covers (a patch larger than the image counts as 1)."""
    return math.prod(min(p, m) / m for p, m in zip(patch, median_shape, strict=True))


def plan_patch_and_batch(
    median_shape: Sequence[int], spacing: Sequence[float], budget: _Budget, dataset_voxels: float, max_features: int
) -> tuple[list[int], NetworkTopology, int]:
    """Patch, topology and batch size for one configuration (rules in the module docstring)."""
    dim = len(median_shape)
    kwargs = {"base_features": budget.settings.base_features, "max_features": max_features}
    patch, topology = fit_patch_to_topology(median_shape, spacing, dim, **kwargs)
    frozen: set[int] = set()
    while not budget.fits(topology, patch, MIN_BATCH_SIZE):
        candidates = [a for a in range(dim) if a not in frozen and patch[a] > MIN_PATCH_EDGE]
        if not candidates:
            raise PlansError(
                f"no patch of at least {MIN_PATCH_EDGE} voxels fits {budget.memory_gb:g} GB with batch {MIN_BATCH_SIZE} "
                f"at spacing {[round(s, 3) for s in spacing]}; raise --gpu-memory-gb"
            )
        axis = max(candidates, key=lambda a: (patch[a] / median_shape[a], patch[a] * spacing[a]))
        smaller = list(patch)
        smaller[axis] = max(patch[axis] - shape_divisor(topology)[axis], MIN_PATCH_EDGE)
        new_patch, new_topology = fit_patch_to_topology(smaller, spacing, dim, **kwargs)
        if math.prod(new_patch) >= math.prod(patch):
            frozen.add(axis)  # rounding up undid the step: this axis cannot shrink further
            continue
        patch, topology = new_patch, new_topology
    batch = MIN_BATCH_SIZE
    max_batch = MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels / math.prod(patch)
    while batch + 1 <= max_batch and budget.fits(topology, patch, batch + 1):
        batch += 1
    return patch, replace(topology, network_class=budget.settings.network_class), batch


def _configuration(
    name: str,
    plans_name: str,
    spacing: Sequence[float],
    median_shape: Sequence[int],
    patch: list[int],
    batch: int,
    topology: NetworkTopology,
    normalization: list[str],
) -> ConfigurationPlan:
    return ConfigurationPlan(
        name=name,
        data_identifier=f"{plans_name}_{name}",
        spacing=[float(s) for s in spacing],
        median_shape=[int(s) for s in median_shape],
        patch_size=patch,
        batch_size=batch,
        normalization=list(normalization),
        network=topology,
        resampling_order_image=3,
        resampling_order_label=1,
        batch_dice=topology.dim == 2,
    )


def _describe(config: ConfigurationPlan, budget: _Budget) -> str:
    t, patch, batch = config.network, config.patch_size, config.batch_size
    memory = estimate_memory_gb(
        t, patch, batch, budget.in_channels, budget.num_classes,
        bytes_per_element=budget.settings.bytes_per_element, overhead_gb=budget.settings.overhead_gb,
    )
    gflops = estimate_gflops(t, patch, batch, budget.in_channels, budget.num_classes)
    text = (
        f"{config.name}: spacing {[round(s, 3) for s in config.spacing]} mm, median shape {config.median_shape}, "
        f"patch {patch} ({_coverage(patch, config.median_shape[-len(patch):]):.0%} of it), batch {batch}, "
        f"{t.num_stages} stages, features {t.features_per_stage[0]}-{t.features_per_stage[-1]}, "
        f"est. {memory:.2f} GB, {gflops:.1f} GFLOP forward per batch"
    )
    if budget.settings.gflop_budget is not None:
        seconds = TRAINING_COST_FACTOR * gflops / (CPU_CONV_GFLOPS * CPU_EFFICIENCY)
        text += f" (~{seconds:.2f} s per training iteration on 2 CPU cores)"
    return text


def plan_experiment(
    fingerprint: DatasetFingerprint,
    info: DatasetInfo,
    dataset_name: str,
    plans_name: str = "vs_plans",
    preset: str = "gpu",
    gpu_memory_gb: float = 8.0,
) -> Plans:
    """Plan every configuration of a dataset from its fingerprint (rules in the module docstring).

    Parameters
    ----------
    fingerprint : DatasetFingerprint
        From :func:`~vessel_seg.planners.fingerprint.extract_fingerprint`.
    info : DatasetInfo
        The dataset's ``dataset.json`` (channels, labels, file ending).
    dataset_name : str
        E.g. ``"Dataset501_Synthetic"``.
    plans_name : str
        Name of the plans; prefixes every ``data_identifier``.
    preset : str
        ``"gpu"`` or ``"cpu"``.
    gpu_memory_gb : float
        Memory budget of one training step in GB (RAM for the cpu preset).

    Returns
    -------
    Plans
        With the decisions taken listed in ``notes``.
    """
    if preset not in PRESETS:
        raise PlansError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)} (or load a plugin with VS_PLUGINS)")
    if not gpu_memory_gb > 0:
        raise PlansError(f"gpu_memory_gb must be positive, got {gpu_memory_gb}")
    if not fingerprint.cases:
        raise PlansError(f"fingerprint of {dataset_name} lists no cases; delete fingerprint.json and plan again")
    if fingerprint.num_channels != info.num_channels:
        raise PlansError(
            f"fingerprint of {dataset_name} has {fingerprint.num_channels} channels but dataset.json declares "
            f"{info.num_channels}; delete fingerprint.json and plan again"
        )
    settings = PRESETS.get(preset)
    budget = _Budget(settings, gpu_memory_gb, info.num_channels, len(info.labels))
    normalization = ["ct_soft" if info.is_ct(c) else "zscore" for c in range(info.num_channels)]
    spacing, notes = fullres_spacing(fingerprint)
    notes.insert(0, f"preset {preset}: memory budget {gpu_memory_gb:g} GB" + (
        f", forward budget {settings.gflop_budget:.1f} GFLOP per batch" if settings.gflop_budget else ""))
    median = median_resampled_shape(fingerprint, spacing)
    voxels = float(resampled_shapes(fingerprint, spacing).prod(axis=1).sum())
    configs: dict[str, ConfigurationPlan] = {}

    patch, topology, batch = plan_patch_and_batch(median[1:], spacing[1:], budget, voxels, settings.max_features_2d)
    configs["2d"] = _configuration("2d", plans_name, spacing[1:], median[1:], patch, batch, topology, normalization)
    axes = planar_axes(fingerprint)
    if len(axes) < 3:
        notes.append("2D dataset (single-slice images): only the 2d configuration is planned")
    else:
        patch, topology, batch = plan_patch_and_batch(median, spacing, budget, voxels, settings.max_features_3d)
        fullres = _configuration("3d_fullres", plans_name, spacing, median, patch, batch, topology, normalization)
        configs["3d_fullres"] = fullres
        coverage = _coverage(patch, median)
        if coverage < LOWRES_COVERAGE:
            lowres, lowres_notes = _plan_lowres(fingerprint, spacing, median, axes, budget, plans_name, normalization)
            notes.extend(lowres_notes)
            if lowres is not None:
                lowres.next_stage = "3d_cascade_fullres"
                configs["3d_lowres"] = lowres
                configs["3d_cascade_fullres"] = replace(
                    copy.deepcopy(fullres), name="3d_cascade_fullres", previous_stage="3d_lowres"
                )
        else:
            notes.append(f"3d_fullres patch covers {coverage:.0%} of the median image (>= {LOWRES_COVERAGE:.0%}): no cascade")
    notes.extend(_describe(config, budget) for config in configs.values())
    for note in notes:
        log.debug("plan %s: %s", dataset_name, note)
    plans = Plans(dataset_name=dataset_name, plans_name=plans_name, preset=preset, gpu_memory_gb=float(gpu_memory_gb),
                  configurations=configs, notes=notes, **dataset_facts(fingerprint, info))
    return settings.plans_transform(plans) if settings.plans_transform is not None else plans


def dataset_facts(fingerprint: DatasetFingerprint, info: DatasetInfo) -> dict:
    """The fields of :class:`Plans` that describe the dataset itself (not a planning decision)."""
    return {
        "original_median_spacing": fingerprint.median_spacing,
        "original_median_shape": fingerprint.median_shape_after_crop,
        "labels": dict(info.labels),
        "channel_names": dict(info.channel_names),
        "file_ending": info.file_ending,
        "intensity_properties": dict(fingerprint.intensity),
    }


def _plan_lowres(
    fingerprint: DatasetFingerprint,
    fullres_spacing_mm: list[float],
    fullres_median: list[int],
    axes: list[int],
    budget: _Budget,
    plans_name: str,
    normalization: list[str],
) -> tuple[ConfigurationPlan | None, list[str]]:
    """The ``3d_lowres`` configuration, or ``None`` when it would be too close to full resolution."""
    settings = budget.settings
    radius = fingerprint.vessel_radius_mm
    cap = lowres_spacing_cap(radius)
    notes = [f"3d_fullres patch covers < {LOWRES_COVERAGE:.0%} of the median image: planning 3d_lowres"]
    spacing = list(fullres_spacing_mm)
    plan = None
    for _ in range(MAX_LOWRES_STEPS):
        coarser = lowres_step(spacing, axes, cap=cap)
        if coarser == spacing:
            notes.append(
                f"3d_lowres stops at spacing <= {cap:.3g} mm (relaxed vessel rule: median radius "
                f"{radius.p50:.3g} mm >= {LOWRES_MIN_RADIUS_VOXELS:g} voxel)"
            )
            break
        spacing = coarser
        median = median_resampled_shape(fingerprint, spacing)
        voxels = float(resampled_shapes(fingerprint, spacing).prod(axis=1).sum())
        plan = plan_patch_and_batch(median, spacing, budget, voxels, settings.max_features_3d)
        if _coverage(plan[0], median) >= LOWRES_COVERAGE:
            break
    if plan is None:
        notes.append("3d_lowres: the relaxed vessel rule allows no coarser spacing: not planned (no cascade)")
        return None, notes
    ratio = math.prod(median) / math.prod(fullres_median)
    if ratio > LOWRES_MAX_VOXEL_FRACTION:
        notes.append(f"3d_lowres would keep {ratio:.0%} of the full-resolution voxels: not planned (no cascade)")
        return None, notes
    patch, topology, batch = plan
    coarse = anisotropic_axis(fullres_spacing_mm, axes)  # kept from 3d_fullres, not coarsened by the steps
    thin = MIN_DIAMETER_VOXELS * max(spacing[a] for a in axes if a != coarse) / 2.0
    notes.append(
        f"3d_lowres spacing {[round(s, 3) for s in spacing]} mm relaxes the vessel rule (context stage): vessels with "
        f"radius < {thin:.3g} mm (~{100 * radius.fraction_below(thin):.0f}% of the skeleton) span fewer than "
        f"{MIN_DIAMETER_VOXELS:g} voxels across there; 3d_cascade_fullres segments them at full resolution"
    )
    return _configuration("3d_lowres", plans_name, spacing, median, patch, batch, topology, normalization), notes
