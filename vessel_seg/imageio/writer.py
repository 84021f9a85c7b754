"""Write ``(Z, Y, X)`` arrays to image files atomically, with their original geometry."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vessel_seg.atomic import staging_folder
from vessel_seg.errors import ImageWriteError
from vessel_seg.imageio.formats import SUPPORTED_EXTENSIONS, image_extension
from vessel_seg.imageio.geometry import ImageGeometry
from vessel_seg.imageio.native_output import native_stderr_captured
from vessel_seg.imageio.reader import failure_reason

log = logging.getLogger(__name__)


# Smallest NIfTI-1 header; the voxels follow it (ITK writes them at offset 352).
NIFTI_HEADER_BYTES = 348
# Header padding and extensions ITK may add before the voxels (it writes none: offset 352).
NIFTI_EXTENSION_SLACK = 4096


def to_itk(array: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    """A SimpleITK image of ``array`` placed with ``geometry`` (2D when ``geometry.ndim == 2``)."""
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    if geometry.ndim == 2:
        image = sitk.GetImageFromArray(array[0])
        image.SetSpacing((geometry.spacing[2], geometry.spacing[1]))
        image.SetOrigin(geometry.origin[:2])
        d = geometry.direction
        image.SetDirection((d[0], d[1], d[3], d[4]))
        return image
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(geometry.spacing)))
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _check_nifti(path: Path, data_bytes: int) -> None:
    """Raise ``OSError`` unless ``path`` holds a whole NIfTI file of ``data_bytes`` voxel bytes.

    ITK's NIfTI writer reports a short write (disk full, file size limit) on stderr only and
    returns normally, so the written file is checked: its size, or for ``.gz`` the gzip trailer,
    whose last 4 bytes hold the uncompressed size (mod 2**32). A file cut short ends in compressed
    data instead, which matches that size by chance about once in a million; no inflating pass needed.
    """
    expected = NIFTI_HEADER_BYTES + data_bytes
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        if size < expected:
            raise OSError(f"incomplete file: {size} of at least {expected} bytes written")
        return
    with open(path, "rb") as handle:
        magic = handle.read(2)
        handle.seek(max(size - 4, 0))
        trailer = handle.read(4)
    written = int.from_bytes(trailer, "little") if len(trailer) == 4 else -1
    # ITK writes one gzip member of header (348 bytes, padded to 352, plus any extensions) and voxels
    if size < 18 or magic != b"\x1f\x8b" or not 0 <= (written - expected) % 2**32 < NIFTI_EXTENSION_SLACK:
        raise OSError(f"incomplete file: {size} compressed bytes end without the trailer of a {expected}-byte image")


def write_image(array: np.ndarray, geometry: ImageGeometry, path: str | Path, compress: bool = True) -> Path:
    """Write ``array`` to ``path`` (format from the extension) via a hidden staging folder and renames.

    The file is written under its final name inside a hidden sibling folder, checked, then moved
    into place (for ``.mhd`` the data file first, the header last), so a reader never sees a
    half-written file and a failure (disk full, killed process) leaves no partial output. Raises
    :class:`ImageWriteError` naming the path on failure.
    """
    path = Path(path)
    ext = image_extension(path)
    if ext is None:
        raise ImageWriteError(f"{path}: unsupported output type; use one of {', '.join(SUPPORTED_EXTENSIONS)}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    if not path.parent.is_dir():
        raise ImageWriteError(f"{path.parent}: output folder does not exist; create it first")
    native: list[str] = []
    try:
        with staging_folder(path.parent) as staging:
            staged = staging / path.name
            with native_stderr_captured() as native:
                sitk.WriteImage(to_itk(array, geometry), str(staged), useCompression=compress)
            if ext in (".nii", ".nii.gz"):
                _check_nifti(staged, array.nbytes)
    except (RuntimeError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else failure_reason(exc)
        if native:
            reason = f"{reason}; {native[0][:150]}"
        raise ImageWriteError(f"{path}: cannot write image ({reason}); check free space and permissions") from exc
    for line in native:
        log.debug("%s: %s", path, line)
    return path
