"""Dataset integrity check (``vs_plan_and_preprocess --verify``): every problem, one line each.

Unlike the loaders, which stop at the first error, :func:`verify_dataset` reads every training case
and reports all problems it finds, each line starting with the file concerned:

* ``dataset.json`` missing or invalid, ``numTraining`` not matching the cases found;
* image files not named ``CASE_NNNN<ending>``, channels missing or undeclared, labels missing or
  without images;
* unreadable, truncated or empty files and NaN/Inf voxels (as reported by the image reader);
* channels of one case, or image and label, that differ in shape, spacing, origin or direction;
* label values not declared in ``dataset.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import DatasetError, ImageReadError
from vessel_seg.imageio import ImageGeometry, read_array, read_label

log = logging.getLogger(__name__)


def label_problem(
    label_path: Path,
    seg: np.ndarray,
    label_geometry: ImageGeometry,
    image_path: Path,
    image_geometry: ImageGeometry,
    declared: Iterable[int],
) -> str | None:
    """Why a label map does not fit its image or ``dataset.json``, as one line naming the label file.

    Returns ``None`` when the label has the image's geometry (shape, spacing, origin and direction
    within :meth:`ImageGeometry.mismatch`'s tolerance) and holds only ``declared`` values.
    """
    if (problem := image_geometry.mismatch(label_geometry)) is not None:
        return (
            f"{label_path}: label geometry differs from image {Path(image_path).name} ({problem}); "
            "the label must lie on the image's voxel grid: resample or re-export it"
        )
    present = np.flatnonzero(np.bincount(seg.ravel())) if seg.size else np.array([], int)
    undeclared = sorted(set(present.tolist()) - set(declared))
    if undeclared:
        return (
            f"{label_path}: label values {undeclared} are not declared in dataset.json 'labels' "
            f"(declared: {sorted(set(declared))}); fix the label or declare the values"
        )
    return None


def _scan_images(folder: Path, info: DatasetInfo, problems: list[str]) -> dict[str, dict[int, Path]]:
    """Channel files per case id in ``folder``; badly named files are reported and skipped."""
    ending = info.file_ending
    by_case: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue
        stem = path.name[: -len(ending)]
        if len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
            problems.append(f"{path}: name must end in _NNNN{ending} (4-digit channel index), e.g. case_0000{ending}")
            continue
        by_case.setdefault(stem[:-5], {})[int(stem[-4:])] = path
    return by_case


def _check_case(
    case_id: str, channels: dict[int, Path], label: Path | None, info: DatasetInfo, problems: list[str]
) -> None:
    """Read one case's files and append every problem found."""
    declared = set(info.labels.values())
    reference: tuple[Path, ImageGeometry] | None = None
    for channel in sorted(channels):
        path = channels[channel]
        if channel >= info.num_channels:
            problems.append(f"{path}: channel {channel} is not declared in dataset.json 'channel_names'")
            continue
        try:
            _, geometry = read_array(path)
        except ImageReadError as exc:
            problems.append(str(exc))
            continue
        if reference is None:
            reference = (path, geometry)
        elif (problem := reference[1].mismatch(geometry)) is not None:
            problems.append(f"{path}: geometry differs from channel file {reference[0].name} ({problem})")
    for channel in range(info.num_channels):
        if channel not in channels:
            expected = next(iter(channels.values())).parent / f"{case_id}_{channel:04d}{info.file_ending}"
            problems.append(f"{expected}: channel {channel} of case {case_id!r} is missing from imagesTr")
    if label is None:
        return
    try:
        seg, label_geometry = read_label(label)
    except ImageReadError as exc:
        problems.append(str(exc))
        return
    image_path, image_geometry = reference if reference is not None else (label, label_geometry)
    if (problem := label_problem(label, seg, label_geometry, image_path, image_geometry, declared)) is not None:
        problems.append(problem)


def verify_dataset(raw_dataset_dir: str | Path) -> list[str]:
    """Check a raw dataset folder and return one line per problem (empty when consistent).

    Parameters
    ----------
    raw_dataset_dir : path
        ``DatasetNNN_Name`` folder (nnU-Net v2 layout).

    Returns
    -------
    list of str
        Problems in the order found, each beginning with the file it concerns. Every training case
        is read; the check does not stop at the first problem.
    """
    root = Path(raw_dataset_dir)
    if not root.is_dir():
        return [f"{root}: raw dataset folder not found"]
    try:
        info = DatasetInfo.load(root / "dataset.json")
    except DatasetError as exc:
        return [str(exc)]
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    problems: list[str] = []
    if not images_dir.is_dir():
        return [f"{images_dir}: training images folder not found"]
    if not labels_dir.is_dir():
        problems.append(f"{labels_dir}: training labels folder not found")
    by_case = _scan_images(images_dir, info, problems)
    for case_id, channels in sorted(by_case.items()):
        log.debug("verify: %s", case_id)
        label = labels_dir / f"{case_id}{info.file_ending}"
        if labels_dir.is_dir() and not label.is_file():
            problems.append(f"{label}: label file of case {case_id!r} is missing")
        _check_case(case_id, channels, label if label.is_file() else None, info, problems)
    if labels_dir.is_dir():
        for path in sorted(labels_dir.glob(f"*{info.file_ending}")):
            case_id = path.name[: -len(info.file_ending)]
            if not path.name.startswith(".") and case_id not in by_case:
                problems.append(f"{path}: label has no image in imagesTr (expected {case_id}_0000{info.file_ending})")
    if not by_case:
        problems.append(f"{images_dir}: no training images ending in {info.file_ending}")
    if info.num_training != len(by_case):
        problems.append(
            f"{root / 'dataset.json'}: numTraining is {info.num_training} but imagesTr holds {len(by_case)} case(s)"
        )
    return problems
