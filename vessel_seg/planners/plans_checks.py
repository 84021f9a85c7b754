"""Value checks of plans read from disk: a hand-edited plans file fails with one line, not a traceback.

Plans are untrusted input (users edit them, as in nnU-Net); types are converted by
:func:`~vessel_seg.serialization.from_dict`, and this module checks the values: sizes, strides,
spacings, orders, labels and the network topology. Each function returns a problem string (empty:
fine) so that the caller names the file and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vessel_seg.planners.plans import ConfigurationPlan, NetworkTopology, Plans

NORMS = ("instance", "batch")
# The registered normalisation schemes; set by vessel_seg.planners.normalization when it is imported (it imports the
# plans module, so it cannot be imported from here: registration by injection, not an import circle).
normalization_names: Callable[[], Iterable[str]] | None = None  # NetworkTopology.norm values the networks build

ALLOWED_STRIDES = (1, 2)  # per axis and stage: the decoder's transposed convolutions undo exactly these
MAX_SPLINE_ORDER = 5  # scipy.ndimage's highest interpolation order
MAX_BATCH_SIZE = 4096
# Upper bounds far above any planned value (GPU plans: <= 320 features, <= 6 blocks, <= 8 stages, patches of a few
# million voxels) that stop a hostile or mistyped plans file before it builds a network of billions of
# parameters or a patch of tens of gigabytes.
MAX_FEATURES = 4096
MAX_BLOCKS = 64
MAX_STAGES = 12
MAX_PATCH_VOXELS = 64 * 1024**2


def topology_problem(t: NetworkTopology) -> str:
    """Why the lists of a network topology do not fit together ('' when they do)."""
    n = t.num_stages
    if t.dim not in (2, 3):
        return f"dim must be 2 or 3, got {t.dim}"
    if n < 1:
        return "features_per_stage is empty"
    lengths = {"kernel_sizes": len(t.kernel_sizes), "strides": len(t.strides), "blocks_per_stage": len(t.blocks_per_stage)}
    for name, length in lengths.items():
        if length != n:
            return f"{name} has {length} entries but features_per_stage has {n}"
    if len(t.blocks_per_stage_decoder) != n - 1:
        return f"blocks_per_stage_decoder needs {n - 1} entries, got {len(t.blocks_per_stage_decoder)}"
    if any(len(k) != t.dim or any(v < 1 or v % 2 == 0 for v in k) for k in t.kernel_sizes):
        return f"kernel_sizes must hold {t.dim} odd positive values per stage, got {t.kernel_sizes}"
    if any(len(s) != t.dim or any(v not in ALLOWED_STRIDES for v in s) for s in t.strides):
        return f"strides must hold {t.dim} values of 1 or 2 per stage, got {t.strides}"
    if any(v != 1 for v in t.strides[0]):
        return f"strides[0] must be all ones (the first stage keeps full resolution), got {t.strides[0]}"
    if min(t.features_per_stage) < 1 or min(t.blocks_per_stage + t.blocks_per_stage_decoder, default=1) < 1:
        return "features and block counts must be positive"
    if n > MAX_STAGES or max(t.features_per_stage) > MAX_FEATURES or max(
            t.blocks_per_stage + t.blocks_per_stage_decoder, default=1) > MAX_BLOCKS:
        return (f"at most {MAX_STAGES} stages, {MAX_FEATURES} features and {MAX_BLOCKS} blocks per stage, got "
                f"{n} stages, features {t.features_per_stage}, blocks {t.blocks_per_stage}")
    if t.bottleneck_divisor < 1 or t.min_bottleneck_features < 1:
        return "bottleneck_divisor and min_bottleneck_features must be positive"
    if t.norm not in NORMS:
        return f"norm must be one of {', '.join(NORMS)}, got {t.norm!r}"
    if not math.isfinite(t.negative_slope) or not 0 <= t.negative_slope < 1:
        return f"negative_slope must be in [0, 1), got {t.negative_slope}"
    if not isinstance(t.network_class, str) or not t.network_class.replace("_", "").replace("-", "").isalnum():
        return f"network_class must be a registered network name, got {t.network_class!r}"
    return ""


def _positive_finite(values: list[float]) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def configuration_problem(config: ConfigurationPlan, num_channels: int) -> str:
    """Why one configuration cannot be used ('' when it can)."""
    problem = topology_problem(config.network)
    if problem:
        return f"network: {problem}"
    dim = config.dim
    if len(config.spacing) != dim or not _positive_finite(config.spacing):
        return f"spacing must hold {dim} positive finite values (mm), got {config.spacing}"
    if len(config.patch_size) != dim or any(p < 1 for p in config.patch_size):
        return f"patch_size must hold {dim} positive values, got {config.patch_size}"
    if math.prod(config.patch_size) > MAX_PATCH_VOXELS:
        return f"patch_size {config.patch_size} holds more than {MAX_PATCH_VOXELS} voxels"
    divisors = [math.prod(s[axis] for s in config.network.strides) for axis in range(dim)]
    if any(p % d for p, d in zip(config.patch_size, divisors, strict=True)):
        return f"patch_size {config.patch_size} must be divisible by the strides' product {divisors} per axis"
    if not 1 <= config.batch_size <= MAX_BATCH_SIZE:
        return f"batch_size must be 1..{MAX_BATCH_SIZE}, got {config.batch_size}"
    orders = (config.resampling_order_image, config.resampling_order_label)
    if any(not 0 <= order <= MAX_SPLINE_ORDER for order in orders):
        return f"resampling orders must be 0..{MAX_SPLINE_ORDER}, got image {orders[0]} / label {orders[1]}"
    if not (math.isfinite(config.anisotropy_threshold) and config.anisotropy_threshold > 1):
        return f"anisotropy_threshold must be a finite number > 1, got {config.anisotropy_threshold}"
    if len(config.normalization) != num_channels:
        return f"normalization names {len(config.normalization)} scheme(s) for {num_channels} channel(s)"
    known = list(normalization_names()) if normalization_names is not None else None
    unknown = [name for name in config.normalization if known is not None and name not in known]
    if unknown:
        return (f"unknown normalisation scheme {unknown[0]!r}; use one of {', '.join(known)} (or load the module "
                "that registers it with VS_PLUGINS)")
    if config.spacing_mode not in ("mm", "finest_voxel"):
        return f"spacing_mode must be 'mm' or 'finest_voxel', got {config.spacing_mode!r}"
    return ""


def labels_problem(labels: dict[str, int]) -> str:
    """Labels must be distinct values in 0..32767 with background 0 and at least one foreground (as dataset.json)."""
    values = list(labels.values())
    if 0 not in values or len(set(values)) != len(values) or len(values) < 2 or not all(0 <= v <= 32767 for v in values):
        return f"labels must be background 0 plus distinct foreground values in 1..32767, got {labels}"
    return ""


def plans_problem(plans: Plans) -> str:
    """The first problem of ``plans`` ('' when none), naming the configuration and field."""
    problem = labels_problem(plans.labels)
    if problem:
        return problem
    num_channels = len(plans.channel_names)
    for name, config in plans.configurations.items():
        problem = configuration_problem(config, num_channels)
        if problem:
            return f"configuration {name!r}: {problem}"
        for link in (config.previous_stage, config.next_stage):
            if link is not None and link not in plans.configurations:
                return f"configuration {name!r} links to {link!r}, which the plans do not hold"
    for channel, stats in plans.intensity_properties.items():
        values = [stats.mean, stats.std, stats.percentile_00_5, stats.percentile_99_5]
        if not all(math.isfinite(v) for v in values) or stats.std < 0 or stats.percentile_00_5 > stats.percentile_99_5:
            return f"intensity_properties of channel {channel} must be finite with std >= 0 and p0.5 <= p99.5"
    return ""
