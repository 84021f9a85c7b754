"""Write ``(Z, Y, X)`` arrays to image files atomically, with their original geometry."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vessel_seg.errors import ImageWriteError
from vessel_seg.imageio.formats import SUPPORTED_EXTENSIONS, image_extension
from vessel_seg.imageio.geometry import ImageGeometry


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


def write_image(array: np.ndarray, geometry: ImageGeometry, path: str | Path, compress: bool = True) -> Path:
    """Write ``array`` to ``path`` (format from the extension) via a temporary folder and renames.

    The file is written under its final name inside a hidden sibling folder, then moved into place
    (for ``.mhd`` the data file first, the header last), so a reader never sees a half-written file
    and a failure (disk full, killed process) leaves no partial output. Raises
    :class:`ImageWriteError` naming the path on failure.
    """
    path = Path(path)
    if image_extension(path) is None:
        raise ImageWriteError(f"{path}: unsupported output type; use one of {', '.join(SUPPORTED_EXTENSIONS)}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    if not path.parent.is_dir():
        raise ImageWriteError(f"{path.parent}: output folder does not exist; create it first")
    try:
        with tempfile.TemporaryDirectory(prefix=".tmp-write-", dir=path.parent) as tmp_dir:
            staged = Path(tmp_dir) / path.name
            sitk.WriteImage(to_itk(array, geometry), str(staged), useCompression=compress)
            header_last = sorted(Path(tmp_dir).iterdir(), key=lambda p: p.name == path.name)
            for produced in header_last:
                os.replace(produced, path.parent / produced.name)
    except (RuntimeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageWriteError(f"{path}: cannot write image ({reason[:200]}); check space and permissions") from exc
    return path
