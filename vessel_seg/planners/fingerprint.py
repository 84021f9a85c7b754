"""Dataset fingerprint: what the planner needs to know about a raw dataset (``fingerprint.json``).

Per case: spacing, shape, shape after cropping to the non-zero region, foreground intensity
statistics per channel, and vessel geometry. Per dataset: foreground intensity statistics per
channel (from at most :data:`SAMPLES_PER_CASE` random foreground voxels of each case, pooled) and
summaries of the vessel geometry.

Vessel geometry (what nnU-Net's fingerprint lacks)
--------------------------------------------------
The vessel mask is ``label > 0`` (every foreground label).

Radius, in mm
    Measured on the 3D skeleton of the mask (``skimage.morphology.skeletonize``, Lee's method; 2D
    for single-slice images) with the spacing-aware Euclidean distance transform ``D`` of the mask
    (``edt``): the radius at a skeleton voxel is ``D``, the distance from its centre to the nearest
    background voxel centre. Convention: radius = centreline-to-wall distance, diameter = 2 x
    radius. Checked on digitised straight tubes of random orientation and offset: within +-0.3
    voxel of the nominal radius up to 2 voxels, ~0.3 voxel low at 4-5 voxels (the skeleton strays
    from the axis); a vessel one voxel wide reads one voxel, the smallest value possible. Side
    branches of the skeleton near a wall add a few small values to the low percentiles.
Vessel fraction
    Vessel voxels / voxels of the image cropped to its non-zero region (what the network sees).
Components
    Number of 26-connected components of the mask (``cc3d``; 8-connected in 2D).

Radii are summarised as percentiles 5, 10, 25, 50, 75, 90, 95 and the maximum, per case (from
all skeleton voxels) and for the dataset (from at most :data:`SAMPLES_PER_CASE` skeleton voxels per
case, pooled).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cc3d
import numpy as np

from vessel_seg.dataset import Case, training_cases
from vessel_seg.errors import DatasetError, PlansError
from vessel_seg.imageio import read_image, read_label
from vessel_seg.morphology import bounding_box, skeleton_and_radius
from vessel_seg.planners.cropping import nonzero_bbox
from vessel_seg.planners.plans import ChannelIntensity
from vessel_seg.planners.resampling_checks import resampling_problem
from vessel_seg.planners.verify import label_problem
from vessel_seg.serialization import from_dict, read_json, write_json_atomic

log = logging.getLogger(__name__)

SAMPLES_PER_CASE = 10_000
RADIUS_PERCENTILES = (5, 10, 25, 50, 75, 90, 95)
FINGERPRINT_VERSION = 1


@dataclass
class RadiusStats:
    """Distribution of vessel radii in mm: percentiles, maximum and number of skeleton samples."""

    p05: float = 0.0
    p10: float = 0.0
    p25: float = 0.0
    p50: float = 0.0
    p75: float = 0.0
    p90: float = 0.0
    p95: float = 0.0
    max: float = 0.0
    num_samples: int = 0

    @classmethod
    def from_samples(cls, radii: np.ndarray) -> RadiusStats:
        radii = np.asarray(radii, dtype=np.float64)
        if radii.size == 0:
            return cls()
        values = np.percentile(radii, RADIUS_PERCENTILES)
        return cls(*(float(v) for v in values), max=float(radii.max()), num_samples=int(radii.size))

    def fraction_below(self, radius_mm: float) -> float:
        """Approximate fraction (0..1) of skeleton samples with a radius below ``radius_mm``.

        Interpolates linearly between the stored percentiles, and between 0 mm and ``p05``.
        """
        if self.num_samples == 0:
            return 0.0
        values = [0.0, self.p05, self.p10, self.p25, self.p50, self.p75, self.p90, self.p95, self.max]
        levels = [0.0] + [p / 100 for p in RADIUS_PERCENTILES] + [1.0]
        return float(np.interp(radius_mm, values, levels))


@dataclass
class ValueSummary:
    """Mean, median, min and max of one per-case number over the cases."""

    mean: float = 0.0
    median: float = 0.0
    min: float = 0.0
    max: float = 0.0

    @classmethod
    def from_values(cls, values) -> ValueSummary:
        values = np.asarray(list(values), dtype=np.float64)
        if values.size == 0:
            return cls()
        return cls(float(values.mean()), float(np.median(values)), float(values.min()), float(values.max()))


@dataclass
class CaseFingerprint:
    """What one training case contributes to the fingerprint (geometry in ``(z, y, x)`` order).

    Attributes
    ----------
    case_id : str
    spacing : list of float
        Voxel size in mm.
    shape : list of int
        Image shape in voxels.
    shape_after_crop : list of int
        Shape of the bounding box of the non-zero region (``cropping.nonzero_bbox``).
    intensity : list of ChannelIntensity
        Foreground (label > 0) intensity statistics per channel; empty when the label is empty.
    num_vessel_voxels : int
    vessel_fraction : float
        Vessel voxels / voxels after cropping.
    num_components : int
        26-connected components of the vessel mask.
    radius : RadiusStats
        Vessel radii in mm on the skeleton.
    """

    case_id: str
    spacing: list[float]
    shape: list[int]
    shape_after_crop: list[int]
    intensity: list[ChannelIntensity] = field(default_factory=list)
    num_vessel_voxels: int = 0
    vessel_fraction: float = 0.0
    num_components: int = 0
    radius: RadiusStats = field(default_factory=RadiusStats)


@dataclass
class DatasetFingerprint:
    """Per-case fingerprints and dataset summaries; saved as ``fingerprint.json``.

    ``intensity`` is keyed by channel index as a string (``"0"``, ``"1"``...), the same keys as
    ``Plans.intensity_properties``.
    """

    dataset_name: str
    cases: list[CaseFingerprint]
    intensity: dict[str, ChannelIntensity]
    vessel_radius_mm: RadiusStats = field(default_factory=RadiusStats)
    vessel_fraction: ValueSummary = field(default_factory=ValueSummary)
    num_components: ValueSummary = field(default_factory=ValueSummary)
    samples_per_case: int = SAMPLES_PER_CASE
    version: int = FINGERPRINT_VERSION

    @property
    def num_channels(self) -> int:
        return len(self.intensity)

    @property
    def spacings(self) -> np.ndarray:
        """``(N, 3)`` case spacings in mm."""
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes_after_crop(self) -> np.ndarray:
        """``(N, 3)`` case shapes after cropping, in voxels."""
        return np.array([c.shape_after_crop for c in self.cases], dtype=np.int64)

    @property
    def median_spacing(self) -> list[float]:
        return [float(v) for v in np.median(self.spacings, axis=0)]

    @property
    def median_shape_after_crop(self) -> list[int]:
        return [int(round(v)) for v in np.median(self.shapes_after_crop, axis=0)]

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` atomically as JSON."""
        return write_json_atomic(path, self)

    @classmethod
    def load(cls, path: str | Path) -> DatasetFingerprint:
        path = Path(path)
        if not path.is_file():
            raise PlansError(f"{path}: fingerprint not found; run vs_plan_and_preprocess to create it")
        try:
            fingerprint = from_dict(cls, read_json(path))
        except (ValueError, TypeError, KeyError) as exc:
            raise PlansError(f"{path}: invalid fingerprint ({exc}); delete it and run vs_plan_and_preprocess") from exc
        if not fingerprint.cases:
            raise PlansError(f"{path}: fingerprint lists no cases; delete it and run vs_plan_and_preprocess")
        return fingerprint


def channel_intensity(values: np.ndarray) -> ChannelIntensity:
    """Mean, std, 0.5/99.5 percentiles, median, min and max of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    p005, median, p995 = np.percentile(values, (0.5, 50.0, 99.5))
    return ChannelIntensity(
        mean=float(values.mean()), std=float(values.std()), percentile_00_5=float(p005),
        percentile_99_5=float(p995), median=float(median), min=float(values.min()), max=float(values.max()),
    )


def vessel_radii(mask: np.ndarray, spacing: list[float]) -> np.ndarray:
    """Radii in mm at the skeleton voxels of a ``(Z, Y, X)`` binary ``mask`` (definition in the module docstring)."""
    box = bounding_box(mask, margin=1)  # one background voxel around: the distances inside equal the full ones
    if box is None:
        return np.zeros(0, dtype=np.float32)
    mask = mask[box]
    spacing = [float(s) for s in spacing]
    if mask.shape[0] == 1:  # a 2D image stored as one slice
        mask, spacing = mask[0], spacing[1:]
    skeleton, distance = skeleton_and_radius(mask, spacing)
    return distance[skeleton]


def check_case_spacings(fingerprint: DatasetFingerprint, raw_dataset_dir: Path) -> None:
    """Raise :class:`DatasetError` for a case whose header spacing is implausible next to the others.

    Planning and preprocessing resample every case to about the median spacing; one case at 20 mm
    among 0.5 mm cases would be blown up hundreds of times (minutes of planning, absurd batches).
    """
    flat = [c for c in fingerprint.cases if c.shape[0] == 1]
    if flat and len(flat) < len(fingerprint.cases):  # a 2D image among 3D volumes (or the other way round)
        raise DatasetError(
            f"{raw_dataset_dir / 'imagesTr'}: case {flat[0].case_id!r} is a 2D image ({flat[0].shape[1]}x"
            f"{flat[0].shape[2]}) in a dataset of 3D volumes; a dataset is all 2D or all 3D: remove or replace it"
        )
    median = fingerprint.median_spacing
    for case in fingerprint.cases:
        problem = resampling_problem(case.shape_after_crop, case.spacing, median)
        if problem:
            raise DatasetError(
                f"{raw_dataset_dir / 'imagesTr'}: case {case.case_id!r}: {problem}, the dataset's median spacing; "
                "check the spacing in this case's header"
            )


def fingerprint_case(
    case: Case, seed: int = 0, declared_labels: Sequence[int] | None = None
) -> tuple[CaseFingerprint, list[np.ndarray], np.ndarray]:
    """Fingerprint one case, after checking that its label fits the image.

    The label must have the image's shape and geometry and, when ``declared_labels`` is given, hold
    only those values; otherwise :class:`DatasetError` names the label file. Checking here, where
    every case is read first, stops a bad dataset before any fingerprint or plan is written.

    Returns
    -------
    fingerprint : CaseFingerprint
    intensity_samples : list of ndarray
        Per channel, at most :data:`SAMPLES_PER_CASE` random foreground intensities.
    radius_samples : ndarray
        At most :data:`SAMPLES_PER_CASE` random skeleton radii in mm.
    """
    images, geometry = read_image(case.images)
    label, label_geometry = read_label(case.label)
    if tuple(label.shape) != tuple(images.shape[1:]):
        raise DatasetError(
            f"{case.label}: label shape {tuple(label.shape)} differs from image shape {tuple(images.shape[1:])}; "
            "label and image must cover the same voxels"
        )
    declared = declared_labels if declared_labels is not None else np.unique(label).tolist()
    problem = label_problem(case.label, label, label_geometry, case.images[0], geometry, declared)
    if problem is not None:
        raise DatasetError(problem)
    rng = np.random.default_rng(seed)
    bbox = nonzero_bbox(images)
    shape_after_crop = [b - a for a, b in bbox]
    mask = label > 0
    foreground = images[:, mask]  # (C, N)
    keep = rng.choice(foreground.shape[1], min(SAMPLES_PER_CASE, foreground.shape[1]), replace=False)
    samples = [channel[keep] for channel in foreground]
    intensity = [channel_intensity(channel) for channel in foreground] if foreground.shape[1] else []
    radii = vessel_radii(mask, list(geometry.spacing))
    radius_keep = rng.choice(radii.size, min(SAMPLES_PER_CASE, radii.size), replace=False)
    num_components = int(cc3d.connected_components(mask, connectivity=26, return_N=True)[1]) if mask.any() else 0
    num_vessel = int(mask.sum())
    if num_vessel == 0:
        log.warning("%s: label holds no vessel voxels", case.label)
    fingerprint = CaseFingerprint(
        case_id=case.case_id,
        spacing=[float(s) for s in geometry.spacing],
        shape=[int(s) for s in images.shape[1:]],
        shape_after_crop=shape_after_crop,
        intensity=intensity,
        num_vessel_voxels=num_vessel,
        vessel_fraction=num_vessel / max(int(np.prod(shape_after_crop)), 1),
        num_components=num_components,
        radius=RadiusStats.from_samples(radii),
    )
    return fingerprint, samples, radii[radius_keep]


def _fingerprint_job(args: tuple[Case, int, list[int]]) -> tuple[CaseFingerprint, list[np.ndarray], np.ndarray]:
    return fingerprint_case(*args)


def extract_fingerprint(raw_dataset_dir: str | Path, num_workers: int = 1) -> DatasetFingerprint:
    """Fingerprint every labelled training case of a raw dataset folder (nnU-Net v2 layout).

    Cases are processed one at a time per worker and only their samples are kept, so memory stays
    at about one case per worker. ``num_workers > 1`` uses that many processes.

    Raises
    ------
    DatasetError
        The dataset is malformed, a label does not match its image, or no case holds any vessel.
    """
    raw_dataset_dir = Path(raw_dataset_dir)
    info, cases = training_cases(raw_dataset_dir)
    declared = sorted(info.labels.values())
    jobs = [(case, index, declared) for index, case in enumerate(cases)]
    if num_workers > 1 and len(cases) > 1:
        # spawn: forking a process that holds threads (BLAS, torch) can deadlock
        with ProcessPoolExecutor(min(num_workers, len(cases)), mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_fingerprint_job, jobs))
    else:
        results = [_fingerprint_job(job) for job in jobs]
    case_fingerprints = [r[0] for r in results]
    if not any(c.num_vessel_voxels for c in case_fingerprints):
        raise DatasetError(f"{raw_dataset_dir / 'labelsTr'}: no label holds any vessel voxel; check the labels")
    intensity = {
        str(ch): channel_intensity(np.concatenate([r[1][ch] for r in results]))
        for ch in range(info.num_channels)
    }
    fingerprint = DatasetFingerprint(
        dataset_name=raw_dataset_dir.name,
        cases=case_fingerprints,
        intensity=intensity,
        vessel_radius_mm=RadiusStats.from_samples(np.concatenate([r[2] for r in results])),
        vessel_fraction=ValueSummary.from_values(c.vessel_fraction for c in case_fingerprints),
        num_components=ValueSummary.from_values(c.num_components for c in case_fingerprints),
    )
    check_case_spacings(fingerprint, raw_dataset_dir)
    log.info(
        "fingerprint %s: %d cases, median spacing %s, radius p10/p50 %.2f/%.2f mm",
        fingerprint.dataset_name, len(case_fingerprints), [round(s, 3) for s in fingerprint.median_spacing],
        fingerprint.vessel_radius_mm.p10, fingerprint.vessel_radius_mm.p50,
    )
    return fingerprint
