"""File extensions we read and write, and how to name files that carry them."""

from __future__ import annotations

import logging
from pathlib import Path

from vessel_seg.errors import VesselSegError

log = logging.getLogger(__name__)

# Longest first so that ".nii.gz" wins over ".gz".
SUPPORTED_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_extension(path: str | Path) -> str | None:
    """The supported extension ``path`` ends with (lower-cased), or ``None``."""
    name = str(path).lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return None


def strip_extension(path: str | Path) -> str:
    """File name without its (possibly double) image extension."""
    name = Path(path).name
    ext = image_extension(name)
    return name[: -len(ext)] if ext else name


def image_files(folder: str | Path) -> dict[str, Path]:
    """Case id (file name without its image extension) -> file, for the images directly in ``folder``.

    Hidden files and files of other types are skipped. Raises :class:`VesselSegError` when the folder
    is missing or two files share a case id (e.g. ``a.nii.gz`` and ``a.nrrd``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VesselSegError(f"{folder}: folder not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if image_extension(path) is None:
            log.debug("%s: not a supported image file; ignored", path)
            continue
        case = strip_extension(path)
        if case in files:
            raise VesselSegError(f"{path}: case {case!r} also exists as {files[case].name}; keep one file per case")
        files[case] = path
    return files
