"""Sliding-window prediction with Gaussian importance weighting and mirroring TTA.

Works on one case ``(C, Z, Y, X)`` for both 3D networks and 2D networks: a 2D network sees tiles of
shape ``(1, py, px)`` with the singleton z axis squeezed away, so one code path covers both and
tiles of different slices share a forward pass. The weighted sums live in a rolling buffer of
``patch_z`` slices (:func:`iter_logit_slabs`), so nothing volume-sized is allocated except what
the caller asks for.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from vessel_seg.device import autocast


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """A Gaussian weight map, highest at the tile centre, normalised to max 1 and strictly positive.

    Centre voxels of a tile see the most context, so they dominate where tiles overlap.
    """
    grids = []
    for size in patch_size:
        coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        sigma = max(size * sigma_scale, 1e-3)
        grids.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    weights = grids[0]
    for g in grids[1:]:
        weights = weights[..., None] * g
    weights = weights / weights.max()
    return weights.clamp_min(1e-3)


def tile_starts(image_size: Sequence[int], patch_size: Sequence[int], step: float = 0.5) -> list[list[int]]:
    """Start index of every tile per axis, evenly spread so that tiles overlap by at least ``1 - step``."""
    starts = []
    for size, patch in zip(image_size, patch_size, strict=True):
        if size <= patch:
            starts.append([0])
            continue
        num = int(np.ceil((size - patch) / (patch * step))) + 1
        starts.append([int(round(i * (size - patch) / (num - 1))) for i in range(num)])
    return starts


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of the mirror axes (including no flip), as tensor dims of a ``(B, C, Z, Y, X)`` batch."""
    dims = [a + 2 for a in mirror_axes]
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


def _forward(network: nn.Module, tiles: torch.Tensor, squeeze_z: bool) -> torch.Tensor:
    x = tiles[:, :, 0] if squeeze_z else tiles
    out = network(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out[:, :, None] if squeeze_z else out


def mirrored_forward(
    network: nn.Module,
    tiles: torch.Tensor,
    flips: Sequence[tuple[int, ...]],
    squeeze_z: bool = False,
    samples_per_forward: int | None = None,
) -> torch.Tensor:
    """Sum over ``flips`` of the network's outputs on flipped tiles, each flipped back.

    Args:
        tiles: ``(N, C, z, y, x)`` on the network's device.
        flips: tensor dims to flip per mirroring (:func:`mirror_combinations`), ``()`` = no flip.
        samples_per_forward: the ``N * len(flips)`` samples (all tiles flipped one way, then the
            next way) go through the network in forwards of at most this many, so on a GPU the
            flips of a few tiles share one forward. ``None``: ``N`` (one forward per flip, the
            unbatched order). On CUDA a short forward is padded with zero tiles to the full size,
            so cuDNN sees one batch shape per case (samples are independent in eval mode).

    Returns:
        float32 ``(N, K, z, y, x)``. Each tile's outputs are added in flip order whatever the
        batching, so batched and unbatched sums differ only by the rounding of the convolutions.
    """
    n = tiles.shape[0]
    size = max(1, samples_per_forward or n)
    total = None
    for first in range(0, n * len(flips), size):
        last = min(first + size, n * len(flips))
        segments = []  # (flip dims, first tile, end tile) of this forward, in sample order
        for f in range(first // n, (last - 1) // n + 1):
            segments.append((flips[f], max(first, f * n) - f * n, min(last, (f + 1) * n) - f * n))
        batch = torch.cat([torch.flip(tiles[a:b], dims) if dims else tiles[a:b] for dims, a, b in segments])
        if tiles.is_cuda and samples_per_forward and batch.shape[0] < size:
            batch = torch.cat([batch, batch.new_zeros((size - batch.shape[0], *batch.shape[1:]))])
        pred = _forward(network, batch, squeeze_z)
        if total is None:
            total = torch.zeros((n, *pred.shape[1:]), dtype=torch.float32, device=pred.device)
        offset = 0
        for dims, a, b in segments:
            part = pred[offset : offset + b - a]
            total[a:b] += (torch.flip(part, dims) if dims else part).float()
            offset += b - a
    return total


@torch.inference_mode()
def predict_logits(
    network: nn.Module,
    data: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    tiles_per_batch: int = 4,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> torch.Tensor:
    """Gaussian-weighted average of the network's logits over overlapping tiles, on the CPU.

    Args:
        network: in eval mode; a 2D network when ``len(patch_size) == 2``.
        data: ``(C, Z, Y, X)`` preprocessed image.
        patch_size: tile size, ``(z, y, x)`` for 3D or ``(y, x)`` for 2D networks.
        num_classes: output channels of the network.
        step: tile step as a fraction of the patch size, in ``(0, 1]`` (0.5 = half-overlapping tiles).
        mirror_axes: spatial axes (0=z, 1=y, 2=x) to mirror for test-time augmentation; the
            prediction is the mean over all flip combinations.
        tiles_per_batch: tiles taken per step of the window; each mirroring of them is one forward
            (see ``samples_per_forward`` of :func:`iter_logit_slabs` for batched mirrorings).
        amp: autocast in :func:`vessel_seg.device.amp_dtype` (bf16 on CUDA GPUs and CPUs with native bf16, fp16 on older GPUs).

    Returns:
        float32 logits ``(num_classes, Z, Y, X)``, assembled from :func:`iter_logit_slabs`; the
        only volume-sized allocation is this result.
    """
    out = torch.empty((num_classes, *data.shape[1:]), dtype=torch.float32)
    for z, slab in iter_logit_slabs(network, data, patch_size, num_classes, step, mirror_axes, tiles_per_batch, device, amp):
        out[:, z] = slab
    return out


@torch.inference_mode()
def _padded_input(data: torch.Tensor | np.ndarray, patch: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
    """``data`` ``(C, Z, Y, X)`` as a float32 tensor, zero-padded (centred) to at least ``patch``; and the padding per axis."""
    if not isinstance(data, torch.Tensor):
        array = np.asarray(data, dtype=np.float32)
        # Tiles are only read, so a float32 array is wrapped without copying (one volume less in
        # memory); read-only inputs (memory maps) are copied because torch needs writable buffers.
        data = torch.from_numpy(array if array.flags.writeable else array.copy())
    data = data.float()
    pad = [max(p - s, 0) for p, s in zip(patch, data.shape[1:], strict=True)]
    if any(pad):
        data = torch.nn.functional.pad(data, [v for p in reversed(pad) for v in (p // 2, p - p // 2)])
    return data, pad


def iter_logit_slabs(
    network: nn.Module,
    data: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    tiles_per_batch: int = 4,
    device: torch.device | str = "cpu",
    amp: bool = False,
    samples_per_forward: int | None = None,
    to_cpu: bool = True,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """The logits of :func:`predict_logits` as consecutive z-slabs, each final when yielded.

    Tiles are visited in raster order (z outermost). Once every tile starting at or below a z
    index has been added, the slices below the next tile's start receive no further contribution,
    so they are divided by their weight sum and yielded. The weighted sums therefore live in a
    rolling buffer of ``patch_z`` slices, not in volume-sized accumulators; every voxel's sum is
    formed from the same tiles in the same order as with whole-volume accumulators, so the values
    are identical. Arguments as for :func:`predict_logits`, and:

    Args:
        samples_per_forward: tiles x mirrorings per network forward (see :func:`mirrored_forward`);
            ``None`` keeps one forward per mirroring of ``tiles_per_batch`` tiles.
        to_cpu: copy each slab to the CPU; ``False`` leaves it where the accumulators are (on the
            GPU when they fit there, or when ``data`` is a device tensor: the device-side path).

    Yields:
        ``(z, logits)``: a slice of z indices of ``data`` (consecutive slabs cover ``0..Z`` once,
        in order) and float32 logits ``(num_classes, z.stop - z.start, Y, X)``.
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1] so that tiles leave no gap, got {step}")
    device = torch.device(device)
    squeeze_z = len(patch_size) == 2
    patch = (1, *patch_size) if squeeze_z else tuple(int(p) for p in patch_size)
    spatial = tuple(data.shape[1:])
    data, pad = _padded_input(data, patch)
    padded = tuple(data.shape[1:])
    weights = gaussian_importance(patch).to(device)
    accum, norm = _accumulators(num_classes, (patch[0], *padded[1:]), device)
    weights_acc = weights.to(accum.device)
    flips = mirror_combinations(mirror_axes)
    starts = list(itertools.product(*tile_starts(padded, patch, step)))
    first_z = pad[0] // 2  # the image's slices in padded coordinates: first_z .. first_z + spatial[0]
    in_plane = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad[1:], spatial[1:], strict=True))

    def finished(lo: int, hi: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield padded slices ``lo..hi`` (buffer rows ``0..hi - lo``) clipped to the image."""
        a, b = max(lo, first_z), min(hi, first_z + spatial[0])
        if a < b:
            logits = accum[:, a - lo : b - lo] / norm[a - lo : b - lo]
            logits = logits[(slice(None), slice(None), *in_plane)]
            yield slice(a - first_z, b - first_z), logits.cpu() if to_cpu else logits

    lo = 0  # padded z index of buffer row 0; slices below it have been yielded
    for first in range(0, len(starts), tiles_per_batch):
        chunk = starts[first : first + tiles_per_batch]
        slices = [tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True)) for start in chunk]
        tiles = torch.stack([data[(slice(None), *sl)] for sl in slices]).to(device, non_blocking=True)
        with autocast(device, amp):
            out = mirrored_forward(network, tiles, flips, squeeze_z, samples_per_forward)
        out = (out / len(flips) * weights).to(accum.device)
        for i, start in enumerate(chunk):
            if start[0] > lo:  # every tile starting below start[0] is done: slices lo..start[0] are final
                yield from finished(lo, start[0])
                _shift(accum, norm, start[0] - lo)
                lo = start[0]
            # after the shift every tile begins at buffer row 0 (starts along z differ by <= patch_z)
            buffer_sl = (slice(0, patch[0]), *slices[i][1:])
            accum[(slice(None), *buffer_sl)] += out[i]
            norm[buffer_sl] += weights_acc
    yield from finished(lo, padded[0])


def _shift(accum: torch.Tensor, norm: torch.Tensor, rows: int) -> None:
    """Move the rolling buffers ``rows`` slices down (towards row 0) and zero the freed rows."""
    keep = accum.shape[1] - rows
    accum[:, :keep] = accum[:, rows:].clone()  # clone: source and target overlap
    accum[:, keep:] = 0
    norm[:keep] = norm[rows:].clone()
    norm[keep:] = 0


def _accumulators(num_classes: int, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-weighted sums of one slab, on the GPU when they fit there (no per-tile copies back), else on the CPU."""
    if device.type == "cuda":
        try:
            return (
                torch.zeros((num_classes, *shape), dtype=torch.float32, device=device),
                torch.zeros(shape, dtype=torch.float32, device=device),
            )
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
    return torch.zeros((num_classes, *shape), dtype=torch.float32), torch.zeros(shape, dtype=torch.float32)
