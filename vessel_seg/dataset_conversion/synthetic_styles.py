"""A microscopy-like synthetic style: a dense capillary bed imaged by two-photon fluorescence.

Geometry (voxel units of the in-plane spacing, 1 um by default; slices 2 um apart):

- a capillary bed on a jittered lattice (cell 12-18 voxels): lattice neighbours joined with a random
  probability by gently curved tubes of radius 1.0-1.8 voxels, so the network is dense and full of
  loops, unlike the branching trees of CT and MR;
- one to three penetrating vessels (radius 3-5 voxels) crossing the volume along z with a slow wobble.

Appearance: dye-filled lumen on a dark background with faint autofluorescence and dark cell bodies
(unstained nuclei), signal attenuated with depth, a point-spread function elongated along the
optical axis, photon (Poisson) noise at 15-60 photons in the vessels plus Gaussian read noise and a
detector offset.

This style is used only as an *unseen* test domain (the zero-shot benchmark); the pretraining
randomiser (:mod:`vessel_seg.dataset_conversion.domain_randomization`) never calls it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vessel_seg.dataset_conversion.synthetic_render import _paint_capsule, smooth_noise
from vessel_seg.imageio import ImageGeometry

MICROSCOPY_SPACING = (0.002, 0.001, 0.001)  # mm: 2 um slices, 1 um pixels


def _capillary_bed(rng: np.random.Generator, shape, spacing_vox, sd, rad, grids) -> None:
    """Paint a jittered-lattice capillary network into ``sd`` (voxel units)."""
    extent = (np.asarray(shape) - 1) * spacing_vox
    cell = rng.uniform(12.0, 18.0)
    counts = np.maximum((extent / cell).astype(int) + 2, 2)
    lattice = np.stack(np.meshgrid(*(np.arange(n) for n in counts), indexing="ij"), axis=-1).astype(float)
    nodes = (lattice - 0.5) * cell + rng.normal(0, 0.25 * cell, lattice.shape)
    keep = rng.uniform(0.4, 0.65)
    radius = rng.uniform(1.0, 1.8)
    band = 3.0
    for axis in range(3):
        a = np.take(nodes, np.arange(counts[axis] - 1), axis=axis).reshape(-1, 3)
        b = np.take(nodes, np.arange(1, counts[axis]), axis=axis).reshape(-1, 3)
        for p, q in zip(a, b, strict=True):
            if rng.random() > keep:
                continue
            mid = 0.5 * (p + q) + rng.normal(0, 0.15 * cell, 3)
            r = radius * rng.uniform(0.85, 1.15)
            _paint_capsule(sd, rad, grids, spacing_vox, p, mid, r, r, band)
            _paint_capsule(sd, rad, grids, spacing_vox, mid, q, r, r, band)


def _penetrating_vessels(rng: np.random.Generator, shape, spacing_vox, sd, rad, grids) -> None:
    extent = (np.asarray(shape) - 1) * spacing_vox
    for _ in range(int(rng.integers(1, 4))):
        yx = rng.uniform(0.15, 0.85, 2) * extent[1:]
        radius = rng.uniform(3.0, 5.0)
        z_points = np.linspace(-2, extent[0] + 2, 6)
        points = [np.array([z, *(yx + rng.normal(0, 2.0, 2))]) for z in z_points]
        for p, q in zip(points[:-1], points[1:], strict=True):
            _paint_capsule(sd, rad, grids, spacing_vox, p, q, radius, radius, 3.0)


def _fluorescence(rng: np.random.Generator, sd: np.ndarray, spacing_vox: np.ndarray) -> np.ndarray:
    """Photon counts of the dye-filled lumen ``sd < 0`` as a two-photon microscope records them."""
    shape = sd.shape
    width = float(np.prod(spacing_vox) ** (1 / 3))
    dye = np.clip(0.5 - sd / width, 0, 1)
    auto = rng.uniform(0.04, 0.12) * (1.0 + 0.3 * smooth_noise(rng, shape, tuple(spacing_vox), 3.0))
    nuclei = smooth_noise(rng, shape, tuple(spacing_vox), 2.0) > rng.uniform(1.2, 1.8)  # dark cell bodies
    signal = dye + auto * (1.0 - dye) * np.where(nuclei, 0.3, 1.0)
    depth = np.exp(-np.arange(shape[0]) * spacing_vox[0] / rng.uniform(80.0, 200.0))[:, None, None]
    signal = signal * depth
    psf = np.array([rng.uniform(1.2, 2.0), rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.7)]) / spacing_vox
    signal = ndimage.gaussian_filter(signal.astype(np.float32), psf)
    photons = rng.uniform(15.0, 60.0)
    counts = rng.poisson(np.maximum(signal, 0) * photons).astype(np.float32)
    return counts + rng.uniform(50, 200) + rng.uniform(0.5, 2.0) * rng.standard_normal(shape, dtype=np.float32)


def microscopy_case(rng: np.random.Generator, shape: tuple[int, int, int],
                    spacing: tuple[float, float, float] = MICROSCOPY_SPACING) -> tuple[np.ndarray, np.ndarray, ImageGeometry]:
    """``(image float32, label uint8, geometry)`` of one microscopy-like volume of ``shape`` (Z, Y, X)."""
    spacing_vox = np.asarray(spacing, dtype=float) / min(spacing[1:])
    sd = np.full(shape, 3.0, dtype=np.float32)
    rad = np.zeros(shape, dtype=np.float32)
    grids = [np.arange(n) * s for n, s in zip(shape, spacing_vox, strict=True)]
    _capillary_bed(rng, shape, spacing_vox, sd, rad, grids)
    _penetrating_vessels(rng, shape, spacing_vox, sd, rad, grids)
    image = _fluorescence(rng, sd, spacing_vox)
    geometry = ImageGeometry(shape=tuple(shape), spacing=tuple(float(s) for s in spacing), origin=(0.0, 0.0, 0.0),
                             direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image.astype(np.float32), (sd < 0).astype(np.uint8), geometry
