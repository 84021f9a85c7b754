"""Rendering a vessel tree into a label and a CT-like or MR-like (TOF MRA) image.

Everything works in the local frame ``q = index_zyx * spacing`` (mm). The lumen is described by a
signed distance ``sd`` (mm, negative inside) to the union of tapered tubes and aneurysm spheres,
built segment by segment inside each segment's bounding box only (cost ~ vessel volume, not
image volume). From it:

- label = voxel centre inside the lumen, ``sd < 0``;
- partial volume: the vessel fraction of a voxel is ``clip(0.5 - sd / w, 0, 1)`` with ``w`` the
  geometric mean spacing, so the fraction is above one half exactly where the label is 1.

The image is a textured background (two scales of smoothed noise, fat-like patches), unlabelled
bright blobs (bone in CT, fat/flow artefacts in MR), the vessels, a smooth multiplicative bias
field and noise (Gaussian in CT, Rician in MR). Outside the body ellipse the image is exactly 0, so
that cropping to the non-zero region trims the borders as it does on real scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vessel_seg.dataset_conversion.synthetic_tree import Body, VesselTree

MODALITIES = ("ct", "mr")
GAP_MM = 1.0  # least distance between a distractor blob and a vessel surface


def _linear_weights(n: int, m: int, factor: int) -> np.ndarray:
    """``(n, m)`` matrix that linearly interpolates ``m`` coarse samples spaced ``factor`` fine samples apart."""
    pos = np.arange(n) / factor
    left = np.minimum(np.floor(pos).astype(int), m - 2)
    frac = (pos - left).astype(np.float32)
    weights = np.zeros((n, m), dtype=np.float32)
    weights[np.arange(n), left] = 1 - frac
    weights[np.arange(n), left + 1] = frac
    return weights


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], sigma_mm: float
) -> np.ndarray:
    """Gaussian-smoothed white noise with correlation length ``sigma_mm``, rescaled to zero mean, unit std.

    Wide kernels are applied on a grid coarsened by an integer factor per axis, then upsampled
    linearly (one small matrix product per axis), so the cost does not grow with ``sigma_mm``.
    """
    sigma_vox = np.asarray([sigma_mm / s for s in spacing])
    factor = np.maximum(np.floor(sigma_vox / 2.0), 1).astype(int)
    coarse_shape = tuple(int(np.ceil(n / f)) + 1 for n, f in zip(shape, factor, strict=True))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), sigma_vox / factor)
    if np.any(factor > 1):
        wz, wy, wx = (_linear_weights(n, m, int(f)) for n, m, f in zip(shape, coarse_shape, factor, strict=True))
        field = np.matmul(wy, field @ wx.T)  # x then y, as batched matrix products
        field = (wz @ field.reshape(coarse_shape[0], -1)).reshape(shape)
    field = field[tuple(slice(0, n) for n in shape)]
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _paint_capsule(sd, rad, grids, spacing, a, b, ra, rb, band, rad_value: float | None = None) -> None:
    """Lower ``sd`` to the signed distance (mm) of a tapered tube from ``a`` to ``b`` inside its bounding box.

    The distance to the tube is approximated as the distance to the axis point minus the
    interpolated radius there (exact for constant radius). ``rad`` receives the tube radius (or
    ``rad_value``) where this tube is the nearest surface.
    """
    reach = max(ra, rb) + band
    lo = np.maximum(np.floor((np.minimum(a, b) - reach) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((np.maximum(a, b) + reach) / spacing).astype(int) + 1, sd.shape)
    if np.any(hi <= lo):
        return
    z = grids[0][lo[0]:hi[0], None, None] - a[0]
    y = grids[1][None, lo[1]:hi[1], None] - a[1]
    x = grids[2][None, None, lo[2]:hi[2]] - a[2]
    v = b - a
    length2 = float(v @ v)
    # A zero-length segment is a sphere (aneurysm sac).
    t = np.clip((z * v[0] + y * v[1] + x * v[2]) / length2, 0.0, 1.0) if length2 > 0 else np.zeros((1, 1, 1))
    dist = np.sqrt((z - t * v[0]) ** 2 + (y - t * v[1]) ** 2 + (x - t * v[2]) ** 2)
    radius = ra + t * (rb - ra)
    here = dist - radius
    box = tuple(slice(l, h) for l, h in zip(lo, hi, strict=True))
    view, rview = sd[box], rad[box]
    closer = here < view
    view[closer] = here[closer]
    rview[closer] = rad_value if rad_value is not None else np.broadcast_to(radius, here.shape)[closer]


def vessel_distance(tree: VesselTree, shape, spacing, band: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (mm, clipped at ``band``) to the lumen, and the radius (mm) of the nearest vessel.

    Aneurysm sacs count as lumen; their "radius" is that of the vessel that carries them.
    """
    spacing = np.asarray(spacing, dtype=float)
    sd = np.full(shape, band, dtype=np.float32)
    rad = np.zeros(shape, dtype=np.float32)
    grids = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    q = tree.indices_zyx() * spacing
    radii = tree.radii_mm()
    for node in tree.nodes:
        if node.parent >= 0:
            _paint_capsule(sd, rad, grids, spacing, q[node.parent], q[node.id], radii[node.parent], radii[node.id], band)
    for sac in tree.aneurysms:
        centre = np.asarray(sac.index_zyx) * spacing
        _paint_capsule(sd, rad, grids, spacing, centre, centre, sac.radius_mm, sac.radius_mm, band, radii[sac.node])
    return sd, rad


def segments_distance(segments, shape, spacing, band: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (mm, clipped at ``band``) to a union of tapered tubes, and the nearest tube's radius (mm).

    ``segments`` is an iterable of ``(a, b, ra, rb)``: end points in the local frame (mm, ``z, y, x``) and
    radii (mm) at each end. For trees from other generators (e.g. svVascularize's segment tables).
    """
    spacing = np.asarray(spacing, dtype=float)
    sd = np.full(shape, band, dtype=np.float32)
    rad = np.zeros(shape, dtype=np.float32)
    grids = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    for a, b, ra, rb in segments:
        _paint_capsule(sd, rad, grids, spacing, np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                       float(ra), float(rb), band)
    return sd, rad


def ellipsoid_distance(grids, lo, hi, centre, rotation, semi_axes) -> np.ndarray:
    """Approximate signed distance (mm) to a rotated ellipsoid on the box ``lo:hi`` of the grid."""
    z, y, x = np.meshgrid(*(g[l:h] for g, l, h in zip(grids, lo, hi, strict=True)), indexing="ij")
    rel = np.stack([z - centre[0], y - centre[1], x - centre[2]], axis=-1) @ rotation
    return (np.linalg.norm(rel / semi_axes, axis=-1) - 1.0) * min(semi_axes)


@dataclass
class Blob:
    """An unlabelled bright distractor: a rotated ellipsoid (local frame, mm)."""

    centre: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray


def place_blobs(rng: np.random.Generator, body: Body, tree: VesselTree, spacing, count: int) -> list[Blob]:
    """Up to ``count`` ellipsoids inside the body, at least ``GAP_MM`` away from every vessel and sac.

    Each blob takes the roomiest of a few random centres and is shrunk (keeping its shape) to fit
    between the vessels and the body wall, so that dense trees in small volumes still get some.
    Blobs smaller than one in-plane voxel across are dropped.
    """
    spacing = np.asarray(spacing, dtype=float)
    sacs = tree.aneurysms
    q = np.concatenate([tree.indices_zyx(), np.array([a.index_zyx for a in sacs]).reshape(-1, 3)]) * spacing
    radii = np.concatenate([tree.radii_mm(), [a.radius_mm for a in sacs]])
    span = 2.0 * min(body.semi_axes_yx_mm)
    blobs: list[Blob] = []
    for _ in range(count):
        rho, phi = 0.9 * np.sqrt(rng.uniform(0, 1, 16)), rng.uniform(0, 2 * np.pi, 16)
        centres = np.column_stack([
            rng.uniform(*body.z_range_mm, 16),
            body.center_yx_mm[0] + rho * body.semi_axes_yx_mm[0] * np.cos(phi),
            body.center_yx_mm[1] + rho * body.semi_axes_yx_mm[1] * np.sin(phi),
        ])
        clearance = (np.linalg.norm(centres[:, None] - q[None], axis=2) - radii).min(axis=1) - GAP_MM
        clearance = np.minimum(clearance, [body.wall_distance(c) - 0.5 for c in centres])
        best = int(np.argmax(clearance))
        axes = rng.uniform(0.04, 0.12, 3) * span
        if rng.random() < 0.4:
            axes[rng.integers(3)] *= 2.5  # rod-like (rib, vertebral process)
        axes *= min(1.0, clearance[best] / axes.max())
        if axes.min() >= 0.5 * spacing[1:].min():
            rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
            blobs.append(Blob(centres[best], axes, rotation))
    return blobs


def blob_fraction(blobs: list[Blob], shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume fraction of the blobs and a rim weight (1 at the surface, 0 deeper than 1 mm)."""
    spacing = np.asarray(spacing, dtype=float)
    width = float(np.prod(spacing) ** (1 / 3))
    grids = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    frac = np.zeros(shape, dtype=np.float32)
    rim = np.zeros(shape, dtype=np.float32)
    for blob in blobs:
        reach = blob.semi_axes.max() + width
        lo = np.maximum(np.floor((blob.centre - reach) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((blob.centre + reach) / spacing).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        sd = ellipsoid_distance(grids, lo, hi, blob.centre, blob.rotation, blob.semi_axes)
        box = tuple(slice(l, h) for l, h in zip(lo, hi, strict=True))
        np.maximum(frac[box], np.clip(0.5 - sd / width, 0, 1), out=frac[box])
        np.maximum(rim[box], np.clip(1.0 + sd, 0, 1) * (sd < width), out=rim[box])
    return frac, rim


def render_image(
    rng: np.random.Generator,
    sd: np.ndarray,
    radius_map: np.ndarray,
    body: Body,
    blobs: list[Blob],
    spacing,
    modality: str,
    root_radius: float,
) -> np.ndarray:
    """Compose the float32 ``(Z, Y, X)`` image; ``modality`` is ``"ct"`` (HU) or ``"mr"`` (arbitrary units).

    CT: soft tissue ~40 HU with fat patches (~-90 HU), lumen 300-450 HU, bone 700-1500 HU,
    bias on attenuation (``HU + 1000``) of a few percent, Gaussian noise 10-30 HU.
    MR (TOF-like): tissue ~150, lumen 450-750 and dimmer in small vessels (slow flow saturates),
    fat/flow-artefact blobs at 60-95 % of the lumen, bias field of ~20 %, Rician noise.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    shape = sd.shape
    width = float(np.prod(spacing) ** (1 / 3))
    vessel = np.clip(0.5 - sd / width, 0, 1)
    fine = smooth_noise(rng, shape, spacing, 0.8)
    coarse = smooth_noise(rng, shape, spacing, 4.0)
    patches = 1.0 / (1.0 + np.exp(-(smooth_noise(rng, shape, spacing, 3.0) - 1.0) / 0.15))
    blob_frac, rim = blob_fraction(blobs, shape, spacing)
    bias = smooth_noise(rng, shape, spacing, 0.4 * min(body.semi_axes_yx_mm))
    if modality == "ct":
        tissue = 45 + 12 * fine + 20 * coarse
        tissue += (-90 + 10 * fine - tissue) * patches
        bone = rng.uniform(700, 1000) + 60 * fine + rng.uniform(200, 500) * rim
        image = tissue + (bone - tissue) * blob_frac
        lumen = rng.uniform(300, 450) + 15 * fine
        image += (lumen - image) * vessel
        image = (image + 1000) * np.exp(0.03 * bias) - 1000
        image += rng.uniform(10, 30) * rng.standard_normal(shape, dtype=np.float32)
    else:
        tissue = 150 + 15 * fine + 25 * coarse
        tissue += (250 + 20 * fine - tissue) * patches * 0.6
        lumen_base = rng.uniform(450, 750)
        lumen = lumen_base * (0.65 + 0.35 * np.clip(radius_map / root_radius, 0, 1)) * (1 + 0.05 * fine)
        bright = lumen_base * rng.uniform(0.6, 0.95) * (1 + 0.1 * fine)
        image = tissue + (bright - tissue) * blob_frac
        image += (lumen - image) * vessel
        image *= np.exp(0.2 * bias)
        sigma = rng.uniform(8, 20)
        image = np.hypot(image + sigma * rng.standard_normal(shape, dtype=np.float32),
                         sigma * rng.standard_normal(shape, dtype=np.float32))
    image = image.astype(np.float32)
    image[~body.mask(shape, spacing)] = 0.0
    return image
