"""Image I/O: NIfTI, NRRD, MHA/MHD and DICOM series to ``(Z, Y, X)`` arrays and back, geometry kept."""

from vessel_seg.imageio.formats import SUPPORTED_EXTENSIONS, image_extension, image_files, strip_extension
from vessel_seg.imageio.geometry import ImageGeometry
from vessel_seg.imageio.reader import read_array, read_dicom_series, read_geometry, read_image, read_label
from vessel_seg.imageio.writer import write_image

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "ImageGeometry",
    "image_extension",
    "image_files",
    "read_array",
    "read_dicom_series",
    "read_geometry",
    "read_image",
    "read_label",
    "strip_extension",
    "write_image",
]
