"""Read medical images into ``(Z, Y, X)`` arrays plus their :class:`ImageGeometry`.

NIfTI voxels are read with nibabel and the geometry with SimpleITK's header reader: SimpleITK
2.5 returns zeros for the missing part of a truncated ``.nii.gz`` and turns NaN/Inf into 0 without
a word, whereas nibabel raises on a broken gzip stream and keeps non-finite values so that we can
reject them. Every other format goes through SimpleITK. All failures raise
:class:`~vessel_seg.errors.ImageReadError` with a one-line message naming the file.
"""

from __future__ import annotations

import gzip
import logging
import math
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from vessel_seg.errors import ImageReadError, VesselSegError
from vessel_seg.imageio.formats import SUPPORTED_EXTENSIONS, image_extension
from vessel_seg.imageio.geometry import ImageGeometry
from vessel_seg.imageio.native_output import native_stderr_captured
from vessel_seg.resources import check_memory

log = logging.getLogger(__name__)

# z spacing given to 2D images so that planners treat them as one slice of an infinitely thick stack.
SPACING_OF_2D_Z = 999.0


def failure_reason(exc: BaseException) -> str:
    """The informative part of a parser's exception, on one line (at most 200 characters).

    SimpleITK messages start with a source-code location line and bury the cause in later lines
    (``sitk::ERROR: ...``, ``[nrrd] ...``); the last informative line is kept, without those prefixes.
    """
    lines = [
        line.strip() for line in str(exc).splitlines()
        if line.strip() and not line.strip().startswith("Exception thrown in SimpleITK")
    ]
    if not lines:
        return type(exc).__name__
    text = lines[-1]
    itk_error = next((line for line in lines if "ITK ERROR:" in line), None)
    if itk_error is not None:  # ITK's own reason sits on that line, the lines after it are matrix rows
        text = re.sub(r"^.*ITK ERROR:\s*[\w:]*\(0x[0-9a-f]+\):\s*", "", itk_error)
    if "Unable to determine ImageIO reader" in text:
        return "not an image of this type, or corrupt"
    text = re.sub(r"^(\[\w+\]\s*)?(sitk|itk)::ERROR:\s*", "", text)
    text = re.sub(r"^\[\w+\]\s*_?\w+:\s*", "", text)
    text = re.sub(r"^Reason:\s*", "", text)
    return text[:200]


ORTHONORMAL_TOLERANCE = 1e-3  # |D^T D - I|, as ITK's own check for writing (and rounding in headers) allows


def _check_header_values(spacing, direction, dimension: int) -> None:
    """``ValueError`` for spacings that are not positive and finite, and direction matrices that are not rotations
    (singular or not orthonormal): masks written in such a geometry would not overlay the image in other tools."""
    values = [float(s) for s in spacing]
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"voxel spacing {values} must be positive and finite (a pixdim of 0 is not 1 mm); fix the "
                         "header's spacing")
    matrix = np.asarray(direction, dtype=float).reshape(dimension, dimension)
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-6:
        raise ValueError(f"direction matrix {matrix.round(4).tolist()} is singular: the axes it gives are not "
                         "independent; fix the header's orientation")
    error = float(np.abs(matrix.T @ matrix - np.eye(dimension)).max())
    if error > ORTHONORMAL_TOLERANCE:
        raise ValueError(f"direction matrix {matrix.round(4).tolist()} is not orthonormal (off by {error:.3g}); "
                         "its axes must be unit length and at right angles: fix the header's orientation")


def _geometry_from_itk(size, spacing, origin, direction, dimension: int) -> ImageGeometry:
    if dimension in (2, 3):
        _check_header_values(spacing, direction, dimension)
    if dimension == 2:
        d = direction
        return ImageGeometry(
            shape=(1, int(size[1]), int(size[0])),
            spacing=(SPACING_OF_2D_Z, float(spacing[1]), float(spacing[0])),
            origin=(float(origin[0]), float(origin[1]), 0.0),
            direction=(d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0),
            ndim=2,
        )
    if dimension != 3:
        raise ValueError(f"{dimension}D images are not supported")
    return ImageGeometry(
        shape=(int(size[2]), int(size[1]), int(size[0])),
        spacing=tuple(float(s) for s in reversed(spacing)),
        origin=tuple(float(o) for o in origin),
        direction=tuple(float(v) for v in direction),
        ndim=3,
    )


def _squeeze_itk_info(reader: sitk.ImageFileReader) -> tuple:
    """Header of an image, with trailing singleton dimensions (e.g. a 4D NIfTI with t=1) dropped."""
    size = list(reader.GetSize())
    dim = reader.GetDimension()
    spacing, origin = list(reader.GetSpacing()), list(reader.GetOrigin())
    direction = np.asarray(reader.GetDirection()).reshape(dim, dim)
    while dim > 3 and size[-1] == 1:
        dim -= 1
        size, spacing, origin = size[:dim], spacing[:dim], origin[:dim]
        direction = direction[:dim, :dim]
    return size, spacing, origin, tuple(direction.ravel()), dim


QFORM_SFORM_TOLERANCE_MM = 1e-3


def _check_nifti_transforms(header: nib.Nifti1Header) -> None:
    """Raise ``ValueError`` when a NIfTI header's qform and sform both apply but place the voxels differently.

    ITK (hence the mask we write) uses one of them and writes it into both, while tools that read the
    other would put the mask elsewhere than the image. Such a header is refused, not silently resolved.
    """
    if not isinstance(header, nib.Nifti1Header) or header["qform_code"] <= 0 or header["sform_code"] <= 0:
        return
    qform, sform = header.get_qform(), header.get_sform()
    size = (list(header.get_data_shape()[:3]) + [1, 1, 1])[:3]
    # the difference of the two transforms at the image's corner voxels, in mm
    corners = np.array([[i * (size[0] - 1), j * (size[1] - 1), k * (size[2] - 1), 1.0]
                        for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    gap = float(np.abs(corners @ (qform - sform).T)[:, :3].max())
    if gap > QFORM_SFORM_TOLERANCE_MM:
        raise ValueError(
            f"NIfTI qform and sform disagree by up to {gap:.3g} mm; tools differ in which they use: make them "
            "equal (e.g. fslorient -copysform2qform) or set one code to 0"
        )


def _check_nifti_pixdim(path: Path) -> None:
    """``ValueError`` for a zero, negative or non-finite voxel size in a NIfTI-1 header's ``pixdim``.

    Read from the file's own bytes: nibabel and ITK both replace such a size by 1 (mm) on reading, so a
    corrupt header would silently give a 1 mm image. Only the 348-byte header is read (gzip included).
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read(348)
    if len(raw) < 348:
        return  # too short for a NIfTI-1 header: the readers report it
    endian = next((e for e in "<>" if struct.unpack(f"{e}i", raw[:4])[0] == 348), None)
    if endian is None:
        return  # NIfTI-2 or not NIfTI: left to the readers
    ndim = struct.unpack(f"{endian}h", raw[40:42])[0]
    sizes = struct.unpack(f"{endian}8f", raw[76:108])[1:1 + max(0, min(ndim, 3))]
    if any(not math.isfinite(v) or v <= 0 for v in sizes):
        raise ValueError(f"NIfTI pixdim {[round(v, 6) for v in sizes]} holds a voxel size that is not positive (the "
                         "readers would take it as 1 mm); set the real voxel size in the header")


def _header_geometry(path: Path, nifti: nib.Nifti1Image | None = None) -> tuple[ImageGeometry, int]:
    """Geometry and dimension from the file header alone (SimpleITK reads no voxels here).

    ``nifti``: the file already opened by nibabel (lazy: header only), so its header is not read twice.
    """
    if path.name.lower().endswith((".nii", ".nii.gz")):
        header = (nifti if nifti is not None else nib.load(str(path))).header
        _check_nifti_transforms(header)
        _check_nifti_pixdim(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetNumberOfComponents() != 1:
        raise ValueError("multi-component (vector/RGB) voxels are not supported; save one file per channel")
    size, spacing, origin, direction, dim = _squeeze_itk_info(reader)
    return _geometry_from_itk(size, spacing, origin, direction, dim), dim


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes); copy or export it again")


@contextmanager
def _library_output() -> Iterator[list[str]]:
    """Capture what ITK/GDCM/niftilib print while a file is parsed (lines filled on exit).

    Their warnings would otherwise come before our one error line. Only on the main thread: the
    redirect covers the whole process, and a reader thread (overlapped prediction I/O) would
    swallow the main thread's log lines; there the libraries keep printing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    with native_stderr_captured() as lines:
        yield lines


def _with_library_output(reason: str, lines: list[str]) -> str:
    return f"{reason}; {lines[0][:150]}" if lines else reason


def read_geometry(path: str | Path) -> ImageGeometry:
    """The :class:`ImageGeometry` of an image file from its header, without reading the voxels.

    Raises :class:`ImageReadError` naming the file when the header cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    _check_not_empty(path)
    native: list[str] = []
    try:
        with _library_output() as native:
            geometry = _header_geometry(path)[0]
    except Exception as exc:  # noqa: BLE001 - any parser failure on an untrusted file is the file's problem
        reason = _with_library_output(failure_reason(exc), native)
        raise ImageReadError(
            f"{path}: cannot read image header ({reason}); replace it with a complete, valid image file"
        ) from exc
    for line in native:
        log.debug("%s: %s", path, line)
    return geometry


# Bytes per voxel a read may hold at once: the stored values (up to 8 bytes) plus the float32 copy made for
# prediction or training. Checked against free memory from the header, before anything is decompressed.
READ_BYTES_PER_VOXEL = 12


def _check_room_for(path: Path, geometry: ImageGeometry) -> None:
    voxels = math.prod(geometry.shape)
    check_memory(READ_BYTES_PER_VOXEL * voxels, f"{path} ({'x'.join(map(str, geometry.shape))} voxels, by its header)",
                 "free memory, or crop or downsample the image first")


def _read_nifti(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    image = nib.load(str(path))
    geometry, dim = _header_geometry(path, image)
    _check_room_for(path, geometry)  # a 3000^3 header or a gzip bomb stops here, before decompression
    data = np.asanyarray(image.dataobj)
    data = data.reshape(data.shape[:dim]).T  # nibabel indexes (i, j, k); arrays here are (k, j, i)
    return np.ascontiguousarray(data.reshape(geometry.shape)), geometry


def _read_itk(image: sitk.Image) -> tuple[np.ndarray, ImageGeometry]:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("multi-component (vector/RGB) voxels are not supported; save one file per channel")
    dim = image.GetDimension()
    geometry = _geometry_from_itk(
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), dim
    )
    return sitk.GetArrayFromImage(image).reshape(geometry.shape), geometry


def read_array(path: str | Path, allow_nonfinite: bool = False) -> tuple[np.ndarray, ImageGeometry]:
    """Read one single-channel image file as a ``(Z, Y, X)`` array in its stored dtype.

    A DICOM series is read when ``path`` is a folder. Raises :class:`ImageReadError` for missing,
    empty, truncated or non-image files, and for NaN/Inf voxels unless ``allow_nonfinite``.
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    _check_not_empty(path)
    ext = image_extension(path)
    if ext is None:
        raise ImageReadError(
            f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_EXTENSIONS)} or a DICOM folder"
        )
    native: list[str] = []
    try:
        with _library_output() as native:
            if ext in (".nii", ".nii.gz"):
                data, geometry = _read_nifti(path)
            else:
                _check_room_for(path, _header_geometry(path)[0])
                data, geometry = _read_itk(sitk.ReadImage(str(path)))
    except VesselSegError as exc:
        raise ImageReadError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure on an untrusted file is the file's problem
        raise ImageReadError(
            f"{path}: cannot read image ({_with_library_output(failure_reason(exc), native)}); "
            "replace it with a complete, valid image file"
        ) from exc
    for line in native:
        log.debug("%s: %s", path, line)
    if not allow_nonfinite and data.dtype.kind == "f" and not np.isfinite(data).all():
        nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        raise ImageReadError(
            f"{path}: {nan} NaN and {inf} Inf voxel(s) (NaN or Inf values are not allowed); "
            "replace them with finite intensities and run again"
        )
    _check_float32_range(path, data)
    return data, geometry


def _check_float32_range(path: Path, data: np.ndarray) -> None:
    """Raise :class:`ImageReadError` if ``data`` (wider than float32) would overflow to Inf in float32.

    Header scaling (NIfTI ``scl_slope``/``scl_inter``, DICOM rescale) turns integers into float64
    that may be finite there and Inf once cast to float32, where every later step works.
    """
    if data.dtype.kind != "f" or data.dtype.itemsize <= 4 or not data.size:
        return
    peak = float(np.abs(data).max())
    if peak > float(np.finfo(np.float32).max):
        raise ImageReadError(
            f"{path}: intensities reach {peak:.3g}, beyond what float32 holds (header scaling such as NIfTI scl_slope?); "
            "fix the scaling in the header or rescale the image"
        )


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read the one DICOM series in ``folder`` as a ``(Z, Y, X)`` array.

    Refused in one line (:class:`ImageReadError`): several series in one folder (they are listed), a series of
    single files that each carry their own series UID, slices missing or unevenly spaced, and anything a
    parser raises (RGB series, damaged files).
    """
    folder = Path(folder)
    native: list[str] = []
    try:
        with _library_output() as native:
            data, geometry = _read_series(folder)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure on an untrusted folder is the folder's problem
        reason = _with_library_output(failure_reason(exc), native)
        raise ImageReadError(f"{folder}: cannot read DICOM series ({reason})") from exc
    for line in native:
        log.debug("%s: %s", folder, line)
    return data, geometry


MAX_SLICE_GAP_RATIO = 1.5  # a gap this many times the median slice distance means missing slices


def _read_series(folder: Path) -> tuple[np.ndarray, ImageGeometry]:
    """The one series in ``folder`` (ImageReadError when there is none, or several, or slices are missing)."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    if not series_ids:
        raise ImageReadError(f"{folder}: no DICOM series found in this folder")
    if len(series_ids) > 1:
        sizes = {sid: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids}
        listed = ", ".join(f"{sid} ({n} file(s))" for sid, n in sorted(sizes.items(), key=lambda kv: -kv[1])[:5])
        raise ImageReadError(f"{folder}: holds {len(series_ids)} DICOM series ({listed}{', ...' if len(sizes) > 5 else ''});"
                             " put each series in its own folder")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    _check_slice_positions(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return _read_itk(reader.Execute())


def _check_slice_positions(folder: Path, files) -> None:
    """Slices must be evenly spaced along the series' normal: a gap means missing files, uneven steps a broken series."""
    if len(files) < 3:
        return
    origins, normal = [], None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        origins.append(reader.GetOrigin())
        normal = np.asarray(reader.GetDirection()).reshape(3, 3)[:, 2] if normal is None else normal
    steps = np.diff(np.sort(np.asarray(origins) @ normal))
    median = float(np.median(steps))
    if median <= 1e-6:
        raise ImageReadError(f"{folder}: {len(files)} DICOM files share one slice position; put each series in its "
                             "own folder (or the files are copies)")
    worst = int(np.argmax(steps))
    if steps[worst] > MAX_SLICE_GAP_RATIO * median or steps.min() < median / MAX_SLICE_GAP_RATIO:
        raise ImageReadError(f"{folder}: slices are unevenly spaced ({steps[worst]:.3g} mm after slice {worst + 1} of "
                             f"{len(files)}, {median:.3g} mm typically): slices are missing or the series is broken")


def read_image(paths: str | Path | Sequence[str | Path]) -> tuple[np.ndarray, ImageGeometry]:
    """Read the channel files of one case into a float32 ``(C, Z, Y, X)`` array.

    All channels must have the same geometry; the first channel's geometry is returned.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ImageReadError("no image files given")
    arrays, geometry = [], None
    for path in paths:
        data, geo = read_array(path)
        if geometry is None:
            geometry = geo
        elif (problem := geometry.mismatch(geo)) is not None:
            raise ImageReadError(f"{path}: channel geometry differs from {paths[0]} ({problem})")
        arrays.append(data.astype(np.float32, copy=False))
    # One channel: a view with a new axis, not a stacked copy (a volume less while reading).
    return (arrays[0][None] if len(arrays) == 1 else np.stack(arrays)), geometry


def read_label(path: str | Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a label map as an integer ``(Z, Y, X)`` array (uint8 when values fit, else int16)."""
    data, geometry = read_array(path)
    if data.dtype.kind == "f":
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise ImageReadError(f"{path}: label file holds non-integer values; labels must be whole numbers")
        data = rounded
    if data.size and (data.min() < 0 or data.max() > np.iinfo(np.int16).max):
        raise ImageReadError(f"{path}: label values must lie in 0..32767 (found {data.min()}..{data.max()})")
    dtype = np.uint8 if (not data.size or data.max() < 256) else np.int16
    return data.astype(dtype, copy=False), geometry
