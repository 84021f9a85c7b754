"""Rotation, scaling and elastic deformation of training batches, fast.

:class:`SpatialAugmentation` draws exactly what batchgenerators' ``SpatialTransform`` draws (the same
calls on numpy's global generator, in the same order, with ``random_crop=False``), places the output
patch at the same position (centred in the sample patch) and maps coordinates the same way: output
voxel ``o`` of the ``patch`` reads input position ``x = s * R^T (o - (patch - 1) / 2) + (S - 1) / 2`` of
the ``S``-sized sample, ``R`` batchgenerators' rotation matrix and ``s`` the scale factor. It differs in
how it computes that:

- a sample that draws no rotation, scaling or deformation is a plain centre crop (a view, then one
  copy), with no coordinate grid at all;
- otherwise only the bounding box of the coordinates it reads (plus the interpolation support) is
  interpolated, not the whole sample patch, which is several times the output's size; the work no
  longer grows with the sample patch;
- linear interpolation (``order_data=1``, the default, as nnU-Net v2's current training transforms
  use) runs through ``torch.nn.functional.grid_sample`` in float32; order 3 uses scipy's B-spline
  (prefiltered on the bounding box in float32, with a margin of :data:`SPLINE_MARGIN` voxels so that
  the prefilter's boundary does not reach the samples: its influence decays as 0.268 per voxel);
- labels are resampled as batchgenerators does with ``order_seg=1`` and ``seg_tiebreak="nearest"``
  (each label's indicator interpolated linearly, the label with the highest weight wins, exact ties
  go to the nearest-neighbour label when it is one of the tied labels, voxels outside every label
  are 0), in float32 on the bounding box, and come back as uint8 (no float round trip).

Elastic deformation (off in the default recipe) builds batchgenerators' coordinate grid and
interpolates it with ``scipy.ndimage.map_coordinates`` on the bounding box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.augmentations.utils import (
    create_zero_centered_coordinate_mesh,
    elastic_deform_coordinates,
    rotate_coords_2d,
    rotate_coords_3d,
)
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy.ndimage import affine_transform, map_coordinates, spline_filter

SPLINE_MARGIN = 12  # voxels around the bounding box prefiltered for order 3 (boundary effect below 1e-6)
LINEAR_MARGIN = 2


class SpatialAugmentation(AbstractTransform):
    """Random rotation / scaling / elastic deformation and centre crop of ``data`` and ``target``.

    Parameters
    ----------
    patch_size : sequence of int
        Spatial output size (2 or 3 values); the input's spatial size is the sample patch ``S``.
    angle : float
        Rotation range in radians: each angle (about every axis in 3D, in plane in 2D) is drawn from
        ``[-angle, angle]``.
    scale_range : (float, float)
        Coordinate scale factor range; as in batchgenerators, below 1 is drawn from ``[lo, 1)`` or
        at/above 1 from ``[max(lo, 1), hi)`` with probability 1/2 each (when ``lo < 1``).
    p_rotation, p_scale, p_elastic : float
        Per-sample probabilities.
    elastic : bool
        Enable elastic deformation (``alpha`` magnitude, ``sigma`` smoothing in voxels).
    order_data : int
        Interpolation of ``data``: 1 (linear) or 3 (cubic B-spline); labels are always linear
        per-label indicators.
    data_key, label_key : str
        Batch keys; ``label_key`` may be missing or None.
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        angle: float,
        scale_range: tuple[float, float],
        *,
        p_rotation: float = 0.2,
        p_scale: float = 0.2,
        elastic: bool = False,
        p_elastic: float = 0.2,
        alpha: tuple[float, float] = (0.0, 900.0),
        sigma: tuple[float, float] = (9.0, 13.0),
        order_data: int = 1,
        data_key: str = "data",
        label_key: str = "target",
    ):
        if order_data not in (1, 3):
            raise ValueError(f"order_data must be 1 (linear) or 3 (cubic spline), got {order_data}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.angle, self.scale_range = float(angle), tuple(scale_range)
        self.p_rotation, self.p_scale, self.p_elastic = p_rotation, p_scale, p_elastic
        self.elastic, self.alpha, self.sigma = elastic, alpha, sigma
        self.order_data = order_data
        self.data_key, self.label_key = data_key, label_key

    def _draw(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Draws of one sample, in batchgenerators' order: ``(linear map or None, elastic offsets or None)``.

        The map ``A`` is ``s * R^T``; both are None when nothing is drawn.
        """
        dim, deformed, matrix = len(self.patch_size), None, None
        if self.elastic and np.random.uniform() < self.p_elastic:
            a, s = np.random.uniform(*self.alpha), np.random.uniform(*self.sigma)
            mesh = create_zero_centered_coordinate_mesh(self.patch_size)
            deformed = elastic_deform_coordinates(mesh, a, s) - mesh
        if np.random.uniform() < self.p_rotation:  # per axis: a draw for p_rot_per_axis (1), then the angle
            angles = [np.random.uniform(-self.angle, self.angle) if np.random.uniform() <= 1 else 0.0
                      for _ in range(dim if dim == 3 else 1)]
            eye = np.eye(dim)
            matrix = rotate_coords_3d(eye, *angles) if dim == 3 else rotate_coords_2d(eye, angles[0])
        if np.random.uniform() < self.p_scale:
            low, high = self.scale_range
            factor = np.random.uniform(low, 1) if np.random.random() < 0.5 and low < 1 else np.random.uniform(max(low, 1), high)
            matrix = (np.eye(dim) if matrix is None else matrix) * factor
        if deformed is not None and matrix is None:
            matrix = np.eye(dim)
        return matrix, deformed

    def __call__(self, **batch):
        data = batch[self.data_key]
        seg = batch.get(self.label_key) if self.label_key else None
        sample_shape = data.shape[2:]
        if len(sample_shape) != len(self.patch_size):
            raise ValueError(f"data of spatial shape {sample_shape} cannot give {len(self.patch_size)}D patches")
        out_data = np.empty((data.shape[0], data.shape[1], *self.patch_size), np.float32)
        out_seg = None if seg is None else np.empty((seg.shape[0], seg.shape[1], *self.patch_size), np.uint8)
        for i in range(data.shape[0]):
            matrix, deformed = self._draw()
            if matrix is None:
                _center_crop(data[i], seg[i] if seg is not None else None, self.patch_size, out_data[i],
                             None if out_seg is None else out_seg[i])
                continue
            coords = _input_coordinates(matrix, deformed, self.patch_size, sample_shape)
            lower, upper = _bounding_box(coords, sample_shape, SPLINE_MARGIN if self.order_data == 3 else LINEAR_MARGIN)
            box = tuple(slice(lo, hi) for lo, hi in zip(lower, upper, strict=True))
            inside = coords.inside(sample_shape)
            coords.shift(lower)
            seg_crop = None if seg is None else seg[i][(slice(None), *box)]
            data_out, seg_out = _resample(data[i][(slice(None), *box)], seg_crop, coords, self.order_data, inside)
            out_data[i] = data_out
            if seg is not None:
                out_seg[i] = seg_out
        batch[self.data_key] = out_data
        if seg is not None:
            batch[self.label_key] = out_seg
        return batch


def _center_crop(data: np.ndarray, seg: np.ndarray | None, patch: Sequence[int], out_data: np.ndarray,
                 out_seg: np.ndarray | None) -> None:
    """batchgenerators' centre crop (lower corner ``(S - patch) // 2``) into preallocated outputs."""
    box = tuple(slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(data.shape[1:], patch, strict=True))
    out_data[...] = data[(slice(None), *box)]
    if seg is not None:
        out_seg[...] = seg[(slice(None), *box)]


class _Coordinates:
    """Input positions of the output voxels: affine ``A (o - c_out) + c_in`` or an explicit grid (elastic)."""

    def __init__(self, matrix: np.ndarray, offset: np.ndarray, patch: tuple[int, ...], grid: np.ndarray | None):
        self.matrix, self.offset, self.patch, self.grid = matrix, offset, patch, grid

    def corners(self) -> np.ndarray:
        """(dim, n) extreme positions: the output box's corners, or every grid point."""
        if self.grid is not None:
            return self.grid.reshape(len(self.patch), -1)
        box = np.array(np.meshgrid(*[(0, p - 1) for p in self.patch], indexing="ij")).reshape(len(self.patch), -1)
        return self.matrix @ box + self.offset[:, None]

    def inside(self, shape: Sequence[int]) -> bool:
        """Whether every position and its linear interpolation neighbours lie in an array of ``shape``."""
        corners = self.corners()
        return bool((corners.min(axis=1) >= 0).all() and (corners.max(axis=1) <= np.asarray(shape) - 1).all())

    def shift(self, lower: Sequence[int]) -> None:
        """Express the positions relative to a crop starting at ``lower``."""
        lower = np.asarray(lower, dtype=float)
        self.offset = self.offset - lower
        if self.grid is not None:
            self.grid -= lower.reshape(-1, *[1] * len(self.patch))


def _input_coordinates(matrix: np.ndarray, deformed: np.ndarray | None, patch: tuple[int, ...],
                       sample_shape: Sequence[int]) -> _Coordinates:
    """Coordinates as batchgenerators computes them (mesh, elastic offsets, rotation, scaling, centring)."""
    c_out = (np.asarray(patch, dtype=float) - 1) / 2
    c_in = np.asarray(sample_shape, dtype=float) / 2 - 0.5
    offset = c_in - matrix @ c_out
    grid = None
    if deformed is not None:
        mesh = create_zero_centered_coordinate_mesh(patch) + deformed
        grid = np.tensordot(matrix, mesh, axes=1) + c_in.reshape(-1, *[1] * len(patch))
    return _Coordinates(matrix, offset, patch, grid)


def _bounding_box(coords: _Coordinates, shape: Sequence[int], margin: int) -> tuple[list[int], list[int]]:
    """Lower (inclusive) and upper (exclusive) corner of the input region read, plus ``margin``, clipped."""
    corners = coords.corners()
    lower = np.floor(corners.min(axis=1)).astype(int) - margin
    upper = np.ceil(corners.max(axis=1)).astype(int) + margin + 1
    lower = [int(min(max(lo, 0), n - 1)) for lo, n in zip(lower, shape, strict=True)]
    upper = [int(max(min(hi, n), lo + 1)) for hi, lo, n in zip(upper, lower, shape, strict=True)]
    return lower, upper


def _torch_grid(coords: _Coordinates, crop_shape: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` grid (1, *patch, dim) for ``align_corners=True`` on a crop of ``crop_shape``."""
    dim = len(coords.patch)
    norm = 2.0 / np.maximum(np.asarray(crop_shape, dtype=float) - 1, 1)
    if coords.grid is not None:
        grid = coords.grid * norm.reshape(-1, *[1] * dim) - 1
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(grid[::-1], 0, -1), dtype=np.float32))[None]
    half_out = (np.asarray(coords.patch, dtype=float) - 1) / 2
    linear = norm[:, None] * coords.matrix * half_out[None, :]  # normalised output -> normalised input
    shift = norm * (coords.matrix @ half_out + coords.offset) - 1
    theta = np.concatenate([linear[::-1, ::-1], shift[::-1, None]], axis=1)  # torch orders axes x, y(, z)
    theta_t = torch.from_numpy(theta.astype(np.float32))[None]
    return F.affine_grid(theta_t, [1, 1, *coords.patch], align_corners=True)


def _label_values(seg: np.ndarray) -> np.ndarray:
    """Sorted label values present in ``seg`` (a bincount for uint8, much cheaper than sorting)."""
    if seg.dtype != np.uint8:
        return np.unique(seg)
    low, high = int(seg.min()), int(seg.max())
    if high - low <= 1:  # one or two consecutive values (background / vessel): both present
        return np.arange(low, high + 1, dtype=np.uint8)
    return np.flatnonzero(np.bincount(seg.reshape(-1), minlength=256)).astype(np.uint8)


def _resample(data: np.ndarray, seg: np.ndarray | None, coords: _Coordinates, order: int,
              inside: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Interpolate the crops ``data`` (C, *box) and ``seg`` (K, *box, or None) at ``coords``.

    Linear data and the label indicators share one ``grid_sample`` call (one grid, one pass over the
    output); order 3 data goes through :func:`_spline`. With two label values and every position
    ``inside`` the sample, only the second value's indicator is interpolated (the first one's weight is
    1 minus it). Returns float32 (C, *patch) and uint8 (K, *patch).
    """
    channels = data.shape[0] if order == 1 else 0
    out_data = _spline(data, coords) if order != 1 else None
    values = None if seg is None else _label_values(seg)
    binary = values is not None and len(values) == 2 and inside
    per_channel = 0 if values is None else 1 if binary else len(values)
    if seg is not None and len(values) == 1:  # one label: nothing to interpolate (inside the sample)
        per_channel = 0 if inside else 1
    source = np.empty((channels + (0 if seg is None else seg.shape[0] * per_channel), *data.shape[1:]), np.float32)
    if channels:
        source[:channels] = data
    if seg is not None:
        indicators = source[channels:].reshape(seg.shape[0], per_channel, *seg.shape[1:])
        for j, value in enumerate(values[-per_channel:] if per_channel else []):
            np.equal(seg, value, out=indicators[:, j])
    if len(source) == 0:
        return out_data, None if seg is None else np.full((seg.shape[0], *coords.patch), values[0], np.uint8)
    grid = _torch_grid(coords, data.shape[1:])
    sampled = F.grid_sample(torch.from_numpy(source)[None], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)[0]
    if channels:
        out_data = sampled[:channels].numpy()
    if seg is None:
        return out_data, None
    scores = sampled[channels:].reshape(seg.shape[0], per_channel, *coords.patch)
    if binary:
        return out_data, _pick_binary(scores[:, 0], values, seg, grid)
    if per_channel < len(values):  # the first value's weight is what the others leave
        scores = torch.cat([1 - scores.sum(dim=1, keepdim=True), scores], dim=1)
    return out_data, _pick_labels(scores, values, seg, grid)


def _spline(crop: np.ndarray, coords: _Coordinates) -> np.ndarray:
    """Cubic B-spline interpolation of every channel of ``crop`` (C, *box); float32 (C, *patch)."""
    out = np.empty((crop.shape[0], *coords.patch), np.float32)
    for c in range(crop.shape[0]):
        filtered = spline_filter(np.asarray(crop[c], dtype=np.float32), order=3, output=np.float32, mode="constant")
        if coords.grid is None:
            affine_transform(filtered, coords.matrix, coords.offset, coords.patch, out[c], order=3, mode="constant",
                             prefilter=False)
        else:
            map_coordinates(filtered, coords.grid, out[c], order=3, mode="constant", prefilter=False)
    return out


def _nearest_index(values: np.ndarray, seg: np.ndarray, grid: torch.Tensor) -> torch.Tensor:
    """Index into ``values`` of the nearest-neighbour label of each output voxel, (K, *patch)."""
    index = np.searchsorted(values, seg).astype(np.float32)
    return F.grid_sample(torch.from_numpy(index)[None], grid, mode="nearest", padding_mode="zeros",
                         align_corners=True)[0].long()


def _pick_binary(second: torch.Tensor, values: np.ndarray, seg: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    """Two label values, all positions inside: the second wins where its weight exceeds 1/2; ties (exactly
    1/2) go to the nearest neighbour."""
    weight = second.numpy()
    labels = np.where(weight > 0.5, values[1], values[0]).astype(np.uint8)
    ties = weight == 0.5
    if ties.any():
        labels[ties] = values[_nearest_index(values, seg, grid).numpy()[ties]]
    return labels


def _pick_labels(scores: torch.Tensor, values: np.ndarray, seg: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    """Winning label per voxel from interpolated indicators ``scores`` (K, L, *patch) (rules: module docstring)."""
    if len(values) == 1:
        return np.where(scores[:, 0].numpy() > 0, values[0], 0).astype(np.uint8)
    if len(values) == 2:  # the usual background / vessel case, without the general tie count
        best, winner = torch.maximum(scores[:, 0], scores[:, 1]), (scores[:, 1] > scores[:, 0]).long()
        ties = scores[:, 0] == scores[:, 1]
    else:
        best, winner = scores.max(dim=1)
        ties = (scores == best[:, None]).sum(dim=1) > 1
    if bool(ties.any()):
        nearest = _nearest_index(values, seg, grid)
        nearest_wins = ties & (scores.gather(1, nearest[:, None])[:, 0] == best)
        winner = torch.where(nearest_wins, nearest, winner)
    labels = torch.from_numpy(values.astype(np.int64))[winner]
    labels[best <= 0] = 0  # outside every label (only outside the sample)
    return labels.numpy().astype(np.uint8)
