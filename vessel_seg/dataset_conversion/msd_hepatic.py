"""Medical Segmentation Decathlon ``Task08_HepaticVessel`` to a vessel_seg raw dataset.

The decathlon release (Antonelli et al., "The Medical Segmentation Decathlon", Nat. Commun. 2022)
unpacks to::

    Task08_HepaticVessel/
        dataset.json                        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "Vessel", "2": "Tumour"}
        imagesTr/hepaticvessel_NNN.nii.gz   303 portal-venous CT volumes
        labelsTr/hepaticvessel_NNN.nii.gz   0 background, 1 vessel, 2 tumour
        imagesTs/hepaticvessel_NNN.nii.gz   140 unlabelled test volumes

Images are copied byte for byte under their ``_0000`` channel name; labels are rewritten with
the tumour either folded into background (vessel-only task, the default) or kept as label 2.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vessel_seg.dataset_conversion.common import (
    DatasetSpec,
    LabelLookup,
    SourceCase,
    require_folder,
    visible_files,
    write_raw_dataset,
)
from vessel_seg.errors import DatasetError

log = logging.getLogger(__name__)

TASK_FOLDER = "Task08_HepaticVessel"
SOURCE_LABELS = {0: "background", 1: "vessel", 2: "tumour"}
ENDING = ".nii.gz"


def find_task_folder(source: str | Path) -> Path:
    """The ``Task08_HepaticVessel`` folder: ``source`` itself or its child of that name."""
    source = Path(source)
    if (source / "dataset.json").is_file() or (source / "imagesTr").is_dir():
        return source
    if (source / TASK_FOLDER).is_dir():
        return source / TASK_FOLDER
    raise DatasetError(
        f"{source}: not an MSD {TASK_FOLDER} folder (no dataset.json, imagesTr/ or {TASK_FOLDER}/ inside); "
        "point to the unpacked decathlon task"
    )


def _check_dataset_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: dataset.json of the decathlon task is missing; is the download complete?")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    labels = meta.get("labels", {}) if isinstance(meta, dict) else {}
    if "vessel" not in str(labels.get("1", "")).lower():
        raise DatasetError(
            f"{path}: label 1 is {labels.get('1')!r}, not 'Vessel'; this is not {TASK_FOLDER}"
        )
    return meta


def _listed_files(meta: dict, key: str) -> set[str]:
    """File names that the decathlon ``dataset.json`` lists under ``training``/``test``."""
    names = set()
    for entry in meta.get(key, []) or []:
        path = entry.get("image") if isinstance(entry, dict) else entry
        if isinstance(path, str):
            names.add(Path(path).name)
    return names


def list_msd_hepatic_cases(task_dir: str | Path, include_test: bool = True) -> list[SourceCase]:
    """Training (and test) cases of an unpacked ``Task08_HepaticVessel`` folder.

    Raises :class:`DatasetError` naming the first missing folder, label file or listed image.
    """
    task_dir = Path(task_dir)
    meta = _check_dataset_json(task_dir / "dataset.json")
    images_tr = require_folder(task_dir / "imagesTr", "imagesTr/ with hepaticvessel_NNN.nii.gz")
    labels_tr = require_folder(task_dir / "labelsTr", "labelsTr/ with hepaticvessel_NNN.nii.gz")
    on_disk = {p.name: p for p in visible_files(images_tr) if p.name.endswith(ENDING)}
    absent = sorted(_listed_files(meta, "training") - set(on_disk))
    if absent:
        raise DatasetError(f"{images_tr / absent[0]}: listed in dataset.json but missing ({len(absent)} missing in all)")
    cases = []
    for name, image in sorted(on_disk.items()):
        label = labels_tr / name
        if not label.is_file():
            raise DatasetError(f"{label}: label of training image {name} is missing")
        cases.append(SourceCase(name[: -len(ENDING)], image, label))
    images_ts = task_dir / "imagesTs"
    if include_test and images_ts.is_dir():
        for image in visible_files(images_ts):
            if image.name.endswith(ENDING):
                cases.append(SourceCase(image.name[: -len(ENDING)], image, None, test=True))
    return cases


def convert_msd_hepatic(
    source: str | Path,
    dataset_id: int,
    *,
    with_tumour: bool = False,
    name: str = "HepaticVessel",
    include_test: bool = True,
    overwrite: bool = False,
    workers: int = 1,
) -> Path:
    """Convert MSD ``Task08_HepaticVessel`` into ``VS_RAW/DatasetNNN_<name>`` and return that folder.

    Parameters
    ----------
    source : the unpacked task folder (or its parent).
    dataset_id : output dataset id (0..999).
    with_tumour : keep the tumour as label 2 (multi-label); by default it becomes background and
        the dataset holds the vessel label only.
    name : short name of the output dataset.
    include_test : also copy the unlabelled ``imagesTs`` volumes.
    overwrite : replace an existing output dataset of the same name.
    workers : cases converted in parallel (threads).
    """
    task_dir = find_task_folder(source)
    cases = list_msd_hepatic_cases(task_dir, include_test)
    if with_tumour:
        mapping, labels = {0: 0, 1: 1, 2: 2}, {"background": 0, "vessel": 1, "tumour": 2}
    else:
        mapping, labels = {0: 0, 1: 1, 2: 0}, {"background": 0, "vessel": 1}
    spec = DatasetSpec(
        dataset_id=dataset_id,
        short_name=name,
        channel_name="CT",
        labels=labels,
        description="MSD Task08 hepatic vessel" + (" and tumour" if with_tumour else " (tumour folded into background)"),
        extra={
            "converted_from": str(task_dir.resolve()),
            "source_dataset": "Medical Segmentation Decathlon Task08_HepaticVessel",
            "source_label_values": {str(k): v for k, v in SOURCE_LABELS.items()},
            "licence": "CC-BY-SA 4.0 (medicaldecathlon.com)",
        },
    )
    return write_raw_dataset(cases, spec, LabelLookup(mapping, TASK_FOLDER), overwrite=overwrite, workers=workers)
