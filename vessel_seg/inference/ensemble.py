"""Saved class probabilities and ensembles of them (``vs_ensemble``).

File format (our choice): ``CASE.npz`` holds the probabilities already **restored to the input's
original geometry**, so files of different configurations (different preprocessed spacings) share
one grid and ensembling is a plain voxel-wise mean. Keys:

``probabilities``
    float16 ``(K, Z, Y, X)``: softmax probability of each class, classes in ascending label value.
``label_values``
    int64 ``(K,)``: the label value of each class (class 0 = background 0).
``geometry``
    JSON text of :class:`ImageGeometry` (origin, spacing, direction, shape).
``file_ending``
    the extension the mask is written with (the input's, ``.nii.gz`` for DICOM input).

float16 keeps files and memory at half the size of float32; its resolution (~5e-4 near 0.5) is far
below any meaningful probability difference.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vessel_seg.atomic import atomic_open
from vessel_seg.errors import ImageReadError, VesselSegError
from vessel_seg.imageio import ImageGeometry, write_image

log = logging.getLogger(__name__)

PROBABILITY_SUFFIX = ".npz"


@dataclass
class SavedProbabilities:
    """Contents of one probability file."""

    probabilities: np.ndarray
    label_values: list[int]
    geometry: ImageGeometry
    file_ending: str


def save_probabilities(
    path: str | Path, probabilities: np.ndarray, label_values: Sequence[int], geometry: ImageGeometry, file_ending: str
) -> Path:
    """Write ``CASE.npz`` (see the module docstring) atomically: a temporary file, then a rename."""
    path = Path(path)
    if probabilities.shape[0] != len(label_values) or tuple(probabilities.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"probabilities {probabilities.shape} do not match {len(label_values)} classes x {geometry.shape}")
    with atomic_open(path) as handle:  # a full disk: OutputWriteError naming the path, no partial file
        np.savez_compressed(
            handle,
            probabilities=probabilities.astype(np.float16, copy=False),
            label_values=np.asarray(label_values, dtype=np.int64),
            geometry=np.asarray(json.dumps(geometry.to_dict())),
            file_ending=np.asarray(file_ending),
        )
    return path


# What a damaged or foreign .npz raises on the way: truncated or bad-CRC archives, bad JSON, wrong types.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile, zlib.error)


def _unreadable(path: Path, exc: BaseException) -> ImageReadError:
    return ImageReadError(f"{path}: not a readable vessel_seg probability file ({exc}); write it again with "
                          "vs_predict --save-probabilities")


def _metadata(data, path: Path) -> tuple[list[int], ImageGeometry, str]:
    labels = [int(v) for v in data["label_values"]]
    geometry = ImageGeometry.from_dict(json.loads(str(data["geometry"])))
    ending = str(data["file_ending"])
    if not labels or len(set(labels)) != len(labels) or not ending.startswith("."):
        raise ValueError(f"label values {labels} / file ending {ending!r} are not usable")
    return labels, geometry, ending


def check_probability_file(path: str | Path) -> SavedProbabilities:
    """Verify a probability file without keeping its voxels: every CRC, labels, geometry and the array's shape.

    Returns a :class:`SavedProbabilities` whose ``probabilities`` is an empty placeholder; raises
    :class:`ImageReadError` naming the file. Lets ``vs_ensemble`` refuse a bad input before it
    writes the first mask.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # decompresses each member once, checking its CRC
            if bad is not None:
                raise ValueError(f"member {bad} is corrupt")
            with archive.open("probabilities.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)  # the header only, no voxels
        with np.load(path, allow_pickle=False) as data:
            labels, geometry, ending = _metadata(data, path)
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from exc
    if tuple(shape) != (len(labels), *geometry.shape) or np.dtype(dtype).kind != "f":
        raise ImageReadError(f"{path}: probabilities {tuple(shape)} ({dtype}) do not match the stored geometry {geometry.shape}")
    return SavedProbabilities(np.empty((0,), np.float16), labels, geometry, ending)


def load_probabilities(path: str | Path) -> SavedProbabilities:
    """Read a file written by :func:`save_probabilities` (no pickles are loaded)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            probs = data["probabilities"]
            labels, geometry, ending = _metadata(data, path)
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from exc
    if probs.shape != (len(labels), *geometry.shape):
        raise ImageReadError(f"{path}: probabilities {probs.shape} do not match the stored geometry {geometry.shape}")
    return SavedProbabilities(probs, labels, geometry, ending)


def _check_agreement(first: SavedProbabilities, other: SavedProbabilities, first_path: Path, path: Path) -> None:
    if other.label_values != first.label_values:
        raise VesselSegError(f"{path}: label values {other.label_values} differ from {first_path} ({first.label_values})")
    if (problem := first.geometry.mismatch(other.geometry)) is not None:
        raise VesselSegError(f"{path}: geometry differs from {first_path} ({problem}); ensemble predictions of the same images")


def check_case_files(paths: Sequence[Path]) -> None:
    """Every probability file of one case is intact and agrees with the first (labels, geometry)."""
    first = check_probability_file(paths[0])
    for path in paths[1:]:
        _check_agreement(first, check_probability_file(path), paths[0], path)


def average_probabilities(paths: Sequence[Path]) -> SavedProbabilities:
    """Voxel-wise mean of probability files of one case; they must agree on labels and geometry."""
    first = load_probabilities(paths[0])
    total = first.probabilities.astype(np.float32)
    for path in paths[1:]:
        other = load_probabilities(path)
        _check_agreement(first, other, paths[0], path)
        total += other.probabilities
    total /= len(paths)
    return SavedProbabilities(total, first.label_values, first.geometry, first.file_ending)


def probabilities_to_labels(probabilities: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Arg-max over classes mapped to label values (uint8, int16 when a value exceeds 255)."""
    lookup = np.asarray(label_values, dtype=np.int16 if max(label_values) > 255 else np.uint8)
    return lookup[np.argmax(probabilities, axis=0)]


def ensemble_folders(
    input_dirs: Sequence[str | Path], output_dir: str | Path, save_probabilities_too: bool = False, overwrite: bool = True,
) -> list[str]:
    """Average the ``CASE.npz`` files of several prediction folders and write the masks.

    Every folder must hold the same cases. Writes ``output_dir/CASE<file_ending>`` (and the mean
    ``CASE.npz`` with ``save_probabilities_too``); returns the case ids written.
    """
    dirs = [Path(d) for d in input_dirs]
    if len(dirs) < 2:
        raise VesselSegError("give at least two folders of probabilities to ensemble (-i DIR1 DIR2 ...)")
    case_sets = []
    for folder in dirs:
        if not folder.is_dir():
            raise VesselSegError(f"{folder}: folder not found")
        cases = {p.name[: -len(PROBABILITY_SUFFIX)] for p in folder.glob(f"*{PROBABILITY_SUFFIX}") if not p.name.startswith(".")}
        if not cases:
            raise VesselSegError(f"{folder}: no probability files (*.npz); predict with vs_predict --save-probabilities")
        case_sets.append(cases)
    for folder, cases in zip(dirs[1:], case_sets[1:], strict=True):
        if cases != case_sets[0]:
            diff = sorted(cases ^ case_sets[0])
            raise VesselSegError(f"{folder}: holds different cases than {dirs[0]} (e.g. {diff[0]}); ensemble the same cases")
    for case_id in sorted(case_sets[0]):  # every input checked before the first mask is written
        check_case_files([d / f"{case_id}{PROBABILITY_SUFFIX}" for d in dirs])
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for case_id in sorted(case_sets[0]):
        mean = average_probabilities([d / f"{case_id}{PROBABILITY_SUFFIX}" for d in dirs])
        target = output_dir / f"{case_id}{mean.file_ending}"
        if target.exists() and not overwrite:
            continue
        if save_probabilities_too:
            save_probabilities(
                output_dir / f"{case_id}{PROBABILITY_SUFFIX}", mean.probabilities, mean.label_values, mean.geometry,
                mean.file_ending,
            )
        write_image(probabilities_to_labels(mean.probabilities, mean.label_values), mean.geometry, target)
        written.append(case_id)
        log.info("%s: ensembled %d predictions", case_id, len(dirs))
    return written
