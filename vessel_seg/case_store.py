"""On-disk store of preprocessed cases: fast random patch access through memory maps.

One folder per configuration (``VS_PREPROCESSED/DatasetNNN_Name/<data_identifier>/``) holding, per
case, ``CASE.npy`` (float32 ``(C, Z, Y, X)``), ``CASE_seg.npy`` (uint8 ``(Z, Y, X)``, absent for
unlabelled cases) and ``CASE.json`` (:class:`CaseProperties`). The properties file is written last,
so a case counts as present only once all of its arrays are complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vessel_seg.atomic import atomic_open
from vessel_seg.errors import DatasetError
from vessel_seg.imageio.geometry import ImageGeometry
from vessel_seg.serialization import from_dict, read_json, write_json_atomic


@dataclass
class CaseProperties:
    """What it takes to map a preprocessed case back to its original image.

    ``crop_bbox`` is ``[[start, stop], ...]`` per axis of the original array (stop exclusive);
    ``class_locations`` maps a label value (as a string) to sampled ``[z, y, x]`` voxel positions in the
    preprocessed array, used for foreground oversampling.
    """

    case_id: str
    original_geometry: ImageGeometry
    crop_bbox: list[list[int]]
    shape_after_crop: list[int]
    shape_after_resampling: list[int]
    spacing: list[float]
    class_locations: dict[str, list[list[int]]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> CaseProperties:
        data = dict(data)
        geometry = ImageGeometry.from_dict(data.pop("original_geometry"))
        props = from_dict(cls, {**data, "original_geometry": None})
        props.original_geometry = geometry
        return props


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as handle:
        np.save(handle, np.ascontiguousarray(array))


def save_case(folder: str | Path, data: np.ndarray, seg: np.ndarray | None, props: CaseProperties) -> None:
    """Store one case atomically; the properties JSON is written last and marks completion."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if data.ndim != 4:
        raise ValueError(f"data must be (C, Z, Y, X), got shape {data.shape}")
    _save_npy_atomic(folder / f"{props.case_id}.npy", data.astype(np.float32, copy=False))
    if seg is not None:
        if seg.shape != data.shape[1:]:
            raise ValueError(f"seg shape {seg.shape} does not match data shape {data.shape[1:]}")
        _save_npy_atomic(folder / f"{props.case_id}_seg.npy", seg.astype(np.uint8, copy=False))
    write_json_atomic(folder / f"{props.case_id}.json", props)


def list_cases(folder: str | Path) -> list[str]:
    """Identifiers of the complete cases in a store folder, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p.stem for p in folder.glob("*.json") if not p.name.startswith(".") and (folder / f"{p.stem}.npy").is_file()
    )


def load_properties(folder: str | Path, case_id: str) -> CaseProperties:
    return CaseProperties.from_json(read_json(Path(folder) / f"{case_id}.json"))


def load_case(
    folder: str | Path, case_id: str, mmap: bool = True
) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """``(data, seg, properties)`` of one stored case; arrays are read-only memory maps by default."""
    folder = Path(folder)
    data_path = folder / f"{case_id}.npy"
    if not data_path.is_file():
        raise DatasetError(f"{data_path}: preprocessed case not found; run vs_plan_and_preprocess")
    mode = "r" if mmap else None
    data = np.load(data_path, mmap_mode=mode, allow_pickle=False)
    seg_path = folder / f"{case_id}_seg.npy"
    seg = np.load(seg_path, mmap_mode=mode, allow_pickle=False) if seg_path.is_file() else None
    return data, seg, load_properties(folder, case_id)
