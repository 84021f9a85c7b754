"""File extensions we read and write, and how to name files that carry them."""

from __future__ import annotations

from pathlib import Path

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
