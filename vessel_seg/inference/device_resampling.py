"""Normalisation and resampling of one case as torch tensors on the prediction device.

Used by the device-side prediction path (:mod:`vessel_seg.inference.device_prediction`): the image
is normalised and resampled where the network runs, and the label map is resampled back there, so
only the raw image goes to the device and only the uint8 label map comes back.

Semantics follow :mod:`vessel_seg.planners.resampling` (cell-centred coordinates, edge values
repeated beyond the border, nnU-Net's separate coarse axis with nearest neighbour), with one
documented difference: images are interpolated **linearly** (trilinear, or bilinear in-plane when
an axis is separate), not with the CPU path's order-3 spline. Linear interpolation neither
overshoots nor needs a prefilter; the network input differs from the CPU path's by a fraction of
the local intensity gradient, which moves a small share of boundary voxels of the prediction.
Label maps are resampled exactly as on the CPU (one-hot, order 1 or nearest): the same taps and
weights, in float32 instead of float64, so exact 0.5-coverage ties can rarely go the other way.

Everything is separable: each output voxel is a tensor product of per-axis taps
(:func:`axis_taps`), computed in slabs of output z-slices, so the transient memory is a slab.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from vessel_seg.planners.normalization import NORMALIZATIONS, STD_FLOOR, check_schemes
from vessel_seg.planners.plans import ChannelIntensity
from vessel_seg.planners.resampling import _nearest_indices

DEVICE_SLAB_VOXELS = 1 << 24  # output voxels per slab of device resampling (64 MB per float32 temporary)

Taps = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # (i0, i1, w): out[k] = lerp(in[i0], in[i1], w)


def axis_taps(old: int, new: int, linear: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index along one axis: the two input indices read and the weight of the second.

    Linear: scipy's cell-centred coordinate ``(k + 0.5) * old / new - 0.5`` clamped to
    ``[0, old - 1]`` (the CPU path's ``_z_taps`` and ``ndimage.zoom(grid_mode=True, mode="nearest")``).
    Nearest: :func:`~vessel_seg.planners.resampling._nearest_indices` with weight 0. Same size:
    the identity. Returns int64 ``i0``, ``i1`` and float64 ``w``, each of length ``new``.
    """
    k = np.arange(new)
    if old == new:
        return k, k, np.zeros(new)
    if not linear:
        index = _nearest_indices(old, new)
        return index, index, np.zeros(new)
    coord = np.clip((k + 0.5) * (old / new) - 0.5, 0.0, old - 1.0)
    i0 = np.minimum(np.floor(coord).astype(np.int64), old - 1)
    return i0, np.minimum(i0 + 1, old - 1), coord - i0


def interpolated_axes(order: int, separate: int | None, ndim: int = 3) -> list[bool]:
    """Which axes are interpolated linearly: none for ``order`` 0, else all but the ``separate`` one."""
    return [order > 0 and axis != separate for axis in range(ndim)]


def _device_taps(
    old: int, new: int, linear: bool, device: torch.device, dtype: torch.dtype = torch.float32
) -> Taps | None:
    """:func:`axis_taps` as device tensors (weights of ``dtype``); ``None`` for the identity, ``w`` None for nearest."""
    if old == new:
        return None
    i0, i1, w = axis_taps(old, new, linear)
    weight = torch.from_numpy(w).to(device, dtype) if linear else None
    return torch.from_numpy(i0).to(device), torch.from_numpy(i1).to(device), weight


def _along(t: torch.Tensor, axis: int, taps: Taps | None) -> torch.Tensor:
    """Interpolate ``t`` along ``axis`` with ``taps`` (a new tensor unless the axis is the identity)."""
    if taps is None:
        return t
    i0, i1, w = taps
    first = t.index_select(axis, i0)
    if w is None:
        return first
    shape = [1] * t.ndim
    shape[axis] = -1
    w = w.view(shape)
    return first * (1 - w) + t.index_select(axis, i1) * w  # scipy's order-1 sum, not lerp's rounding


def _slabs(taps: Taps | None, new_z: int, plane: int, slab_voxels: int) -> list[tuple[slice, slice, Taps | None]]:
    """Output z-slabs with the input rows they read and their taps relative to those rows."""
    step = max(1, slab_voxels // max(1, plane))
    out = []
    for z0 in range(0, new_z, step):
        z1 = min(z0 + step, new_z)
        if taps is None:
            out.append((slice(z0, z1), slice(z0, z1), None))
            continue
        i0, i1, w = taps
        lo, hi = int(i0[z0]), int(i1[z1 - 1]) + 1  # taps are non-decreasing
        out.append((slice(z0, z1), slice(lo, hi), (i0[z0:z1] - lo, i1[z0:z1] - lo, None if w is None else w[z0:z1])))
    return out


def resample_on_device(
    volume: torch.Tensor, new_shape: Sequence[int], linear: Sequence[bool], slab_voxels: int = DEVICE_SLAB_VOXELS
) -> torch.Tensor:
    """Resize a ``(Z, Y, X)`` tensor to ``new_shape``: linear along the ``linear`` axes, nearest else.

    Returns a float32 tensor on ``volume``'s device, computed in slabs of about ``slab_voxels``
    output voxels (the in-plane axes first, then z, per slab).
    """
    new_shape = tuple(int(s) for s in new_shape)
    taps = [_device_taps(o, n, lin, volume.device) for o, n, lin in zip(volume.shape, new_shape, linear, strict=True)]
    out = torch.empty(new_shape, dtype=torch.float32, device=volume.device)
    for zs, rows, ztaps in _slabs(taps[0], new_shape[0], new_shape[1] * new_shape[2], slab_voxels):
        plane = _along(_along(volume[rows].float(), 2, taps[2]), 1, taps[1])
        out[zs] = _along(plane, 0, ztaps)
    return out


def labels_to_shape_on_device(
    seg: torch.Tensor, new_shape: Sequence[int], num_classes: int, linear: Sequence[bool],
    slab_voxels: int = DEVICE_SLAB_VOXELS,
) -> torch.Tensor:
    """Resample a ``(Z, Y, X)`` map of class indices ``0..num_classes-1`` through one-hot interpolation.

    The rule of :func:`~vessel_seg.planners.resampling.resample_label_to_shape`: each class's
    indicator is interpolated (linear along ``linear`` axes, nearest else), the highest wins (ties
    to the lower class), and background (``1 - sum``) wins only when strictly higher. Returns
    uint8 class indices of ``new_shape`` on ``seg``'s device; the transient memory is a slab.
    """
    new_shape = tuple(int(s) for s in new_shape)
    work = _precise_dtype(seg.device)
    taps = [_device_taps(o, n, lin, seg.device, work) for o, n, lin in zip(seg.shape, new_shape, linear, strict=True)]
    out = torch.empty(new_shape, dtype=torch.uint8, device=seg.device)
    for zs, rows, ztaps in _slabs(taps[0], new_shape[0], new_shape[1] * new_shape[2], slab_voxels):
        source = seg[rows]
        best_value = total = best = None
        for c in range(1, num_classes):
            indicator = (source == c).to(work)
            channel = _along(_along(_along(indicator, 2, taps[2]), 1, taps[1]), 0, ztaps).float()
            if best is None:
                best_value, total = torch.zeros_like(channel), torch.zeros_like(channel)
                best = torch.zeros(channel.shape, dtype=torch.uint8, device=seg.device)
            total += channel
            better = channel > best_value  # ties between classes go to the lower class
            best_value = torch.where(better, channel, best_value)
            best.masked_fill_(better, c)  # no host sync, unlike boolean-index assignment
        if best is None:  # background only
            out[zs] = 0
            continue
        out[zs] = best.masked_fill_((best_value < 1.0 - total) | (best_value <= 0), 0)
    return out


def normalize_on_device(
    data: torch.Tensor, schemes: Sequence[str], intensity: Mapping[str, ChannelIntensity]
) -> torch.Tensor:
    """Normalise a float32 ``(C, Z, Y, X)`` tensor in place, as :func:`~vessel_seg.planners.normalization.normalize`.

    ``"ct"``: clip to the dataset's foreground percentiles, z-score with its mean and std;
    ``"ct_soft"``: the same with logarithmic compression outside the percentiles instead of clipping;
    ``"zscore"``: this channel's mean and std (accumulated in float64 where the device has it, in
    z-slabs). Same :class:`~vessel_seg.errors.PlansError` as the CPU path for unfit plans.
    """
    ct_stats = check_schemes(schemes, data.shape[0], intensity)
    for c in range(data.shape[0]):
        channel, stats = data[c], ct_stats.get(c)
        _transform_on_device(schemes[c], channel, stats)
        mean, std = (stats.mean, stats.std) if stats is not None else _mean_std(channel)
        channel.sub_(float(np.float32(mean))).div_(float(np.float32(max(std, STD_FLOOR))))
    return data


def _clamp_on_device(channel: torch.Tensor, stats: ChannelIntensity) -> None:
    channel.clamp_(float(np.float32(stats.percentile_00_5)), float(np.float32(stats.percentile_99_5)))


def _soft_clip_stats_on_device(channel: torch.Tensor, stats: ChannelIntensity) -> None:
    soft_clip_on_device(channel, stats.percentile_00_5, stats.percentile_99_5, max(stats.std, STD_FLOOR))


# Torch twins of the registered normalisation transforms (same float32 values as the numpy ones).
DEVICE_TRANSFORMS: dict[str, Callable[[torch.Tensor, ChannelIntensity], None]] = {
    "ct": _clamp_on_device, "ct_soft": _soft_clip_stats_on_device,
}


def _transform_on_device(name: str, channel: torch.Tensor, stats: ChannelIntensity | None) -> None:
    """The scheme's transform on the device when it has a twin there, else through its numpy transform."""
    scheme = NORMALIZATIONS.get(name)
    if scheme.transform is None:
        return
    if name in DEVICE_TRANSFORMS and stats is not None:
        DEVICE_TRANSFORMS[name](channel, stats)
        return
    host = channel.cpu().numpy().copy()  # a plugin's scheme without a torch twin: exact, one round trip
    scheme.transform(host, stats)
    channel.copy_(torch.from_numpy(host))


def soft_clip_on_device(channel: torch.Tensor, lo: float, hi: float, scale: float) -> torch.Tensor:
    """In-place torch twin of :func:`~vessel_seg.planners.normalization.soft_clip` (same float32 values)."""
    lo32, hi32, s32 = (float(np.float32(v)) for v in (lo, hi, scale))
    above = channel > hi32
    channel[above] = hi32 + s32 * torch.log1p((channel[above] - hi32) / s32)
    below = channel < lo32
    channel[below] = lo32 - s32 * torch.log1p((lo32 - channel[below]) / s32)
    return channel


def _precise_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (the CPU path's label interpolation precision), else float32 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _mean_std(channel: torch.Tensor, slab_voxels: int = DEVICE_SLAB_VOXELS) -> tuple[float, float]:
    """Mean and standard deviation of a ``(Z, Y, X)`` tensor, two passes over z-slabs (one sync each)."""
    dtype = _precise_dtype(channel.device)
    rows = max(1, slab_voxels // max(1, channel[0].numel()))
    slabs = [channel[i : i + rows] for i in range(0, channel.shape[0], rows)]
    count = max(channel.numel(), 1)
    mean = float(sum(s.sum(dtype=dtype) for s in slabs)) / count
    squares = float(sum(torch.square(s.to(dtype) - mean).sum() for s in slabs))
    return mean, (squares / count) ** 0.5
