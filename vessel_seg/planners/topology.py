"""Network topology planning: stages, kernels, strides and blocks of the ResU-Net for one patch.

Rules (nnU-Net's ``get_pool_and_conv_props`` in spirit, written for our bottleneck ResU-Net):

* **Downsampling.** Stage by stage, an axis is downsampled with stride 2 only while (a) its feature
  map keeps at least ``min_feature_map`` voxels after halving (size >= ``2 * min_feature_map``) and
  (b) its current spacing is at most :data:`POOLING_SPACING_RATIO` (2) times the finest current
  spacing among the axes that satisfy (a). A coarse axis (e.g. 3 mm slices in 0.5 mm images) is
  therefore left alone until the in-plane axes have been downsampled to a comparable spacing.
  Planning stops when no axis may be downsampled or after ``max_stages`` stages.
* **Kernels.** A stage uses kernel size 1 along an axis whose current spacing is more than
  :data:`POOLING_SPACING_RATIO` times the finest current spacing (a 3-voxel kernel there would mix
  distant, weakly related slices) and 3 otherwise. An axis that switched to 3 stays at 3 (a coarse
  axis can become the finest one deeper down when the others are still being downsampled).
* **Features** double per stage from ``base_features``, capped at ``max_features``.
* **Blocks.** Encoder stage ``i`` has ``encoder_blocks[i]`` bottleneck residual blocks, the last
  value repeating for deeper stages. The default :data:`ENCODER_BLOCKS` = (1, 2, 2, 3) gives
  ``[1, 2, 2, 3, 3, 3, ...]``: one block at full resolution, where a block costs the most memory and
  FLOPs, and more capacity deeper down where it is cheap (the ResNet / nnU-Net ResEnc pattern).
  Every decoder stage has ``decoder_blocks`` (1) block. Deep supervision is on.
* **Patch size.** Every axis of the patch must be a multiple of the product of its strides;
  :func:`fit_patch_to_topology` rounds up and re-plans until both agree.

The memory and FLOP model of the resulting network lives in :mod:`vessel_seg.planners.cost_model`
and is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vessel_seg.planners.cost_model import estimate_gflops, estimate_memory_gb, estimate_parameters
from vessel_seg.planners.plans import NetworkTopology

__all__ = [
    "ENCODER_BLOCKS",
    "build_topology",
    "encoder_block_counts",
    "estimate_gflops",
    "estimate_memory_gb",
    "estimate_parameters",
    "fit_patch_to_topology",
    "shape_divisor",
]

ENCODER_BLOCKS = (1, 2, 2, 3)
POOLING_SPACING_RATIO = 2.0
MIN_FEATURE_MAP = 4
DEFAULT_MAX_STAGES = 7


def encoder_block_counts(num_stages: int, schedule: Sequence[int] = ENCODER_BLOCKS) -> list[int]:
    """Blocks per encoder stage: ``schedule`` truncated or extended by repeating its last value."""
    if not schedule or min(schedule) < 1:
        raise ValueError(f"encoder block schedule must hold positive counts, got {list(schedule)}")
    return [int(schedule[min(i, len(schedule) - 1)]) for i in range(num_stages)]


def build_topology(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    dim: int,
    base_features: int = 32,
    max_features: int = 320,
    *,
    max_stages: int = DEFAULT_MAX_STAGES,
    min_feature_map: int = MIN_FEATURE_MAP,
    encoder_blocks: Sequence[int] = ENCODER_BLOCKS,
    decoder_blocks: int = 1,
    bottleneck_divisor: int = 2,
    min_bottleneck_features: int = 8,
) -> NetworkTopology:
    """Plan the ResU-Net for ``patch_size`` voxels at ``spacing`` mm (rules in the module docstring).

    Parameters
    ----------
    patch_size : sequence of int
        Patch edge lengths in voxels, ``dim`` values in array order (``(z, y, x)`` or ``(y, x)``).
    spacing : sequence of float
        Voxel size in mm of the configuration, same order and length as ``patch_size``.
    dim : int
        2 or 3.
    base_features, max_features : int
        Features of the first stage, and the cap for deeper stages (which double otherwise).
    max_stages : int
        Upper bound on the number of resolution stages (``1 + number of downsamplings``).
    min_feature_map : int
        Smallest feature-map edge (voxels) a downsampling may produce.
    encoder_blocks : sequence of int
        Bottleneck blocks per encoder stage; the last value repeats for deeper stages.
    decoder_blocks : int
        Bottleneck blocks per decoder stage.
    bottleneck_divisor, min_bottleneck_features : int
        Inner width of a block: ``max(features // bottleneck_divisor, min_bottleneck_features)``.

    Returns
    -------
    NetworkTopology
        With ``strides[0]`` all ones. The patch must be divisible by :func:`shape_divisor` of it;
        use :func:`fit_patch_to_topology` to get a patch and topology that agree.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    if len(patch_size) != dim or len(spacing) != dim:
        raise ValueError(f"patch_size {list(patch_size)} and spacing {list(spacing)} need {dim} values each")
    if min(patch_size) < 1 or min(spacing) <= 0:
        raise ValueError(f"patch_size {list(patch_size)} and spacing {list(spacing)} must be positive")
    if max_stages < 1 or min_feature_map < 1 or base_features < 1 or max_features < base_features:
        raise ValueError("max_stages, min_feature_map and features must be positive, max_features >= base_features")
    size = [int(s) for s in patch_size]
    current = [float(s) for s in spacing]
    kernels = [_kernel(current, [1] * dim)]
    strides = [[1] * dim]
    while len(strides) < max_stages:
        stride = _stride(size, current, min_feature_map)
        if not any(s == 2 for s in stride):
            break
        size = [n // s for n, s in zip(size, stride, strict=True)]
        current = [c * s for c, s in zip(current, stride, strict=True)]
        strides.append(stride)
        kernels.append(_kernel(current, kernels[-1]))
    n = len(strides)
    return NetworkTopology(
        dim=dim,
        features_per_stage=[min(base_features * 2**i, max_features) for i in range(n)],
        kernel_sizes=kernels,
        strides=strides,
        blocks_per_stage=encoder_block_counts(n, encoder_blocks),
        blocks_per_stage_decoder=[decoder_blocks] * (n - 1),
        bottleneck_divisor=bottleneck_divisor,
        min_bottleneck_features=min_bottleneck_features,
        deep_supervision=True,
    )


def _kernel(spacing: list[float], previous: list[int]) -> list[int]:
    finest = min(spacing)
    return [3 if k == 3 or s <= POOLING_SPACING_RATIO * finest else 1 for s, k in zip(spacing, previous, strict=True)]


def _stride(size: list[int], spacing: list[float], min_feature_map: int) -> list[int]:
    big_enough = [a for a in range(len(size)) if size[a] >= 2 * min_feature_map]
    if not big_enough:
        return [1] * len(size)
    finest = min(spacing[a] for a in big_enough)
    return [2 if a in big_enough and spacing[a] <= POOLING_SPACING_RATIO * finest else 1 for a in range(len(size))]


def shape_divisor(topology: NetworkTopology) -> list[int]:
    """Per axis, the product of the strides: every input edge must be a multiple of it."""
    return [math.prod(stride[a] for stride in topology.strides) for a in range(topology.dim)]


def fit_patch_to_topology(
    patch_size: Sequence[int], spacing: Sequence[float], dim: int, **topology_kwargs
) -> tuple[list[int], NetworkTopology]:
    """Round ``patch_size`` up to multiples of its strides' product and re-plan until both agree.

    Rounding up can make room for another downsampling (which needs a larger multiple), hence the
    loop; it ends because the number of stages is bounded. ``topology_kwargs`` go to
    :func:`build_topology`.

    Returns
    -------
    patch_size : list of int
        Each axis a multiple of :func:`shape_divisor` of the returned topology (at least one).
    topology : NetworkTopology
        ``build_topology(patch_size, spacing, dim, **topology_kwargs)``.
    """
    patch = [max(1, int(p)) for p in patch_size]
    for _ in range(4 * DEFAULT_MAX_STAGES + 4):
        topology = build_topology(patch, spacing, dim, **topology_kwargs)
        rounded = [d * math.ceil(p / d) for p, d in zip(patch, shape_divisor(topology), strict=True)]
        if rounded == patch:
            return patch, topology
        patch = rounded
    raise RuntimeError(f"patch size did not settle for {list(patch_size)} at spacing {list(spacing)}")
