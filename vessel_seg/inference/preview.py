"""Maximum-intensity-projection preview of an image with its segmentation overlaid, as a PNG.

Three panels, one per array axis: the MIP along z (rows y, columns x), along y (rows z, columns x)
and along x (rows z, columns y). Pixels are drawn with their physical aspect ratio (row spacing /
column spacing), so anisotropic volumes are not stretched. Axes are array axes, not anatomical
ones: the preview is a quick visual check, not a radiological view.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: previews are written by CLIs and servers without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vessel_seg.errors import ImageWriteError, VesselSegError  # noqa: E402
from vessel_seg.evaluation.atomic import save_figure_atomic  # noqa: E402
from vessel_seg.imageio import ImageGeometry  # noqa: E402

log = logging.getLogger(__name__)

_PANELS = (  # (projected axis, row axis, column axis, title)
    (0, 1, 2, "MIP along z (rows y, cols x)"),
    (1, 0, 2, "MIP along y (rows z, cols x)"),
    (2, 0, 1, "MIP along x (rows z, cols y)"),
)


def _foreground(seg: np.ndarray) -> np.ndarray:
    """Labels: non-zero; probabilities (floats): >= 0.5."""
    return seg >= 0.5 if seg.dtype.kind == "f" else seg > 0


def make_mip_figure(image: np.ndarray, seg: np.ndarray | None, geometry: ImageGeometry,
                    title: str | None = None, percentiles: tuple[float, float] = (1.0, 99.5),
                    alpha: float = 0.45) -> Figure:
    """Build the three-panel MIP figure (see the module docstring).

    Parameters
    ----------
    image : (Z, Y, X) array
        Intensities; the grey window spans the given ``percentiles`` of the image's finite values.
    seg : (Z, Y, X) array or None
        Prediction overlaid in colour with transparency ``alpha`` where any voxel along the ray is
        foreground (labels > 0, or probabilities >= 0.5).
    geometry : ImageGeometry
        Supplies the spacing ``(z, y, x)`` in mm for the aspect ratios.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise VesselSegError(f"preview: image has shape {image.shape}; give a (Z, Y, X) volume")
    if seg is not None and np.shape(seg) != image.shape:
        raise VesselSegError(f"preview: segmentation shape {np.shape(seg)} differs from image shape {image.shape}")
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, percentiles) if finite.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    spacing = geometry.spacing
    fg = _foreground(np.asarray(seg)) if seg is not None else None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    for ax, (axis, row, col, name) in zip(axes, _PANELS, strict=True):
        ax.imshow(np.nanmax(image, axis=axis), cmap="gray", vmin=low, vmax=high, origin="lower",
                  aspect=spacing[row] / spacing[col], interpolation="nearest")
        if fg is not None and fg.any():
            overlay = np.ma.masked_where(~fg.any(axis=axis), np.zeros(fg.shape[:axis] + fg.shape[axis + 1:]))
            ax.imshow(overlay, cmap="autumn", vmin=0, vmax=1, alpha=alpha, origin="lower",
                      aspect=spacing[row] / spacing[col], interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_mip_preview(image: np.ndarray, seg: np.ndarray | None, geometry: ImageGeometry, path_png: str | Path,
                     title: str | None = None) -> Path:
    """Write the three-panel MIP preview of ``image`` with ``seg`` overlaid to ``path_png`` atomically."""
    fig = make_mip_figure(image, seg, geometry, title=title)
    try:
        save_figure_atomic(path_png, fig)
    except OSError as exc:
        raise ImageWriteError(f"{path_png}: cannot write the preview ({exc.strerror or exc}); check the folder") from exc
    finally:
        plt.close(fig)
    log.info("wrote %s", path_png)
    return Path(path_png)
