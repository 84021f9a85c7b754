"""TopCoW (Circle of Willis, MICCAI 2023/2024 challenge) to a vessel_seg raw dataset.

Two published release layouts are recognised (file names ``topcow_{ct,mr}_[whole_|roi_]NNN``)::

    TopCoW2024_Data_Release/                  topcow_batch-1_40pairMRCT_30062023/  (2023)
        imagesTr/topcow_ct_001_0000.nii.gz        imagesTr/topcow_ct_whole_001_0000.nii.gz
        cow_seg_labelsTr/topcow_ct_001.nii.gz     mul_labelsTr/topcow_ct_whole_001.nii.gz
        roi_loc_labelsTr/ ...                     bin_labelsTr/topcow_ct_whole_001.nii.gz

A plain ``labelsTr/`` beside ``imagesTr/`` is accepted as well. Multi-class labels follow the
challenge's class list (TopCoW evaluation code, ``MUL_CLASS_LABEL_MAP``): 1 BA, 2 R-PCA,
3 L-PCA, 4 R-ICA, 5 R-MCA, 6 L-ICA, 7 L-MCA, 8 R-Pcom, 9 L-Pcom, 10 Acom, 11 R-ACA, 12 L-ACA,
15 3rd-A2 (13 and 14 unused). Binarised output (default) sets every CoW class to 1; multi-class
output keeps ids 1..12 and renumbers 15 (3rd-A2) to 13 so that label values stay consecutive,
as nnU-Net's dataset check requires; ``dataset.json`` records that renumbering.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from vessel_seg.dataset_conversion.common import (
    DatasetSpec,
    LabelLookup,
    SourceCase,
    binarise,
    require_folder,
    visible_files,
    write_raw_dataset,
)
from vessel_seg.errors import DatasetError

log = logging.getLogger(__name__)

COW_CLASSES = {
    1: "BA", 2: "R-PCA", 3: "L-PCA", 4: "R-ICA", 5: "R-MCA", 6: "L-ICA", 7: "L-MCA",
    8: "R-Pcom", 9: "L-Pcom", 10: "Acom", 11: "R-ACA", 12: "L-ACA", 15: "3rd-A2",
}
# Challenge class id -> consecutive output id (only 3rd-A2 moves).
MULTICLASS_MAPPING = {0: 0, **{cid: (cid if cid <= 12 else 13) for cid in COW_CLASSES}}
# Label folders in order of preference; the first two hold multi-class labels.
LABEL_FOLDERS = ("cow_seg_labelsTr", "mul_labelsTr", "labelsTr", "bin_labelsTr")
IMAGE_RE = re.compile(r"^topcow_(?P<modality>ct|mr)_(?:(?P<region>whole|roi)_)?(?P<number>\d+)_0000\.nii\.gz$")
CHANNEL_NAMES = {"ct": "CTA", "mr": "MRA"}


def find_release_folder(source: str | Path) -> Path:
    """The folder holding ``imagesTr``: ``source`` itself or its only sub-folder that has one."""
    source = Path(source)
    if (source / "imagesTr").is_dir():
        return source
    if source.is_dir():
        inner = [p for p in source.iterdir() if p.is_dir() and (p / "imagesTr").is_dir()]
        if len(inner) == 1:
            return inner[0]
    raise DatasetError(
        f"{source}: no imagesTr/ folder found; point to the unpacked TopCoW release "
        "(e.g. TopCoW2024_Data_Release)"
    )


def _label_folder(release: Path, multiclass: bool) -> Path:
    for name in LABEL_FOLDERS:
        folder = release / name
        if folder.is_dir():
            if multiclass and name == "bin_labelsTr":
                raise DatasetError(
                    f"{release}: only binary labels (bin_labelsTr/) found; multi-class output needs "
                    "cow_seg_labelsTr/ or mul_labelsTr/"
                )
            return folder
    raise DatasetError(f"{release}: no label folder found; expected one of {', '.join(LABEL_FOLDERS)}")


def list_topcow_cases(release: str | Path, modality: str, multiclass: bool = False, region: str = "whole") -> list[SourceCase]:
    """Labelled cases of one modality in a TopCoW release folder.

    Parameters
    ----------
    release : folder holding ``imagesTr`` and a label folder.
    modality : ``"ct"`` or ``"mr"``; cases of the other modality are skipped.
    multiclass : require multi-class labels (refuse a release with binary labels only).
    region : ``"whole"`` (full volumes; the 2024 release has only these) or ``"roi"`` (the 2023
        release's Circle-of-Willis crops).
    """
    if modality not in CHANNEL_NAMES:
        raise DatasetError(f"modality {modality!r} is not supported: use 'ct' or 'mr'")
    if region not in ("whole", "roi"):
        raise DatasetError(f"region {region!r} is not supported: use 'whole' or 'roi'")
    release = Path(release)
    images = require_folder(release / "imagesTr", "imagesTr/ with topcow_{ct,mr}_NNN_0000.nii.gz")
    labels = _label_folder(release, multiclass)
    cases, skipped = [], 0
    for image in visible_files(images):
        match = IMAGE_RE.match(image.name)
        if not match or match["modality"] != modality or (match["region"] or "whole") != region:
            skipped += 1
            continue
        case_id = image.name[: -len("_0000.nii.gz")]
        label = labels / f"{case_id}.nii.gz"
        if not label.is_file():
            raise DatasetError(f"{label}: label of {image.name} is missing")
        cases.append(SourceCase(case_id, image, label))
    if not cases:
        raise DatasetError(
            f"{images}: no {region} {modality.upper()} images named topcow_{modality}_[{region}_]NNN_0000.nii.gz "
            f"({skipped} other files); check --modality"
        )
    log.info("TopCoW: %d %s cases, %d files of other modality/region skipped", len(cases), modality, skipped)
    return cases


def convert_topcow(
    source: str | Path,
    dataset_id: int,
    *,
    modality: str = "ct",
    multiclass: bool = False,
    region: str = "whole",
    name: str | None = None,
    overwrite: bool = False,
    workers: int = 1,
) -> Path:
    """Convert one modality of a TopCoW release into ``VS_RAW/DatasetNNN_<name>``; return that folder.

    Parameters
    ----------
    source : unpacked release folder (or its parent).
    dataset_id : output dataset id (0..999).
    modality : ``"ct"`` (CTA) or ``"mr"`` (TOF-MRA).
    multiclass : keep the CoW classes (3rd-A2 renumbered 15 -> 13); default binarises all to 1.
    region : ``"whole"`` volumes or the 2023 release's ``"roi"`` crops.
    name : short dataset name (default ``TopCoW_CT`` / ``TopCoW_MR``).
    overwrite : replace an existing output dataset of the same name.
    workers : cases converted in parallel (threads).
    """
    release = find_release_folder(source)
    cases = list_topcow_cases(release, modality, multiclass, region)
    if multiclass:
        transform = LabelLookup(MULTICLASS_MAPPING, "TopCoW")
        labels = {"background": 0, **{COW_CLASSES[cid]: MULTICLASS_MAPPING[cid] for cid in COW_CLASSES}}
    else:
        transform, labels = binarise, {"background": 0, "vessel": 1}
    extra = {
        "converted_from": str(release.resolve()),
        "source_dataset": f"TopCoW {modality.upper()} ({region})",
        "reference": "Yang, Musio et al., Benchmarking the CoW with the TopCoW Challenge, arXiv:2312.17670",
    }
    if multiclass:
        extra["source_label_values"] = {str(cid): MULTICLASS_MAPPING[cid] for cid in COW_CLASSES}
    spec = DatasetSpec(
        dataset_id=dataset_id,
        short_name=name or f"TopCoW_{modality.upper()}",
        channel_name=CHANNEL_NAMES[modality],
        labels=labels,
        description=f"TopCoW Circle of Willis, {modality.upper()}, " + ("multi-class" if multiclass else "binary vessel"),
        extra=extra,
    )
    return write_raw_dataset(cases, spec, transform, overwrite=overwrite, workers=workers)
