"""A folder of images plus a folder of masks, matched by file name, to a raw dataset.

``images/liver_03.nrrd`` pairs with ``masks/liver_03.nii.gz`` (any extension that
:mod:`vessel_seg.imageio` reads, on either side); an image named ``liver_03_0000.*`` also pairs
with ``liver_03.*``. Every file must find its partner, and each mask must share its image's
geometry. Geometry is carried over unchanged; ``.nii.gz`` images are copied byte for byte.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from vessel_seg.dataset_conversion.common import (
    DatasetSpec,
    SourceCase,
    binarise,
    present_values,
    require_folder,
    write_raw_dataset,
)
from vessel_seg.errors import DatasetError
from vessel_seg.imageio import image_files

log = logging.getLogger(__name__)


def match_image_mask_pairs(images_dir: str | Path, masks_dir: str | Path) -> list[SourceCase]:
    """Pair images with masks by file stem; an unmatched file on either side is a :class:`DatasetError`."""
    images = image_files(require_folder(Path(images_dir), "a folder of images"))
    masks = image_files(require_folder(Path(masks_dir), "a folder of masks"))
    if not images:
        raise DatasetError(f"{images_dir}: no image files found")
    cases, used = [], set()
    for stem, image in sorted(images.items()):
        case_id = stem if stem in masks or not stem.endswith("_0000") else stem[:-5]
        if case_id not in masks:
            raise DatasetError(f"{image}: no mask named {case_id}.* in {masks_dir}")
        used.add(case_id)
        cases.append(SourceCase(case_id, image, masks[case_id]))
    extra = sorted(set(masks) - used)
    if extra:
        raise DatasetError(f"{masks[extra[0]]}: no image named {extra[0]}.* in {images_dir} ({len(extra)} unmatched masks)")
    return cases


class _ValueRecorder:
    """Keeps label values as they are and records which ones occur (thread-safe)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, label: np.ndarray, path: Path) -> np.ndarray:
        values = present_values(label)
        with self._lock:
            self.seen.update(values)
        return label

    def labels(self) -> dict[str, int]:
        """``vessel`` for a binary dataset, otherwise ``label_N`` for every value 1..max seen."""
        top = max(self.seen, default=0)
        if top <= 1:
            return {"background": 0, "vessel": 1}
        return {"background": 0, **{f"label_{v}": v for v in range(1, top + 1)}}


def convert_folder(
    images_dir: str | Path,
    masks_dir: str | Path,
    dataset_id: int,
    name: str,
    *,
    channel_name: str = "image",
    binarise_masks: bool = False,
    overwrite: bool = False,
    workers: int = 1,
) -> Path:
    """Convert an image folder and a mask folder into ``VS_RAW/DatasetNNN_<name>``; return that folder.

    Parameters
    ----------
    images_dir, masks_dir : folders whose files pair up by stem.
    dataset_id : output dataset id (0..999).
    name : short name of the output dataset.
    channel_name : channel name in ``dataset.json``; ``CT`` (or ``CTA``) selects CT normalisation,
        anything else per-image z-scoring.
    binarise_masks : turn every non-zero mask value into 1 (vessel). Otherwise values are kept and
        declared as ``label_1 .. label_max`` (``vessel`` when the masks are binary).
    overwrite : replace an existing output dataset of the same name.
    workers : cases converted in parallel (threads).
    """
    cases = match_image_mask_pairs(images_dir, masks_dir)
    if binarise_masks:
        transform, labels = binarise, {"background": 0, "vessel": 1}
    else:
        recorder = _ValueRecorder()
        transform, labels = recorder, recorder.labels
    spec = DatasetSpec(
        dataset_id=dataset_id,
        short_name=name,
        channel_name=channel_name,
        labels=labels,
        description=f"converted from {Path(images_dir).name}/ and {Path(masks_dir).name}/",
        extra={"converted_from": {"images": str(Path(images_dir).resolve()), "masks": str(Path(masks_dir).resolve())}},
    )
    return write_raw_dataset(cases, spec, transform, overwrite=overwrite, workers=workers)
