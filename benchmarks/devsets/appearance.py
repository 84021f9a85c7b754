"""CT-, MR- and microscopy-like appearances for the zero-shot dev sets, with label-0 look-alikes.

Written apart from everything the pretraining randomiser draws from: distractors are
*superellipsoids* (``|x/a|^p + |y/b|^p + |z/c|^p <= 1`` with ``p`` 1.5-4, boxy or pointed, where the
randomiser only draws ellipsoids), *unlabelled vein-like tubes* (smooth curves that do not join the
labelled tree, some touching it), bone with a cortex and a speckled marrow, a fat shell under the
skin (MR), light-sheet stripes and fluorescent cell bodies (microscopy). Each appearance takes the
labelled lumen's signed distance ``sd`` (mm, negative inside) and its radius map and returns a
float32 image in its modality's own units.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.interpolate import PchipInterpolator

from vessel_seg.dataset_conversion.synthetic_render import segments_distance, smooth_noise

APPEARANCES = ("ct", "mr", "microscopy")


def _superellipsoids(rng, shape, spacing, count: int, size_mm: tuple[float, float],
                     keep_off: np.ndarray) -> np.ndarray:
    """Fraction map of ``count`` rotated superellipsoids (semi-axes in mm), placed where ``keep_off`` is False."""
    spacing = np.asarray(spacing, dtype=float)
    grids = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    frac = np.zeros(shape, dtype=np.float32)
    free = np.argwhere(~keep_off[::2, ::2, ::2]) * 2
    if len(free) == 0:
        return frac
    for _ in range(count):
        centre = free[rng.integers(len(free))] * spacing
        axes = rng.uniform(*size_mm, 3)
        power = rng.uniform(1.5, 4.0)
        rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        lo = np.maximum(np.floor((centre - axes.max() * 1.8) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((centre + axes.max() * 1.8) / spacing).astype(int) + 1, shape)
        z, y, x = np.meshgrid(*(g[a:b] for g, a, b in zip(grids, lo, hi, strict=True)), indexing="ij")
        rel = np.abs(np.stack([z - centre[0], y - centre[1], x - centre[2]], axis=-1) @ rotation) / axes
        level = (rel ** power).sum(axis=-1) ** (1.0 / power)
        value = np.clip((1.0 - level) * axes.min() / spacing.min() + 0.5, 0, 1)
        view = frac[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        np.maximum(view, value, out=view)
    return frac


def vein_tubes(rng, shape, spacing, sd: np.ndarray, count: int, radius_mm: tuple[float, float]) -> np.ndarray:
    """Signed distance (mm) of ``count`` smooth unlabelled tubes; about half start on the labelled tree's wall."""
    spacing = np.asarray(spacing, dtype=float)
    extent = (np.asarray(shape) - 1) * spacing
    wall = np.argwhere((sd > 0) & (sd < 1.5 * spacing.max()))
    segments = []
    for _ in range(count):
        points = rng.uniform(0.05, 0.95, (int(rng.integers(4, 7)), 3)) * extent
        if len(wall) and rng.random() < 0.5:
            points[0] = wall[rng.integers(len(wall))] * spacing
        curve = PchipInterpolator(np.linspace(0, 1, len(points)), points, axis=0)(np.linspace(0, 1, 40))
        radius = rng.uniform(*radius_mm)
        segments += [(a, b, radius, radius) for a, b in zip(curve[:-1], curve[1:], strict=True)]
    tubes, _ = segments_distance(segments, shape, spacing, float(3 * spacing.max()))
    return np.where(sd < 0, np.float32(3 * spacing.max()), tubes)  # the labelled lumen stays labelled


def _fraction(sd: np.ndarray, spacing) -> np.ndarray:
    width = float(np.prod(spacing) ** (1 / 3))
    return np.clip(0.5 - sd / width, 0, 1).astype(np.float32)


def _off_lumen(frac: np.ndarray, sd: np.ndarray, spacing) -> np.ndarray:
    return frac * np.clip(sd / float(min(spacing)) - 0.5, 0, 1)


def render_ct(rng, sd, radius, spacing) -> np.ndarray:
    """CTA in HU: tissue and fat, enhanced organs, bone (cortex + speckled marrow), dimmer veins, arteries."""
    shape, lumen = sd.shape, sd < 1.0
    tissue = 40 + 10 * smooth_noise(rng, shape, spacing, 1.0) + 15 * smooth_noise(rng, shape, spacing, 6.0)
    fat = smooth_noise(rng, shape, spacing, 4.0) > rng.uniform(0.3, 1.0)
    image = np.where(fat, -100 + 10 * smooth_noise(rng, shape, spacing, 1.0), tissue)
    organs = _off_lumen(_superellipsoids(rng, shape, spacing, int(rng.integers(1, 4)), (6.0, 18.0), lumen), sd, spacing)
    image += (rng.uniform(100, 220) - image) * organs
    outer = _off_lumen(_superellipsoids(rng, shape, spacing, int(rng.integers(1, 4)), (5.0, 14.0), lumen), sd, spacing)
    inner = ndimage.binary_erosion(outer > 0.5, iterations=int(rng.integers(1, 4)))
    marrow = 250 + 150 * (smooth_noise(rng, shape, spacing, 0.7) > 0.6)
    bone = np.where(inner, marrow, rng.uniform(1000, 1600))
    image += (bone - image) * outer
    veins = _fraction(vein_tubes(rng, shape, spacing, sd, int(rng.integers(1, 4)), (0.8, 3.0)), spacing)
    image += (rng.uniform(120, 220) - image) * veins
    image += (rng.uniform(280, 500) + 10 * smooth_noise(rng, shape, spacing, 1.0) - image) * _fraction(sd, spacing)
    image = ndimage.gaussian_filter(image, rng.uniform(0.4, 0.8) / np.asarray(spacing) * min(spacing))
    return (image + rng.uniform(15, 35) * rng.standard_normal(shape)).astype(np.float32)


def render_mr(rng, sd, radius, spacing) -> np.ndarray:
    """TOF-MRA: dark tissue in an elliptic body, a bright subcutaneous fat shell, slow-flow saturation, Rician noise."""
    shape, lumen = sd.shape, sd < 1.0
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij", sparse=True)
    body_r = np.sqrt((yy / rng.uniform(0.9, 1.1)) ** 2 + (xx / rng.uniform(0.9, 1.1)) ** 2) + 0 * zz
    image = np.where(body_r < 1.0, 110 + 15 * smooth_noise(rng, shape, spacing, 2.0), 5.0)
    shell = (body_r > rng.uniform(0.8, 0.9)) & (body_r < 1.0)
    image = np.where(shell & ~lumen, rng.uniform(250, 380), image)
    fat = _off_lumen(_superellipsoids(rng, shape, spacing, int(rng.integers(1, 5)), (2.0, 8.0), lumen), sd, spacing)
    image += (rng.uniform(220, 350) - image) * fat
    veins = _fraction(vein_tubes(rng, shape, spacing, sd, int(rng.integers(1, 3)), (0.5, 1.5)), spacing)
    image += (rng.uniform(160, 260) - image) * veins
    inflow = rng.uniform(550, 900) * (0.45 + 0.55 * np.clip(radius / max(float(radius.max()), 1e-6), 0, 1))
    image += (inflow - image) * _fraction(sd, spacing)
    image *= np.exp(0.3 * smooth_noise(rng, shape, spacing, 0.5 * min(np.asarray(shape) * spacing)))
    sigma = rng.uniform(10, 25)
    return np.hypot(image + sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape)).astype(np.float32)


def render_microscopy(rng, sd, radius, spacing) -> np.ndarray:
    """Light-sheet-like fluorescence: bright lumen, fluorescent cell bodies, stripes along y, depth loss, z-PSF."""
    shape, lumen = sd.shape, sd < 2 * min(spacing)
    signal = _fraction(sd, spacing)
    cells = _off_lumen(_superellipsoids(rng, shape, spacing, int(rng.integers(20, 60)),
                                        (1.5 * min(spacing), 3.5 * min(spacing)), lumen), sd, spacing)
    signal = signal + rng.uniform(0.4, 1.1) * cells + rng.uniform(0.05, 0.15)
    stripes = 1.0 + rng.uniform(0.1, 0.4) * ndimage.gaussian_filter1d(rng.standard_normal(shape[2]), 1.5)
    signal = signal * np.clip(stripes, 0.2, None)[None, None, :]
    signal *= np.exp(-np.arange(shape[0])[:, None, None] / rng.uniform(shape[0] * 0.7, shape[0] * 2.0))
    signal = ndimage.gaussian_filter(signal.astype(np.float32), (rng.uniform(1.0, 2.0), 0.6, 0.6))
    counts = rng.poisson(np.maximum(signal, 0) * rng.uniform(20, 80)).astype(np.float32)
    return counts + 100 + rng.uniform(1, 3) * rng.standard_normal(shape).astype(np.float32)


RENDERERS = {"ct": render_ct, "mr": render_mr, "microscopy": render_microscopy}
SPACING_MM = {"ct": (1.0, 0.7, 0.7), "mr": (0.8, 0.5, 0.5), "microscopy": (0.002, 0.001, 0.001)}
