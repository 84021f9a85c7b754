"""Random training patches from preprocessed cases, with foreground oversampling.

:class:`PatchLoader` is an infinite batchgenerators loader: every ``next()`` draws ``batch_size``
cases at random (with replacement) and crops one patch from each through the case store's memory
maps, so only the patch is read from disk.

Foreground oversampling (vessels fill a tiny share of a scan): the last ``n_fg`` samples of each
batch are centred on a random vessel voxel, chosen by first drawing a label uniformly among the
labels present in the case's ``class_locations`` and then one of its stored voxels uniformly. With
``p = oversample_foreground`` (1/3 by default), ``n_fg = max(1, round(B * p))`` for ``B >= 2``;
for ``B == 1`` the single sample is a foreground sample with probability ``p``. (nnU-Net v2 forces
the last ``B - round(B * (1 - p))`` samples, which is 0 for ``B == 1``; ours never starves
batch-size-1 configurations of vessels.) Cases without stored foreground locations fall back to
uniformly random patches.

Patches may reach past the image by up to half the amount the patch exceeds it, and by half
the margin between the sample and the final patch size (so that the final patch, cropped from the
sample's centre, can still touch every image border). Outside the image, data is 0 (the mean after
normalisation) and labels are 0 (background).

The batch is ``{"data": float32 (B, C, *S), "target": uint8 (B, T, *S), "keys": [case ids]}``
with ``S = sample_patch_size``; ``T`` is 1, or 2 when ``previous_stage_dir`` is given: channel 1
then holds the previous stage's segmentation, which
:class:`vessel_seg.trainers.augmentation.CascadeToOneHot` later turns into one-hot input channels
(it is kept with the labels until then so that spatial transforms interpolate it as a label map).
2D configurations (two-value patch sizes) crop one ``(Y, X)`` patch from a random axial slice ``z``
(a slice through the chosen vessel voxel for foreground samples); arrays are then ``(B, C, Y, X)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from vessel_seg.case_store import load_case
from vessel_seg.errors import DatasetError
from vessel_seg.planners.plans import ConfigurationPlan

log = logging.getLogger(__name__)


@dataclass
class _Case:
    data: np.ndarray  # (C, Z, Y, X) float32, memory-mapped
    seg: np.ndarray  # (Z, Y, X) uint8
    previous: np.ndarray | None  # (Z, Y, X) uint8 previous-stage segmentation
    locations: dict[int, np.ndarray]  # label -> (N, 3) voxel indices (z, y, x), only non-empty


def crop_with_padding(array: np.ndarray, lower: Sequence[int], size: Sequence[int], pad_value: float = 0) -> np.ndarray:
    """Crop the last ``len(size)`` axes of ``array`` to ``[lower, lower + size)``, padding outside.

    ``lower`` may be negative and ``lower + size`` may exceed the shape; voxels outside the array
    get ``pad_value``. Leading axes are kept whole. Returns a new array of ``array``'s dtype.
    """
    lead = array.shape[: array.ndim - len(size)]
    out = np.full((*lead, *size), pad_value, dtype=array.dtype)
    paste_crop(array, lower, out)
    return out


def paste_crop(array: np.ndarray, lower: Sequence[int], out: np.ndarray) -> None:
    """Copy the part of ``array``'s box ``[lower, lower + out.shape)`` (last axes) that lies inside ``array`` into ``out``.

    The rest of ``out`` is left as it is: with ``out`` from ``np.zeros`` this crops with zero
    padding while touching only the copied voxels (large zeroed arrays are zero pages until written).
    """
    size = out.shape[out.ndim - len(lower):]
    src, dst = [], []
    for lo, n, extent in zip(lower, size, array.shape[array.ndim - len(lower):], strict=True):
        start, stop = max(lo, 0), min(lo + n, extent)
        if stop <= start:
            return  # entirely outside the image
        src.append(slice(start, stop))
        dst.append(slice(start - lo, stop - lo))
    out[(..., *dst)] = array[(..., *src)]


def foreground_sample_count(batch_size: int, oversample_foreground: float, rng: np.random.Generator) -> int:
    """Number of foreground-centred samples in one batch (see the module docstring for the rule)."""
    if oversample_foreground <= 0:
        return 0
    if batch_size == 1:
        return int(rng.uniform() < oversample_foreground)
    return min(batch_size, max(1, round(batch_size * oversample_foreground)))


class PatchLoader(SlimDataLoaderBase):
    """Infinite loader of random patches with foreground oversampling.

    Parameters
    ----------
    folder : str or Path
        Case store folder (``VS_PREPROCESSED/DatasetNNN_Name/<data_identifier>``).
    case_ids : sequence of str
        Cases to sample from (for example a fold's training cases).
    patch_size : sequence of int
        Final (network) patch size: ``(z, y, x)`` for 3D, ``(y, x)`` for 2D configurations.
    batch_size : int
        Samples per batch.
    sample_patch_size : sequence of int, optional
        Size actually cropped (``>= patch_size``), the ``sample_patch_size`` of the training
        :class:`~vessel_seg.trainers.augmentation.Augmentation`; defaults to ``patch_size``
        (validation, no spatial augmentation).
    oversample_foreground : float, optional
        Share ``p`` of foreground-centred samples per batch.
    previous_stage_dir : str or Path, optional
        Folder with the previous cascade stage's segmentations ``CASE.npy`` (uint8, the case's
        ``(Z, Y, X)`` shape); adds target channel 1.
    seed : int, optional
        Seed of the sampling; with background workers each worker uses ``(seed, worker index)``.
        None draws fresh entropy (per worker).
    """

    def __init__(
        self,
        folder: str | Path,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        batch_size: int,
        *,
        sample_patch_size: Sequence[int] | None = None,
        oversample_foreground: float = 1 / 3,
        previous_stage_dir: str | Path | None = None,
        seed: int | None = None,
    ):
        super().__init__(list(case_ids), batch_size, None)
        self.folder = Path(folder)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.sample_patch_size = tuple(int(p) for p in (sample_patch_size or patch_size))
        if len(self.patch_size) not in (2, 3) or len(self.sample_patch_size) != len(self.patch_size):
            raise ValueError(f"patch sizes {self.patch_size} / {self.sample_patch_size} must both be 2D or 3D")
        if any(s < p for s, p in zip(self.sample_patch_size, self.patch_size, strict=True)):
            raise ValueError(f"sample patch {self.sample_patch_size} is smaller than the patch {self.patch_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not self._data:
            raise DatasetError(f"{self.folder}: no cases to sample patches from; check the fold's case list")
        self.oversample_foreground = oversample_foreground
        self.previous_stage_dir = Path(previous_stage_dir) if previous_stage_dir is not None else None
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._cases: dict[str, _Case] = {}
        self._check_files()
        log.debug(
            "patch loader: %d cases, batch %d, patch %s (sampled %s), foreground share %.2f",
            len(self._data), batch_size, self.patch_size, self.sample_patch_size, oversample_foreground,
        )

    @classmethod
    def from_plan(
        cls, folder: str | Path, case_ids: Sequence[str], plan: ConfigurationPlan, **kwargs
    ) -> PatchLoader:
        """Loader with the patch and batch size of a configuration; ``kwargs`` as in the constructor."""
        return cls(folder, case_ids, plan.patch_size, plan.batch_size, **kwargs)

    @property
    def dim(self) -> int:
        return len(self.patch_size)

    @property
    def num_image_channels(self) -> int:
        """Channels ``C`` of the stored images (read from the first case's header)."""
        return int(self._case(self._data[0]).data.shape[0])

    def _check_files(self) -> None:
        for case_id in self._data:
            for path in (self.folder / f"{case_id}.npy", self.folder / f"{case_id}_seg.npy"):
                if not path.is_file():
                    raise DatasetError(f"{path}: missing for training; re-run vs_plan_and_preprocess for this dataset")
            if self.previous_stage_dir is not None and not (self.previous_stage_dir / f"{case_id}.npy").is_file():
                raise DatasetError(
                    f"{self.previous_stage_dir / (case_id + '.npy')}: previous-stage segmentation missing; "
                    "predict the previous cascade stage for the training cases first"
                )

    def __getstate__(self) -> dict:
        # memory maps are reopened in each process rather than pickled (which would copy the data)
        state = self.__dict__.copy()
        state["_cases"] = {}
        return state

    def set_thread_id(self, thread_id: int) -> None:
        """Called in each background worker: give it its own random stream."""
        super().set_thread_id(thread_id)
        self._rng = np.random.default_rng(None if self.seed is None else [self.seed, thread_id])

    def _case(self, case_id: str) -> _Case:
        case = self._cases.get(case_id)
        if case is None:
            data, seg, props = load_case(self.folder, case_id)
            if seg is None or seg.shape != data.shape[1:]:
                raise DatasetError(f"{self.folder / case_id}_seg.npy: missing or not of shape {data.shape[1:]}")
            previous = None
            if self.previous_stage_dir is not None:
                path = self.previous_stage_dir / f"{case_id}.npy"
                previous = np.load(path, mmap_mode="r", allow_pickle=False)
                if previous.shape != data.shape[1:]:
                    raise DatasetError(
                        f"{path}: shape {previous.shape} differs from the case's {data.shape[1:]}; "
                        "re-export the previous stage's predictions at this configuration's spacing"
                    )
            locations = {
                int(label): np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
                for label, voxels in props.class_locations.items()
                if len(voxels) and int(label) > 0
            }
            case = self._cases[case_id] = _Case(data, seg, previous, locations)
        return case

    def _lower_corner(self, shape: Sequence[int], center: Sequence[int] | None) -> list[int]:
        """Lower corner of the sample patch: random, or centred on ``center`` (clipped to the allowed range)."""
        corner = []
        for axis, extent in enumerate(shape):
            sample, final = self.sample_patch_size[axis], self.patch_size[axis]
            allowance = (sample - final) + max(final - extent, 0)
            lowest = -(allowance // 2)
            highest = extent + allowance - allowance // 2 - sample
            if center is None:
                corner.append(int(self._rng.integers(lowest, highest + 1)))
            else:
                corner.append(int(np.clip(center[axis] - sample // 2, lowest, highest)))
        return corner

    def _foreground_voxel(self, case: _Case) -> np.ndarray | None:
        if not case.locations:
            return None
        labels = sorted(case.locations)
        voxels = case.locations[labels[int(self._rng.integers(len(labels)))]]
        return voxels[int(self._rng.integers(len(voxels)))]

    def _sample(self, case: _Case, foreground: bool, image: np.ndarray, target: np.ndarray) -> None:
        """Crop one sample into ``image`` (C, *S) and ``target`` (T, *S), zero-filled beforehand."""
        voxel = self._foreground_voxel(case) if foreground else None
        data, labels = case.data, [case.seg] + ([case.previous] if case.previous is not None else [])
        if self.dim == 2:
            z = int(voxel[0]) if voxel is not None else int(self._rng.integers(data.shape[1]))
            data, labels = data[:, z], [label[z] for label in labels]
            voxel = voxel[1:] if voxel is not None else None
        corner = self._lower_corner(data.shape[1:], voxel)
        paste_crop(data, corner, image)
        for channel, label in enumerate(labels):
            paste_crop(label, corner, target[channel])

    def generate_train_batch(self) -> dict:
        """One batch; the arrays are allocated zeroed and only the voxels inside the images are written
        (the sample patch can be several times the image and the final patch)."""
        n_fg = foreground_sample_count(self.batch_size, self.oversample_foreground, self._rng)
        keys = [self._data[i] for i in self._rng.integers(len(self._data), size=self.batch_size)]
        cases = [self._case(case_id) for case_id in keys]
        channels, targets = cases[0].data.shape[0], 1 + (cases[0].previous is not None)
        data = np.zeros((self.batch_size, channels, *self.sample_patch_size), np.float32)
        target = np.zeros((self.batch_size, targets, *self.sample_patch_size), np.uint8)
        for index, case in enumerate(cases):
            self._sample(case, index >= self.batch_size - n_fg, data[index], target[index])
        return {"data": data, "target": target, "keys": keys}
