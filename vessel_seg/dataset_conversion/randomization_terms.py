"""The registered terms of domain randomisation v2: label-0 distractors and acquisition artefacts.

Two registries, each a list of :class:`Term` (a name, the chance it is applied to a case, and a
function); :func:`vessel_seg.dataset_conversion.domain_randomization.random_appearance` walks them in
order. A new term is one :func:`register_distractor` or :func:`register_artefact` call, no edit of the
renderer. All sizes are in voxel units of the in-plane spacing (``spacing`` is ``(z, 1, 1)``).

Distractors return a partial-volume *fraction* map (0-1, float32, ``(Z, Y, X)``); the renderer gives
each its own brightness (brighter or darker than the background, sometimes as bright as the vessels
themselves, so that intensity alone never tells vessel from non-vessel) and keeps the lumen free,
so every distractor carries label 0. Half of them are placed *near* the tree (centred within a few
voxels of a vessel wall), the rest anywhere.

Artefacts take and return the float32 image in arbitrary units (applied after blur, bias and noise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vessel_seg.dataset_conversion.synthetic_render import ellipsoid_distance, smooth_noise


@dataclass(frozen=True)
class Term:
    """One randomisation term: applied to a case with ``probability``; ``apply`` does the work."""

    name: str
    probability: float
    apply: Callable


DISTRACTORS: list[Term] = []
ARTEFACTS: list[Term] = []


def register_distractor(name: str, probability: float):
    """Decorator: add a distractor ``f(rng, shape, spacing, sd) -> fraction`` to :data:`DISTRACTORS`."""
    def wrap(func):
        DISTRACTORS.append(Term(name, probability, func))
        return func
    return wrap


def register_artefact(name: str, probability: float):
    """Decorator: add an artefact ``f(rng, image) -> image`` to :data:`ARTEFACTS`."""
    def wrap(func):
        ARTEFACTS.append(Term(name, probability, func))
        return func
    return wrap


def _centres(rng: np.random.Generator, shape, spacing, sd: np.ndarray, count: int) -> np.ndarray:
    """``count`` centres (voxel units, z scaled by its spacing): half near a vessel wall, half anywhere."""
    extent = (np.asarray(shape) - 1) * np.asarray(spacing)
    centres = rng.uniform(0, 1, (count, 3)) * extent
    wall = np.argwhere((sd > 0.5) & (sd < 2.5))
    if len(wall):
        near = rng.random(count) < 0.5
        picks = wall[rng.integers(0, len(wall), int(near.sum()))] * np.asarray(spacing)
        centres[near] = picks
    return centres


def _box(centre: np.ndarray, reach: float, shape, spacing) -> tuple[np.ndarray, np.ndarray] | None:
    lo = np.maximum(np.floor((centre - reach) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre + reach) / spacing).astype(int) + 1, shape)
    return None if np.any(hi <= lo) else (lo, hi)


def ellipsoids(rng: np.random.Generator, shape, spacing, sd: np.ndarray, count: int,
               size: tuple[float, float], shell: tuple[float, float] | None = None,
               thin: tuple[float, float] | None = None) -> np.ndarray:
    """Fraction map of ``count`` rotated ellipsoids with semi-axes drawn from ``size``.

    With ``thin=(low, high)`` one random semi-axis is drawn from that range instead (a plate).
    With ``shell=(low, high)`` each is hollow: a rim of that thickness (cortical bone) around an
    interior at 0.3-0.6 of the rim's weight (marrow).
    """
    spacing = np.asarray(spacing, dtype=float)
    frac = np.zeros(shape, dtype=np.float32)
    grids = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    for centre in _centres(rng, shape, spacing, sd, count):
        axes = np.asarray([rng.uniform(*size) for _ in range(3)])
        if thin is not None:
            axes[rng.integers(3)] = rng.uniform(*thin)
        rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        box = _box(centre, axes.max() + 1.0, shape, spacing)
        if box is None:
            continue
        lo, hi = box
        dist = ellipsoid_distance(grids, lo, hi, centre, rotation, axes)
        value = np.clip(0.5 - dist, 0, 1)
        if shell is not None:
            thickness = rng.uniform(*shell)
            value = np.where(dist < -thickness, rng.uniform(0.3, 0.6), value)
        view = frac[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        np.maximum(view, value, out=view)
    return frac


@register_distractor("blobs", 0.8)
def _blobs(rng, shape, spacing, sd):
    """Organs, fat, cysts, contrast-filled cavities: solid ellipsoids of 2-16 voxels."""
    return ellipsoids(rng, shape, spacing, sd, int(rng.integers(1, 10)), (2.0, 16.0))


@register_distractor("plates", 0.4)
def _plates(rng, shape, spacing, sd):
    """Membranes, dura, cortical plates: one semi-axis of 0.6-1.5 voxels, the other two of 4-24."""
    return ellipsoids(rng, shape, spacing, sd, int(rng.integers(1, 4)), (4.0, 24.0), thin=(0.6, 1.5))


@register_distractor("shells", 0.35)
def _shells(rng, shape, spacing, sd):
    """Bone-like hollow shells: a bright cortex 1-3 voxels thick around a dimmer marrow."""
    return ellipsoids(rng, shape, spacing, sd, int(rng.integers(1, 4)), (5.0, 22.0), shell=(1.0, 3.0))


@register_distractor("spheres", 0.35)
def _spheres(rng, shape, spacing, sd):
    """Cells, nuclei, calcifications: many small spheres of 1-2.5 voxels."""
    return ellipsoids(rng, shape, spacing, sd, int(rng.integers(10, 80)), (1.0, 2.5))


@register_distractor("speckle", 0.3)
def _speckle(rng, shape, spacing, sd):
    """Trabecular bone, parenchyma, granular tissue: thresholded fine noise inside a smooth region."""
    grain = smooth_noise(rng, shape, spacing, rng.uniform(0.6, 1.5)) > rng.uniform(0.8, 1.6)
    region = smooth_noise(rng, shape, spacing, rng.uniform(6.0, 16.0)) > rng.uniform(-0.3, 0.8)
    return ndimage.gaussian_filter((grain & region).astype(np.float32), 0.5)


@register_artefact("kspace_spike", 0.15)
def _kspace_spike(rng, image):
    """A spike in k-space: a plane wave (herringbone/stripes) over the whole volume."""
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) / n for n in image.shape), indexing="ij", sparse=True)
    k = rng.uniform(0.1, 0.45, 3) * np.asarray(image.shape) * rng.choice([-1, 1], 3)
    phase = sum(2 * np.pi * kk * g for kk, g in zip(k, grids, strict=True)) + rng.uniform(0, 2 * np.pi)
    return image + rng.uniform(0.05, 0.3) * float(image.std()) * np.cos(phase).astype(np.float32)


@register_artefact("gibbs", 0.1)
def _gibbs(rng, image):
    """Gibbs ringing: k-space truncated to 40-80 % of its extent along each axis."""
    spectrum = np.fft.fftshift(np.fft.fftn(image))
    for axis, n in enumerate(image.shape):
        keep = max(2, int(n * rng.uniform(0.4, 0.8)) // 2)
        cut = np.zeros(n, dtype=bool)
        cut[n // 2 - keep: n // 2 + keep] = True
        spectrum *= cut.reshape([-1 if a == axis else 1 for a in range(3)])
    return np.real(np.fft.ifftn(np.fft.ifftshift(spectrum))).astype(np.float32)


@register_artefact("sharpen", 0.2)
def _sharpen(rng, image):
    """Unsharp masking (vendor edge enhancement): image + a * (image - blurred)."""
    blurred = ndimage.gaussian_filter(image, rng.uniform(0.7, 2.0))
    return (image + rng.uniform(0.5, 2.0) * (image - blurred)).astype(np.float32)


@register_artefact("histogram_shift", 0.2)
def _histogram_shift(rng, image):
    """A random monotone piecewise-linear intensity map through 3-5 percentile knots (windowing, vendor LUTs)."""
    knots = np.sort(rng.uniform(0, 100, int(rng.integers(3, 6))))
    xs = np.percentile(image, np.concatenate([[0.0], knots, [100.0]]))
    ys = np.cumsum(rng.uniform(0.2, 1.0, len(xs)))
    return np.interp(image, np.maximum.accumulate(xs), ys).astype(np.float32)


@register_artefact("slice_gain", 0.15)
def _slice_gain(rng, image):
    """Slice-intensity jumps (interleaved acquisition, uneven illumination)."""
    axis = int(rng.integers(3))
    gains = 1.0 + rng.uniform(0.02, 0.15) * rng.standard_normal(image.shape[axis])
    return image * gains.reshape([-1 if a == axis else 1 for a in range(3)]).astype(np.float32)


@register_artefact("ghost", 0.1)
def _ghost(rng, image):
    """Motion ghosting: a shifted, attenuated copy of the image."""
    axis, shift = int(rng.integers(3)), int(rng.integers(4, max(5, image.shape[1] // 3)))
    return image + rng.uniform(0.1, 0.3) * np.roll(image, shift, axis=axis)
