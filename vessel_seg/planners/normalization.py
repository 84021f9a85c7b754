"""Per-channel intensity normalisation named by the plans (``ConfigurationPlan.normalization``).

Schemes
-------
``"ct"``
    For calibrated intensities (Hounsfield units). Clip to the dataset's foreground
    ``[percentile_00_5, percentile_99_5]``, then ``(x - mean) / max(std, 1e-8)`` with the dataset's
    foreground mean and standard deviation (from the fingerprint, ``Plans.intensity_properties``).
    Every case is mapped the same way, so a given HU value means the same input to the network.
``"ct_soft"``
    CT for vessels (the planner's default for CT channels). As ``"ct"``, but intensities outside
    the foreground ``[percentile_00_5, percentile_99_5]`` are compressed logarithmically instead of
    clipped: ``hi + std * log1p((x - hi) / std)`` above ``hi`` (mirrored below ``lo``). Why: in
    CT angiography bone, calcification and metal are brighter than any contrast-filled lumen;
    hard clipping at the vessels' 99.5th percentile maps them onto the brightest lumen, so the
    network must tell bone from vessel by shape alone. Soft clipping keeps the ordering (bone stays
    brighter) while a 3000 HU implant still lands only ~6 std above the lumen.
``"percentile"``
    Modality-free (the built-in model): clip to this image's own 0.5/99.5 percentiles (estimated on
    at most ~2 million evenly strided voxels), then this image's z-score. Why: a model meant for CT,
    MR, microscopy and OCT-A alike must not depend on a unit; the percentiles tame bright outliers
    (bone, metal, saturated pixels) that would otherwise squash the vessel contrast.
``"zscore"``
    For uncalibrated intensities (MRI, microscopy, OCT-A). ``(x - mean) / max(std, 1e-8)`` with the
    mean and standard deviation of this image's channel, over all of its voxels after cropping to
    the non-zero region (the crop removes the empty border that would otherwise skew them). No mask
    is applied inside the crop box, so training and inference see identical statistics.

New schemes register with :func:`register_normalization` (a transform applied before the
standardisation, and whether the standardisation uses the dataset's statistics or the image's);
the device-side prediction path uses a registered torch twin where there is one
(:data:`vessel_seg.inference.device_resampling.DEVICE_TRANSFORMS`), else the numpy transform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vessel_seg.errors import PlansError
from vessel_seg.planners import plans_checks
from vessel_seg.planners.plans import ChannelIntensity
from vessel_seg.registry import Registry

# transform(channel, stats): changes a float32 (Z, Y, X) channel in place before standardisation;
# stats are the dataset's foreground statistics of the channel (None for per-image schemes).
ChannelTransform = Callable[[np.ndarray, ChannelIntensity | None], None]


@dataclass(frozen=True)
class NormalizationScheme:
    """A registered scheme: an optional intensity transform, then standardisation by dataset or image statistics."""

    name: str
    uses_dataset_statistics: bool
    transform: ChannelTransform | None = None
    description: str = ""


NORMALIZATIONS: Registry[NormalizationScheme] = Registry("normalisation scheme")
plans_checks.normalization_names = lambda: list(NORMALIZATIONS)  # plans name their schemes; checked on load


def register_normalization(
    name: str, *, uses_dataset_statistics: bool, description: str = "", transform: ChannelTransform | None = None,
    replace_existing: bool = False,
) -> NormalizationScheme:
    """Register a scheme that plans can name in ``ConfigurationPlan.normalization``; returns it."""
    scheme = NormalizationScheme(name, uses_dataset_statistics, transform, description)
    return NORMALIZATIONS.add(name, scheme, replace_existing=replace_existing)


STD_FLOOR = 1e-8  # smallest standard deviation a channel is divided by (constant images)
_EPS = STD_FLOOR


def normalize(
    data: np.ndarray,
    schemes: Sequence[str],
    intensity: Mapping[str, ChannelIntensity],
    inplace: bool = False,
) -> np.ndarray:
    """Normalise each channel of a ``(C, Z, Y, X)`` image with its scheme.

    Parameters
    ----------
    data : ndarray, (C, Z, Y, X)
        Image intensities in their native unit.
    schemes : sequence of str
        One scheme per channel, ``"ct"``, ``"ct_soft"`` or ``"zscore"`` (see the module docstring).
    intensity : mapping of str to ChannelIntensity
        Dataset foreground statistics keyed by channel index as a string (``"0"``, ``"1"``...);
        required for ``"ct"`` and ``"ct_soft"`` channels only.
    inplace : bool
        Write into ``data`` when it is already float32 (saves one copy of the volume).

    Returns
    -------
    ndarray, (C, Z, Y, X), float32
        The normalised image.

    Raises
    ------
    PlansError
        Unknown scheme, scheme count not matching the channels, or missing ``"ct"`` statistics.
    """
    if data.ndim != 4:
        raise ValueError(f"expected a (C, Z, Y, X) array, got shape {data.shape}")
    ct_stats = check_schemes(schemes, data.shape[0], intensity)
    out = data if inplace and data.dtype == np.float32 else data.astype(np.float32, copy=True)
    for c, name in enumerate(schemes):
        channel, scheme, stats = out[c], NORMALIZATIONS.get(name), ct_stats.get(c)
        if scheme.transform is not None:
            scheme.transform(channel, stats)
        mean, std = (stats.mean, stats.std) if stats is not None else _mean_std(channel)
        channel -= np.float32(mean)
        channel /= np.float32(max(std, _EPS))
    return out


def check_schemes(
    schemes: Sequence[str], num_channels: int, intensity: Mapping[str, ChannelIntensity]
) -> dict[int, ChannelIntensity]:
    """Raise :class:`PlansError` unless ``schemes`` fit the channels; returns the dataset statistics of each channel
    whose scheme standardises with them (the CT schemes).

    Shared by :func:`normalize` and the device-side normalisation of prediction, so both reject
    the same plans with the same message.
    """
    if len(schemes) != num_channels:
        raise PlansError(
            f"plans give {len(schemes)} normalisation scheme(s) for {num_channels} channel(s); "
            "re-run vs_plan_and_preprocess for this dataset"
        )
    ct_stats = {}
    for c, scheme in enumerate(schemes):
        if scheme not in NORMALIZATIONS:
            raise PlansError(
                f"unknown normalisation scheme {scheme!r} for channel {c}; use one of {', '.join(NORMALIZATIONS)} "
                "(or load the module that registers it with VS_PLUGINS)"
            )
        if NORMALIZATIONS.get(scheme).uses_dataset_statistics:
            if intensity.get(str(c)) is None:
                raise PlansError(
                    f"plans hold no intensity statistics for CT channel {c}; re-run vs_plan_and_preprocess"
                )
            ct_stats[c] = intensity[str(c)]
    return ct_stats


def soft_clip(channel: np.ndarray, lo: float, hi: float, scale: float) -> np.ndarray:
    """Compress ``channel`` (float32, in place) logarithmically outside ``[lo, hi]``; returns it.

    ``x > hi`` becomes ``hi + scale * log1p((x - hi) / scale)``, ``x < lo`` becomes
    ``lo - scale * log1p((lo - x) / scale)``; values inside are unchanged. Continuous with slope 1
    at both ends and monotonic, so ordering is kept (see ``"ct_soft"`` in the module docstring).
    Works slab by slab so the temporaries stay small for large volumes.
    """
    flat = channel.reshape(channel.shape[0], -1) if channel.ndim > 1 else channel.reshape(1, -1)
    lo32, hi32, s32 = np.float32(lo), np.float32(hi), np.float32(scale)
    for row in flat:
        above = row > hi32
        if above.any():
            row[above] = hi32 + s32 * np.log1p((row[above] - hi32) / s32)
        below = row < lo32
        if below.any():
            row[below] = lo32 - s32 * np.log1p((lo32 - row[below]) / s32)
    return channel


def _mean_std(channel: np.ndarray, slab_voxels: int = 1 << 22) -> tuple[float, float]:
    """Mean and standard deviation in float64, accumulated over z-slabs.

    ``ndarray.std`` would materialise a float64 copy of the whole channel (two float32 volumes).
    Two passes (mean, then squared deviations) keep the result as accurate as numpy's.
    """
    flat = channel.reshape(channel.shape[0], -1)
    rows = max(1, slab_voxels // max(flat.shape[1], 1))
    total = sum(float(flat[i : i + rows].sum(dtype=np.float64)) for i in range(0, flat.shape[0], rows))
    mean = total / max(channel.size, 1)
    squares = sum(
        float(np.square(flat[i : i + rows].astype(np.float64) - mean).sum()) for i in range(0, flat.shape[0], rows)
    )
    return mean, (squares / max(channel.size, 1)) ** 0.5


def _clip_to_percentiles(channel: np.ndarray, stats: ChannelIntensity | None) -> None:
    assert stats is not None  # check_schemes guarantees dataset statistics
    np.clip(channel, stats.percentile_00_5, stats.percentile_99_5, out=channel)


def _soft_clip_to_percentiles(channel: np.ndarray, stats: ChannelIntensity | None) -> None:
    assert stats is not None
    soft_clip(channel, stats.percentile_00_5, stats.percentile_99_5, max(stats.std, _EPS))


register_normalization("ct", uses_dataset_statistics=True, transform=_clip_to_percentiles,
                       description="clip to the foreground 0.5-99.5 percentiles, dataset z-score (nnU-Net's CT)")
register_normalization("ct_soft", uses_dataset_statistics=True, transform=_soft_clip_to_percentiles,
                       description="log-compress outside the foreground percentiles, dataset z-score (CT vessels)")
PERCENTILE_SAMPLE_VOXELS = 1 << 21


def _clip_to_own_percentiles(channel: np.ndarray, stats: ChannelIntensity | None) -> None:
    flat = channel.reshape(-1)
    sample = flat[:: max(1, flat.size // PERCENTILE_SAMPLE_VOXELS)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    np.clip(channel, lo, hi, out=channel)


register_normalization("percentile", uses_dataset_statistics=False, transform=_clip_to_own_percentiles,
                       description="clip to this image's 0.5-99.5 percentiles, then its z-score (any modality)")
register_normalization("zscore", uses_dataset_statistics=False, description="this image's z-score (MR, microscopy)")
