"""Preprocessing of raw cases for one configuration, and the exact inverse used by inference.

Forward (:func:`preprocess_case`): crop to the non-zero box of the image channels, normalise each
channel (``normalization.py``, on the cropped image as nnU-Net does, before any interpolation),
resample image and label to the configuration's spacing (``resampling.py``) and sample foreground
voxel positions for oversampling. Inverse (:func:`restore_to_original`): resample a prediction back
to the cropped shape, exactly, and paste it into the original array shape.

:func:`preprocess_dataset` runs the forward step over a raw dataset's training cases and writes
them with :mod:`vessel_seg.case_store`; completed cases are skipped, so a killed run resumes.
"""

from __future__ import annotations

import logging
import multiprocessing
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vessel_seg import case_store
from vessel_seg.atomic import check_free_space, remove_stale_temporaries
from vessel_seg.case_store import CaseProperties
from vessel_seg.dataset import Case, training_cases
from vessel_seg.errors import DatasetError, PlansError
from vessel_seg.imageio import ImageGeometry, read_geometry, read_image, read_label
from vessel_seg.planners.cropping import crop_to_bbox, nonzero_bbox, paste_into
from vessel_seg.planners.normalization import normalize
from vessel_seg.planners.plans import ConfigurationPlan, Plans
from vessel_seg.planners.resampling import (
    compute_new_shape,
    resample_label_to_shape,
    resample_to_shape,
)
from vessel_seg.planners.verify import label_problem

log = logging.getLogger(__name__)

MAX_LOCATIONS = 10_000
MIN_LOCATIONS_PER_COMPONENT = 10


def target_spacing(config: ConfigurationPlan, spacing: Sequence[float], shape: Sequence[int]) -> list[float]:
    """Spacing ``(z, y, x)`` in mm that ``config`` resamples a case of ``spacing`` and ``shape`` to.

    A 2D configuration changes the in-plane spacing only (the last two values of ``config.spacing``)
    and keeps the case's own z spacing, so slices stay slices. An axis holding a single voxel (a 2D
    image stored as one slice) also keeps its spacing. With ``spacing_mode == "finest_voxel"`` the
    planned values are multiples of the case's smallest spacing (over axes with more than one voxel).
    """
    planned = [float(s) for s in config.spacing]
    if config.spacing_mode == "finest_voxel":
        finest = min((float(s) for s, n in zip(spacing, shape, strict=True) if n > 1), default=float(min(spacing)))
        planned = [p * finest for p in planned]
    if config.dim == 2:
        if len(planned) not in (2, 3):
            raise PlansError(f"configuration {config.name!r}: spacing {planned} must have 2 or 3 values")
        target = [float(spacing[0]), *planned[-2:]]
    else:
        if len(planned) != 3:
            raise PlansError(f"configuration {config.name!r}: spacing {planned} must have 3 values (z, y, x)")
        target = planned
    return [float(s) if n == 1 else t for s, n, t in zip(spacing, shape, target, strict=True)]


def sample_class_locations(
    seg: np.ndarray,
    labels: Iterable[int],
    max_samples: int = MAX_LOCATIONS,
    min_per_component: int = MIN_LOCATIONS_PER_COMPONENT,
    seed: int = 0,
) -> dict[str, list[list[int]]]:
    """Random voxel positions of each foreground label, for foreground oversampling.

    Up to ``max_samples`` positions are drawn uniformly per label; in addition every 26-connected
    component of the label contributes ``min(size, min_per_component)`` positions, so that a small
    vessel fragment next to a large tree is still sampled (capped at a further ``max_samples``).

    Returns
    -------
    dict
        ``{"label": [[z, y, x], ...]}`` for every non-zero label in ``labels`` (an empty list when
        the label is absent), positions in raster order.
    """
    rng = np.random.default_rng(seed)
    locations: dict[str, list[list[int]]] = {}
    for value in sorted({int(v) for v in labels if int(v) != 0}):
        mask = seg == value
        flat = np.flatnonzero(mask)
        n = flat.size
        if n <= max_samples:
            chosen = np.arange(n)
        else:
            chosen = rng.choice(n, size=max_samples, replace=False)
            component = cc3d.connected_components(mask, connectivity=26).ravel()[flat]
            # Random order, then stable grouping by component: the first k of each group are a random pick.
            perm = rng.permutation(n)
            order = np.argsort(component[perm], kind="stable")
            grouped = component[perm][order]
            starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
            rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
            extra = perm[order[rank < min_per_component]]
            if extra.size > max_samples:
                extra = rng.choice(extra, size=max_samples, replace=False)
            chosen = np.union1d(chosen, extra)
        coords = np.stack(np.unravel_index(np.sort(flat[chosen]), seg.shape), axis=1)
        locations[str(value)] = coords.tolist()
    return locations


def preprocess_case(
    images: np.ndarray,
    label: np.ndarray | None,
    geometry: ImageGeometry,
    plans: Plans,
    config: ConfigurationPlan,
    case_id: str,
) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Crop, normalise, resample one case and sample its foreground positions.

    Parameters
    ----------
    images : ndarray, (C, Z, Y, X)
        Raw intensities of all channels, in the original array order.
    label : ndarray, (Z, Y, X), integer, or None
        Label map; ``None`` at inference.
    geometry : ImageGeometry
        Geometry of ``images`` (its shape must match).
    plans, config : Plans, ConfigurationPlan
        Labels, intensity statistics, target spacing, normalisation and resampling orders.
    case_id : str
        Identifier stored in the properties; also seeds the location sampling (reproducible).

    Returns
    -------
    data : ndarray, (C, Z', Y', X'), float32
    seg : ndarray, (Z', Y', X'), uint8, or None
    props : CaseProperties
        Original geometry, crop box, shapes, new spacing and ``class_locations``.
    """
    if images.ndim != 4:
        raise ValueError(f"{case_id}: images must be (C, Z, Y, X), got shape {images.shape}")
    if tuple(images.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"{case_id}: image shape {images.shape[1:]} does not match geometry {geometry.shape}")
    if label is not None and tuple(label.shape) != tuple(images.shape[1:]):
        raise ValueError(f"{case_id}: label shape {label.shape} does not match image shape {images.shape[1:]}")
    bbox = nonzero_bbox(images)
    data = normalize(crop_to_bbox(images, bbox), config.normalization, plans.intensity_properties)
    shape_after_crop = [int(s) for s in data.shape[1:]]
    spacing = [float(s) for s in geometry.spacing]
    new_spacing = target_spacing(config, spacing, shape_after_crop)
    new_shape = compute_new_shape(shape_after_crop, spacing, new_spacing)
    if tuple(new_shape) != tuple(shape_after_crop):
        data = resample_to_shape(
            data, new_shape, spacing, new_spacing, config.resampling_order_image, config.anisotropy_threshold
        )
    seg = None
    locations: dict[str, list[list[int]]] = {}
    if label is not None:
        cropped = crop_to_bbox(label, bbox)
        if np.count_nonzero(cropped) != np.count_nonzero(label):
            log.warning("%s: label voxels outside the non-zero image region were cropped away", case_id)
        labels = list(plans.labels.values())
        seg = resample_label_to_shape(
            cropped, new_shape, spacing, new_spacing, labels, config.resampling_order_label, config.anisotropy_threshold
        )
        locations = sample_class_locations(seg, labels, seed=zlib.crc32(case_id.encode()))
    props = CaseProperties(
        case_id=case_id,
        original_geometry=geometry,
        crop_bbox=bbox,
        shape_after_crop=shape_after_crop,
        shape_after_resampling=[int(s) for s in new_shape],
        spacing=new_spacing,
        class_locations=locations,
    )
    return data, seg, props


def restore_to_original(
    array: np.ndarray,
    props: CaseProperties,
    is_label: bool,
    labels: Sequence[int] | None = None,
    order: int = 1,
    anisotropy_threshold: float = 3.0,
) -> np.ndarray:
    """Map a prediction in preprocessed space back onto the original image grid.

    Parameters
    ----------
    array : ndarray
        A ``(Z, Y, X)`` label map (``is_label=True``) or ``(C, Z, Y, X)`` class probabilities (float16
        or float32) at the preprocessed spacing ``props.spacing``.
    props : CaseProperties
        Properties written by :func:`preprocess_case` for this case.
    is_label : bool
        Whether ``array`` is a label map.
    labels : sequence of int, optional
        Label values of a label map (default: the values present).
    order : int
        Interpolation order: one-hot order for labels, spline order for probabilities.
    anisotropy_threshold : float
        As used for the forward step (``ConfigurationPlan.anisotropy_threshold``).

    Returns
    -------
    ndarray
        Of shape ``props.original_geometry.shape`` (with the channel axis first for probabilities).
        Outside the crop box labels are 0 and probabilities are background: 1 on channel 0, 0 else.
    """
    shape = tuple(props.original_geometry.shape)
    crop_shape = tuple(props.shape_after_crop)
    current = props.spacing
    original = props.original_geometry.spacing
    if is_label:
        if array.ndim != 3:
            raise ValueError(f"{props.case_id}: a label map must be (Z, Y, X), got shape {array.shape}")
        values = np.unique(array).tolist() if labels is None else list(labels)
        restored = resample_label_to_shape(array, crop_shape, current, original, values, order, anisotropy_threshold)
        return paste_into(shape, restored, props.crop_bbox, fill=0)
    if array.ndim != 4:
        raise ValueError(f"{props.case_id}: probabilities must be (C, Z, Y, X), got shape {array.shape}")
    restored = resample_to_shape(array, crop_shape, current, original, order, anisotropy_threshold)
    out = paste_into(shape, restored, props.crop_bbox, fill=0)
    inside = tuple(slice(a, b) for a, b in props.crop_bbox)
    kept = out[0][inside].copy()
    out[0] = 1
    out[0][inside] = kept
    return out


@dataclass
class _Job:
    case: Case
    plans: Plans
    config: ConfigurationPlan
    out_dir: Path


def _stored_bytes(job: _Job) -> float:
    """Bytes one case takes preprocessed (float32 channels + uint8 label at the target spacing), from its header."""
    geometry = read_geometry(job.case.images[0])
    spacing = list(geometry.spacing)
    target = target_spacing(job.config, spacing, geometry.shape)
    voxels = float(np.prod(compute_new_shape(geometry.shape, spacing, target)))
    return voxels * (4 * len(job.case.images) + 1) + 4096


def _run_job(job: _Job) -> str:
    """Read, check, preprocess and store one case (runs in a worker process)."""
    case = job.case
    images, geometry = read_image(case.images)
    label = None
    if case.label is not None:
        label, label_geometry = read_label(case.label)
        declared = job.plans.labels.values()
        if (problem := label_problem(case.label, label, label_geometry, case.images[0], geometry, declared)) is not None:
            raise DatasetError(problem)
    data, seg, props = preprocess_case(images, label, geometry, job.plans, job.config, case.case_id)
    case_store.save_case(job.out_dir, data, seg, props)
    return case.case_id


def _unique_configurations(plans: Plans, config_names: Sequence[str]) -> list[ConfigurationPlan]:
    """One configuration per data identifier; configurations sharing data must agree on how to make it."""
    by_identifier: dict[str, ConfigurationPlan] = {}
    for name in config_names:
        config = plans.configuration(name)
        first = by_identifier.setdefault(config.data_identifier, config)
        recipe = (
            "spacing",
            "normalization",
            "resampling_order_image",
            "resampling_order_label",
            "anisotropy_threshold",
        )
        differs = [key for key in recipe if getattr(first, key) != getattr(config, key)]
        if differs or first.dim != config.dim:
            raise PlansError(
                f"configurations {first.name!r} and {name!r} share data identifier {config.data_identifier!r} "
                f"but differ in {', '.join(differs) or 'dimension'}; fix the plans"
            )
    return list(by_identifier.values())


def preprocess_dataset(
    raw_dataset_dir: str | Path,
    preprocessed_dataset_dir: str | Path,
    plans: Plans,
    config_names: Sequence[str],
    num_workers: int = 1,
) -> list[Path]:
    """Preprocess every training case of a raw dataset for the given configurations.

    Each configuration's cases go to ``preprocessed_dataset_dir / config.data_identifier``
    (configurations sharing a data identifier, such as ``3d_cascade_fullres`` and ``3d_fullres``,
    are processed once). Cases already complete there are skipped.

    Parameters
    ----------
    raw_dataset_dir : path
        ``DatasetNNN_Name`` folder with ``dataset.json``, ``imagesTr`` and ``labelsTr``.
    preprocessed_dataset_dir : path
        Output dataset folder (created when missing).
    plans : Plans
        The plans holding the configurations.
    config_names : sequence of str
        Configurations to preprocess.
    num_workers : int
        Worker processes (``spawn``); 1 runs in this process.

    Returns
    -------
    list of Path
        The output folder of each distinct data identifier, in the order first named.
    """
    _, cases = training_cases(raw_dataset_dir)
    preprocessed_dataset_dir = Path(preprocessed_dataset_dir)
    jobs: list[_Job] = []
    folders: list[Path] = []
    for config in _unique_configurations(plans, config_names):
        out_dir = preprocessed_dataset_dir / config.data_identifier
        out_dir.mkdir(parents=True, exist_ok=True)
        # Temporaries of a killed earlier run (case_store writes atomically); this run owns the folder now.
        remove_stale_temporaries(out_dir, older_than_s=0)
        folders.append(out_dir)
        done = set(case_store.list_cases(out_dir))
        todo = [case for case in cases if case.case_id not in done]
        log.info("%s: %d of %d cases to preprocess into %s", config.name, len(todo), len(cases), out_dir)
        jobs.extend(_Job(case, plans, config, out_dir) for case in todo)
    if not jobs:
        return folders
    check_free_space(preprocessed_dataset_dir, sum(_stored_bytes(job) for job in jobs), "preprocessing")
    with logging_redirect_tqdm(), tqdm(total=len(jobs), desc="preprocessing", unit="case", disable=None) as bar:
        if num_workers <= 1:
            for job in jobs:
                _run_job(job)
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")  # fork after torch/BLAS threads can deadlock
            with context.Pool(min(num_workers, len(jobs))) as pool:
                for _ in pool.imap_unordered(_run_job, jobs):
                    bar.update()
    return folders
