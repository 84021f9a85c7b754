"""Vascular Model Repository (VMR, vascularmodel.com) volumes, as SeqSeg uses them, to a raw dataset.

SeqSeg (Sveinsson Cepero & Shadden, Ann. Biomed. Eng. 2024) trains on VMR models laid out as::

    data/                                   or one folder per model:
        images/<model>.mha|.vti|.nii.gz         <model>/images/<model>.vti
        truths/<model>.mha|.vti|.nii.gz         <model>/truths/<model>.mha
        centerlines/, surfaces/ (unused here)

(folder names are matched case-insensitively, so VMR's own ``Images/`` works). A VMR download
ships the image and surface models (``Models/*.vtp``) but no label volume: rasterise the surface
into ``truths/`` first (e.g. SeqSeg's ``seqseg train prepare --truth-from-surface``). Truths are
binarised (any non-zero voxel is vessel). VMR images are often in centimetres; ``scale=10``
converts spacing and origin to millimetres.

VTK ``.vti`` files are read by a small built-in reader (one piece, one single-component point
array; ascii, base64 or appended raw/base64 data; zlib or LZMA compression) because SimpleITK
cannot read them and VTK is not a dependency.
"""

from __future__ import annotations

import base64
import json
import logging
import lzma
import math
import re
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np

from vessel_seg.dataset_conversion.common import DatasetSpec, SourceCase, VolumeSource, binarise, write_raw_dataset
from vessel_seg.errors import DatasetError, ImageReadError
from vessel_seg.imageio import SUPPORTED_EXTENSIONS, ImageGeometry, read_array, read_label

log = logging.getLogger(__name__)

VMR_EXTENSIONS = (*SUPPORTED_EXTENSIONS, ".vti")
IMAGE_FOLDERS = ("images", "image")
TRUTH_FOLDERS = ("truths", "truth", "labels")
_VTK_TYPES = {
    "Int8": "i1", "UInt8": "u1", "Int16": "i2", "UInt16": "u2", "Int32": "i4", "UInt32": "u4",
    "Int64": "i8", "UInt64": "u8", "Float32": "f4", "Float64": "f8",
}
_DECOMPRESSORS = {"vtkZLibDataCompressor": zlib.decompress, "vtkLZMADataCompressor": lzma.decompress}


def _b64(text: bytes, start: int, nbytes: int) -> bytes:
    """Decode the first ``nbytes`` bytes of the base64 stream that begins at character ``start``."""
    return base64.b64decode(text[start : start + 4 * math.ceil(nbytes / 3)])[:nbytes]


def _decode_array(blob: bytes, encoding: str, header: np.dtype, compressor: str | None) -> bytes:
    """The data bytes of one binary VTK array (``encoding`` ``raw`` or ``base64``), decompressed."""
    size = header.itemsize

    def take(start: int, nbytes: int, stream_start: int = 0) -> bytes:
        if encoding == "raw":
            return blob[stream_start + start : stream_start + start + nbytes]
        return _b64(blob, stream_start, start + nbytes)[start:]

    if compressor is None:  # one stream: [byte count][data]
        nbytes = int(np.frombuffer(take(0, size), header)[0])
        return take(size, nbytes)
    decompress = _DECOMPRESSORS.get(compressor)
    if decompress is None:
        raise ValueError(f"compressor {compressor} is not supported (zlib and LZMA are)")
    nblocks = int(np.frombuffer(take(0, size), header)[0])
    head = np.frombuffer(take(0, (3 + nblocks) * size), header).astype(np.int64)
    sizes = head[3:]
    # Raw data follows the header directly; base64 data is a second stream after the padded header.
    data_start = (3 + nblocks) * size if encoding == "raw" else 4 * math.ceil((3 + nblocks) * size / 3)
    packed = take(0, int(sizes.sum()), data_start)
    out, offset = [], 0
    for block_size in sizes:
        out.append(decompress(packed[offset : offset + int(block_size)]))
        offset += int(block_size)
    return b"".join(out)


def read_vti(path: str | Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a VTK XML image (``.vti``) as a ``(Z, Y, X)`` array and its geometry.

    The physical position of voxel ``(i, j, k)`` is ``Origin + Direction @ (Spacing * (i, j, k))``
    with ``(i, j, k)`` counted from the extent's start, as in VTK. Raises :class:`ImageReadError`
    naming the file for anything this reader does not handle.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        appended, encoding = b"", "raw"
        start = raw.find(b"<AppendedData")
        if start >= 0:  # raw appended bytes are not XML: parse only what precedes them
            tag_end = raw.index(b">", start)
            found = re.search(rb'encoding="(\w+)"', raw[start:tag_end])
            encoding = found.group(1).decode() if found else "raw"
            appended = raw[raw.index(b"_", tag_end) + 1 :]
            raw = raw[:start] + b"</VTKFile>"
        root = ET.fromstring(raw)
        if root.tag != "VTKFile" or root.get("type") != "ImageData":
            raise ValueError("not a VTK ImageData file")
        order = "<" if root.get("byte_order", "LittleEndian") == "LittleEndian" else ">"
        header = np.dtype(order + _VTK_TYPES[root.get("header_type", "UInt32")])
        compressor = root.get("compressor")
        image = root.find("ImageData")
        pieces = image.findall("Piece")
        if len(pieces) != 1:
            raise ValueError(f"{len(pieces)} pieces; only single-piece images are supported")
        x0, x1, y0, y1, z0, z1 = (int(v) for v in pieces[0].get("Extent", image.get("WholeExtent")).split())
        shape = (z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
        point_data = pieces[0].find("PointData")
        arrays = point_data.findall("DataArray") if point_data is not None else []
        if not arrays:
            raise ValueError("no point data array")
        wanted = point_data.get("Scalars")
        array = next((a for a in arrays if a.get("Name") == wanted), arrays[0])
        if int(array.get("NumberOfComponents", "1")) != 1:
            raise ValueError("multi-component point data is not supported")
        dtype = np.dtype(order + _VTK_TYPES[array.get("type")])
        fmt = array.get("format")
        if fmt == "ascii":
            values = np.array((array.text or "").split(), dtype=dtype)
        elif fmt == "binary":
            text = "".join((array.text or "").split()).encode()
            values = np.frombuffer(_decode_array(text, "base64", header, compressor), dtype)
        elif fmt == "appended":
            blob = appended[int(array.get("offset", "0")) :]
            values = np.frombuffer(_decode_array(blob, encoding, header, compressor), dtype)
        else:
            raise ValueError(f"data format {fmt!r} is not supported")
        if values.size != math.prod(shape):
            raise ValueError(f"{values.size} values for an extent of {shape} voxels (truncated?)")
        spacing = [float(v) for v in image.get("Spacing", "1 1 1").split()]
        direction = np.array([float(v) for v in image.get("Direction", "1 0 0 0 1 0 0 0 1").split()]).reshape(3, 3)
        origin = np.array([float(v) for v in image.get("Origin", "0 0 0").split()])
        origin = origin + direction @ (np.array(spacing) * np.array([x0, y0, z0]))
    except (OSError, ValueError, KeyError, AttributeError, TypeError, ET.ParseError, zlib.error, lzma.LZMAError) as exc:
        raise ImageReadError(f"{path}: cannot read VTK image ({str(exc).strip()[:200] or type(exc).__name__})") from exc
    geometry = ImageGeometry(
        shape=shape,
        spacing=(spacing[2], spacing[1], spacing[0]),
        origin=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction.ravel()),
    )
    return values.astype(values.dtype.newbyteorder("="), copy=False).reshape(shape), geometry


class VMRSource(VolumeSource):
    """Reads ``.vti`` as well as the usual formats and scales spacing and origin by ``scale``."""

    def __init__(self, scale: float = 1.0):
        if not scale > 0:
            raise DatasetError(f"scale must be positive, got {scale}")
        self.scale = float(scale)

    def can_copy(self, path: Path) -> bool:
        return self.scale == 1.0 and super().can_copy(path)

    def _scaled(self, geometry: ImageGeometry) -> ImageGeometry:
        if self.scale == 1.0:
            return geometry
        return ImageGeometry(
            shape=geometry.shape,
            spacing=tuple(s * self.scale for s in geometry.spacing),
            origin=tuple(o * self.scale for o in geometry.origin),
            direction=geometry.direction,
            ndim=geometry.ndim,
        )

    def image(self, path: Path) -> tuple[np.ndarray, ImageGeometry]:
        data, geometry = read_vti(path) if path.name.lower().endswith(".vti") else read_array(path)
        return data, self._scaled(geometry)

    def label(self, path: Path) -> tuple[np.ndarray, ImageGeometry]:
        if not path.name.lower().endswith(".vti"):
            data, geometry = read_label(path)
            return data, self._scaled(geometry)
        data, geometry = read_vti(path)
        if data.dtype.kind == "f" and not np.array_equal(np.rint(data), data):
            raise ImageReadError(f"{path}: truth volume holds non-integer values; it must be a label map")
        return (data != 0).astype(np.uint8), self._scaled(geometry)


def _stem(path: Path) -> str | None:
    name = path.name
    for ext in VMR_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return None


def _volumes(folder: Path) -> dict[str, Path]:
    return {stem: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and (stem := _stem(p))}


def _subfolder(parent: Path, names: tuple[str, ...]) -> Path | None:
    for entry in sorted(parent.iterdir()):
        if entry.is_dir() and entry.name.lower() in names:
            return entry
    return None


def _model_volume(folder: Path | None, model: str) -> Path | None:
    """The volume of ``model`` in a per-model sub-folder: the one named after it, or the only one."""
    if folder is None:
        return None
    volumes = _volumes(folder)
    if model in volumes:
        return volumes[model]
    if len(volumes) > 1:
        raise DatasetError(f"{folder}: {len(volumes)} volumes and none named {model}; keep one per model")
    return next(iter(volumes.values()), None)


def find_vmr_models(source: str | Path) -> dict[str, tuple[Path, Path | None]]:
    """Model name -> (image, truth or ``None``) for the flat SeqSeg layout or per-model folders."""
    source = Path(source)
    if not source.is_dir():
        raise DatasetError(f"{source}: folder not found; point to the VMR/SeqSeg data folder")
    images = _subfolder(source, IMAGE_FOLDERS)
    if images is not None:  # flat layout: images/ and truths/ side by side
        truths = _subfolder(source, TRUTH_FOLDERS)
        truth_files = _volumes(truths) if truths is not None else {}
        models = {model: (image, truth_files.get(model)) for model, image in _volumes(images).items()}
    else:  # one folder per model
        models = {}
        for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            image_dir = _subfolder(folder, IMAGE_FOLDERS)
            image = _model_volume(image_dir, folder.name)
            if image is not None:
                models[folder.name] = (image, _model_volume(_subfolder(folder, TRUTH_FOLDERS), folder.name))
    if not models:
        raise DatasetError(
            f"{source}: no images found; expected images/<model>.mha|.vti|.nii.gz (and truths/) "
            "or <model>/images/ folders"
        )
    return models


def read_split_file(path: str | Path) -> tuple[set[str], set[str] | None]:
    """Test (and, if given, training) model names from a split file.

    A JSON file (``.json``, or text starting with ``[`` or ``{``) holds either a list of test model names or an object with a ``"test"`` list
    and an optional ``"train"`` list; any other file lists one test model per line (``#``
    comments allowed). Names may carry an image or surface (``.vtp``) extension, which is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")

    def names(values: object) -> set[str]:
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise DatasetError(f"{path}: split lists must be lists of model names")
        return {_stem(Path(v)) or re.sub(r"\.(vtp|vtk)$", "", Path(v).name, flags=re.IGNORECASE) for v in values}

    text = path.read_text()
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            if "test" not in data:
                raise DatasetError(f"{path}: JSON split needs a 'test' list (and optionally 'train')")
            return names(data["test"]), names(data["train"]) if "train" in data else None
        return names(data), None
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return names([line for line in lines if line]), None


def list_vmr_cases(source: str | Path, split_file: str | Path | None = None) -> list[SourceCase]:
    """Cases of a VMR/SeqSeg folder; models named as test in ``split_file`` become test cases."""
    models = find_vmr_models(source)
    test, train = read_split_file(split_file) if split_file is not None else (set(), None)
    unknown = sorted((test | (train or set())) - set(models))
    if unknown:
        raise DatasetError(f"{split_file}: names model {unknown[0]!r}, which is not in {source} ({len(unknown)} unknown)")
    cases = []
    for model, (image, truth) in sorted(models.items()):
        is_test = model in test
        if not is_test and train is not None and model not in train:
            log.info("VMR: %s is in neither split list; skipped", model)
            continue
        if truth is None and not is_test:
            raise DatasetError(
                f"{image}: model {model} has no truth volume; VMR ships surfaces, not label maps: rasterise "
                "Models/*.vtp into truths/ first (e.g. seqseg train prepare --truth-from-surface)"
            )
        cases.append(SourceCase(model, image, truth, test=is_test))
    return cases


def convert_vmr(
    source: str | Path,
    dataset_id: int,
    *,
    split_file: str | Path | None = None,
    modality: str = "ct",
    scale: float = 1.0,
    name: str = "VMR",
    overwrite: bool = False,
    workers: int = 1,
) -> Path:
    """Convert VMR volumes and truths into ``VS_RAW/DatasetNNN_<name>``; return that folder.

    Parameters
    ----------
    source : the data folder (flat ``images/`` + ``truths/``, or one folder per model).
    dataset_id : output dataset id (0..999).
    split_file : test models (e.g. SeqSeg's test split) written to ``imagesTs``/``labelsTs``.
    modality : ``"ct"`` or ``"mr"``; sets the channel name and hence the normalisation.
    scale : factor applied to spacing and origin (10 turns VMR's centimetres into millimetres).
    name : short name of the output dataset.
    overwrite : replace an existing output dataset of the same name.
    workers : cases converted in parallel (threads).
    """
    if modality not in ("ct", "mr"):
        raise DatasetError(f"modality {modality!r} is not supported: use 'ct' or 'mr'")
    cases = list_vmr_cases(source, split_file)
    spec = DatasetSpec(
        dataset_id=dataset_id,
        short_name=name,
        channel_name="CT" if modality == "ct" else "MR",
        labels={"background": 0, "vessel": 1},
        description="Vascular Model Repository volumes with binary vessel truths",
        extra={
            "converted_from": str(Path(source).resolve()),
            "source_dataset": "Vascular Model Repository (vascularmodel.com)",
            "spacing_scale": scale,
        },
    )
    return write_raw_dataset(cases, spec, binarise, overwrite=overwrite, workers=workers, source=VMRSource(scale))
