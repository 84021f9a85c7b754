"""Checks of prediction inputs against the model, from file headers only, before anything is predicted.

Every case of a ``vs_predict`` run is checked first, so that a bad file stops the run before the
first (possibly long) prediction and before any output is written. Only headers are read (no
voxels): a truncated voxel stream or NaN voxels are found later, when the case itself is read,
still before its outputs are written. Every error names the offending file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vessel_seg.errors import DatasetError, ImageReadError
from vessel_seg.imageio import ImageGeometry, read_geometry


def check_channel_files(case_id: str, files: Sequence[Path], num_channels: int, model_name: str) -> None:
    """One file per model channel, else a :class:`DatasetError` naming the file in excess or the one missing."""
    if len(files) == num_channels:
        return
    expected = list(range(num_channels))
    if len(files) > num_channels:
        raise DatasetError(
            f"{files[num_channels]}: case {case_id!r} has {len(files)} channel files but the model {model_name} "
            f"expects {expected}; give exactly one CASE_NNNN file per model channel"
        )
    raise DatasetError(
        f"{files[0]}: case {case_id!r} has {len(files)} channel file(s) but the model {model_name} expects "
        f"{expected}; name the files CASE_0000, CASE_0001, ... and pass their folder with -i"
    )


def check_case_headers(files: Sequence[Path], model_dims: dict[str, int]) -> ImageGeometry:
    """Read each channel's header; all must share one voxel grid and suit every model's dimension.

    Parameters
    ----------
    files : sequence of Path
        The channel files of one case, in channel order.
    model_dims : dict
        Model name -> network dimension (2 or 3) of each model the case goes through.

    Returns
    -------
    ImageGeometry
        The first channel's geometry.

    Raises
    ------
    ImageReadError
        A header cannot be read (empty, not an image), a 2D image meets a 3D model, or the channels
        differ in geometry; the message names the file.
    """
    if not files:
        raise DatasetError("a case without image files was given; pass image files or their folder with -i")
    reference: tuple[Path, ImageGeometry] | None = None
    for path in files:
        geometry = read_geometry(path)
        three_d = sorted(name for name, dim in model_dims.items() if dim == 3)
        if geometry.ndim == 2 and three_d:
            raise ImageReadError(
                f"{path}: a 2D image cannot be segmented by the 3D model {three_d[0]}; give a 3D image or use a "
                "2d configuration (-c 2d)"
            )
        if reference is None:
            reference = (path, geometry)
        elif (problem := reference[1].mismatch(geometry)) is not None:
            raise ImageReadError(
                f"{path}: geometry differs from channel file {reference[0].name} ({problem}); all channels of a "
                "case must share one voxel grid"
            )
    return reference[1] if reference is not None else read_geometry(files[0])
