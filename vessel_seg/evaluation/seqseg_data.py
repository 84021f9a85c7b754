"""A raw dataset written as SeqSeg's training input, so SeqSeg's own commands can train its local model on it.

SeqSeg (``seqseg train prepare --data-dir DIR``) samples patches along centrelines with
vascular-segment-sampler and reads ``DIR/images/CASE.ext``, ``DIR/truths/CASE.ext`` and
``DIR/centerlines/CASE.vtp`` (polylines with a ``radius`` point array, VMTK's alternative name the
sampler accepts). :func:`write_seqseg_training_data` writes that layout from a raw dataset in nnU-Net's
layout: images and labels are copied unchanged (same geometry), and each centreline is extracted from
the label with :func:`vessel_seg.inference.centerline.extract_centerline`, in physical millimetres
(ITK/LPS), the frame in which SeqSeg reads the images. Use ``--unit mm`` and the sampler's
``default_mm`` configuration with it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import DatasetError
from vessel_seg.imageio import read_label
from vessel_seg.inference.centerline import centerline_to_vtp, extract_centerline
from vessel_seg.inference.surface_mesh import write_bytes_atomic

log = logging.getLogger(__name__)


def write_seqseg_training_data(
    raw_dir: Path, out_dir: Path, split: str = "Tr", max_cases: int | None = None
) -> list[str]:
    """Write ``raw_dir``'s ``images{split}``/``labels{split}`` cases (the first ``max_cases`` in name order, or
    all) into SeqSeg's layout under ``out_dir``.

    Returns the case ids written; cases already complete in ``out_dir`` are kept (a rerun resumes).
    Raises :class:`DatasetError` for a dataset without labelled cases or with several channels.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    info = DatasetInfo.load(raw_dir / "dataset.json")
    if info.num_channels != 1:
        raise DatasetError(f"{raw_dir}: SeqSeg takes one image channel, this dataset has {info.num_channels}")
    labels = sorted((raw_dir / f"labels{split}").glob(f"*{info.file_ending}"))[:max_cases]
    if not labels:
        raise DatasetError(f"{raw_dir / f'labels{split}'}: no labelled cases to give SeqSeg")
    for sub in ("images", "truths", "centerlines"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    cases = []
    for label_path in labels:
        case = label_path.name[: -len(info.file_ending)]
        vtp = out_dir / "centerlines" / f"{case}.vtp"
        if not vtp.is_file():  # written last: its presence marks a complete case
            image = raw_dir / f"images{split}" / f"{case}_0000{info.file_ending}"
            shutil.copyfile(image, out_dir / "images" / f"{case}{info.file_ending}")
            shutil.copyfile(label_path, out_dir / "truths" / f"{case}{info.file_ending}")
            label, geometry = read_label(label_path)
            graph = extract_centerline(label > 0, geometry)
            if not graph.branches:
                raise DatasetError(f"{label_path}: no centreline in this label (empty or a few voxels); remove the case")
            write_bytes_atomic(vtp, centerline_to_vtp(graph))
        cases.append(case)
    log.info("SeqSeg training data: %d case(s) in %s", len(cases), out_dir)
    return cases
