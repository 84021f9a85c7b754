"""Shared machinery of the dataset converters: label mapping, case writing and the staged dataset folder.

Every converter turns a downloaded dataset into the raw layout of :mod:`vessel_seg.dataset`
(nnU-Net v2's): it lists :class:`SourceCase` objects, picks a label transform and hands both to
:func:`write_raw_dataset`. That function writes into a hidden staging folder next to the target
and renames it into place only when every case succeeded, so an interrupted conversion never
leaves a half-written dataset behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vessel_seg.atomic import write_atomic
from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import DatasetError
from vessel_seg.imageio import ImageGeometry, read_array, read_geometry, read_label, write_image
from vessel_seg.paths import DATASET_NAME_RE, dataset_name, raw_root

log = logging.getLogger(__name__)

OUTPUT_ENDING = ".nii.gz"
LabelTransform = Callable[[np.ndarray, Path], np.ndarray]


@dataclass(frozen=True)
class SourceCase:
    """One case of a source dataset.

    Attributes:
        case_id: identifier in the output (file names become ``<case_id>_0000.nii.gz`` and ``<case_id>.nii.gz``).
        image: source image file (single channel).
        label: source label file, or ``None`` for an unlabelled test case.
        test: write to ``imagesTs``/``labelsTs`` instead of ``imagesTr``/``labelsTr``.
    """

    case_id: str
    image: Path
    label: Path | None = None
    test: bool = False


@dataclass
class DatasetSpec:
    """What goes into ``dataset.json`` besides the case count.

    ``labels`` maps names to the label values written (after the label transform); it may be a
    callable returning that mapping, called once every case is written (for converters that learn
    the label values while converting).
    """

    dataset_id: int
    short_name: str
    channel_name: str
    labels: dict[str, int] | Callable[[], dict[str, int]]
    description: str = ""
    extra: dict = field(default_factory=dict)


def present_values(label: np.ndarray, chunk: int = 1 << 24) -> list[int]:
    """Sorted label values that occur in a non-negative integer array.

    Counted in chunks of ``chunk`` voxels because ``np.bincount`` makes a 64-bit copy of its input,
    which for a whole CT volume would cost gigabytes.
    """
    flat = label.reshape(-1)
    seen = np.zeros(1, bool)
    for start in range(0, flat.size, chunk):
        counts = np.bincount(flat[start : start + chunk])
        if counts.size > seen.size:
            seen = np.pad(seen, (0, counts.size - seen.size))
        seen[: counts.size] |= counts > 0
    return [int(v) for v in np.flatnonzero(seen)]


class LabelLookup:
    """Map source label values to output values through a table; unknown values are an error.

    Parameters
    ----------
    mapping : source value -> output value (0 for background). Values not in the table raise
        :class:`DatasetError` naming the file, since they mean the source is not the dataset the
        converter expects.
    dataset : name used in the error message.
    """

    def __init__(self, mapping: Mapping[int, int], dataset: str):
        self.mapping = {int(k): int(v) for k, v in mapping.items()}
        self.dataset = dataset
        size = max(self.mapping) + 1
        self._table = np.zeros(size, np.uint8)
        for source, target in self.mapping.items():
            self._table[source] = target

    def __call__(self, label: np.ndarray, path: Path) -> np.ndarray:
        unknown = [v for v in present_values(label) if v not in self.mapping]
        if unknown:
            expected = ", ".join(str(v) for v in sorted(self.mapping))
            raise DatasetError(
                f"{path}: label value {unknown[0]} is not a {self.dataset} label ({expected}); "
                "is this the right dataset folder?"
            )
        return self._table[label]


def binarise(label: np.ndarray, path: Path) -> np.ndarray:
    """Every non-zero label value becomes 1 (vessel), zero stays background."""
    return (label != 0).astype(np.uint8)


class VolumeSource:
    """How a converter reads its source files; the default reads what :mod:`vessel_seg.imageio` reads.

    Subclasses override these methods for formats the project's reader does not know (e.g. VTK
    ``.vti``) or to rescale geometry.
    """

    def can_copy(self, path: Path) -> bool:
        """True when the file may be copied byte for byte into the output (already ``.nii.gz``)."""
        return path.name.lower().endswith(OUTPUT_ENDING)

    def geometry(self, path: Path) -> ImageGeometry:
        return read_geometry(path)

    def image(self, path: Path) -> tuple[np.ndarray, ImageGeometry]:
        return read_array(path)

    def label(self, path: Path) -> tuple[np.ndarray, ImageGeometry]:
        return read_label(path)


def _copy_file(source: Path, target: Path) -> None:
    """Byte copy through a temporary sibling, so a reader never sees a partial file."""
    try:
        write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))
    except OSError as exc:
        raise DatasetError(f"{target}: cannot copy {source} ({exc}); check space and permissions") from exc


def convert_case(case: SourceCase, out_dir: Path, transform: LabelTransform, source: VolumeSource) -> None:
    """Write one case (image with the ``_0000`` suffix, label mapped by ``transform``) below ``out_dir``.

    The image is copied byte for byte when ``source.can_copy`` allows it, otherwise read and
    rewritten. A label whose geometry differs from its image's raises :class:`DatasetError`.
    """
    split = "Ts" if case.test else "Tr"
    image_out = out_dir / f"images{split}" / f"{case.case_id}_0000{OUTPUT_ENDING}"
    if source.can_copy(case.image):
        geometry = source.geometry(case.image)
        _copy_file(case.image, image_out)
    else:
        data, geometry = source.image(case.image)
        write_image(data, geometry, image_out)
    if case.label is None:
        return
    label, label_geometry = source.label(case.label)
    problem = geometry.mismatch(label_geometry)
    if problem is not None:
        raise DatasetError(
            f"{case.label}: label geometry differs from image {case.image.name} ({problem}); "
            "fix or remove this case"
        )
    mapped = transform(label, case.label)
    if mapped.size and int(mapped.max()) > 255:
        raise DatasetError(f"{case.label}: label values above 255 are not supported (labels are stored as uint8)")
    write_image(mapped.astype(np.uint8, copy=False), label_geometry, out_dir / f"labels{split}" / f"{case.case_id}{OUTPUT_ENDING}")


def target_folder(dataset_id: int, short_name: str, overwrite: bool) -> Path:
    """``VS_RAW/DatasetNNN_Name``, after checking that it may be written.

    Raises :class:`DatasetError` when it exists and ``overwrite`` is false, or when another
    dataset already uses the same id (ids must stay unique for lookup by number).
    """
    name = dataset_name(dataset_id, short_name)
    root = raw_root()
    target = root / name
    if root.is_dir():
        for entry in root.iterdir():
            match = DATASET_NAME_RE.match(entry.name)
            if match and entry.name != name and int(match.group(1)) == dataset_id:
                raise DatasetError(
                    f"{entry}: dataset id {dataset_id} is already used by {entry.name}; choose another id with -d"
                )
    if target.exists() and not overwrite:
        raise DatasetError(f"{target}: dataset already exists; pass --overwrite to replace it")
    return target


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A hidden staging folder beside ``target`` that replaces ``target`` when the block succeeds.

    On an exception the staging folder is removed and ``target`` (if any) is left untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _convert_all(
    cases: Sequence[SourceCase], out_dir: Path, transform: LabelTransform, source: VolumeSource, workers: int
) -> None:
    """Convert every case, in ``workers`` threads; the first failure cancels the cases not yet started."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(convert_case, case, out_dir, transform, source) for case in cases]
        for done, future in enumerate(futures, 1):
            future.result()
            if done % 25 == 0 or done == len(cases):
                log.info("%d/%d cases written", done, len(cases))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_raw_dataset(
    cases: Sequence[SourceCase],
    spec: DatasetSpec,
    transform: LabelTransform,
    *,
    overwrite: bool = False,
    workers: int = 1,
    source: VolumeSource | None = None,
) -> Path:
    """Write ``cases`` as a raw dataset under ``VS_RAW`` and return its folder.

    Parameters
    ----------
    cases : cases to write; those with ``test=True`` go to ``imagesTs``/``labelsTs``.
    spec : dataset id, name, channel name and label names for ``dataset.json``.
    transform : maps each source label array to output label values.
    overwrite : replace an existing dataset of the same name.
    workers : threads converting cases in parallel (compression and file I/O release the GIL).
    source : how source files are read (default: :class:`VolumeSource`).
    """
    training = [c for c in cases if not c.test]
    if not training:
        raise DatasetError(f"no labelled training cases found for {spec.short_name}; check the source folder")
    missing = [c for c in training if c.label is None]
    if missing:
        raise DatasetError(f"{missing[0].image}: training case {missing[0].case_id!r} has no label file")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"case id {duplicate!r} occurs twice in the source; file names must be unique")
    target = target_folder(spec.dataset_id, spec.short_name, overwrite)
    source = source or VolumeSource()
    tests = [c for c in cases if c.test]
    with staged_folder(target) as staging:
        folders = ["imagesTr", "labelsTr"]
        if tests:
            folders.append("imagesTs")
        if any(c.label is not None for c in tests):
            folders.append("labelsTs")
        for folder in folders:
            (staging / folder).mkdir()
        log.info("converting %d training and %d test cases into %s", len(training), len(tests), target)
        _convert_all(cases, staging, transform, source, workers)
        extra = dict(spec.extra)
        if tests:
            extra["numTest"] = len(tests)
        DatasetInfo(
            channel_names={"0": spec.channel_name},
            labels=dict(spec.labels() if callable(spec.labels) else spec.labels),
            num_training=len(training),
            file_ending=OUTPUT_ENDING,
            name=target.name,
            description=spec.description,
            extra=extra,
        ).save(staging / "dataset.json")
    return target


def require_folder(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a :class:`DatasetError` saying what was expected there."""
    if not path.is_dir():
        raise DatasetError(f"{path}: folder not found; expected {what}")
    return path


def visible_files(folder: Path) -> list[Path]:
    """Regular files of ``folder``, sorted, without hidden ones (e.g. macOS ``._`` copies in archives)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
