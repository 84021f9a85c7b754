"""Domain-randomised tubular volumes for pretraining a modality-free vessel model (vesselFM's D_drand idea).

A case is drawn in two independent halves:

1. **Geometry** (:func:`random_geometry`): in voxel units (in-plane spacing 1, through-plane 1 or a
   random 1.5-3 for anisotropic acquisitions), one to three branching trees from the tree grower
   with random radii (sub-voxel to ~12 voxels), generations, tortuosity and branching, and with
   some probability a capillary-like mesh (random points joined to their nearest neighbours, so it
   has loops) of thin wavy tubes. The label is the lumen (``sd < 0``).
2. **Appearance** (:func:`random_appearance`): a background of smooth fields at random scales and
   random textures; the label-0 distractors registered in
   :mod:`vessel_seg.dataset_conversion.randomization_terms` (blobs, plates, bone-like shells, small
   spheres, speckle; near the tree and far from it; brighter, darker or exactly as bright as the
   vessels); vessels brighter *or darker* than the background (their contrast negated, or the whole
   image inverted), painted over the tissue or added to it, with random
   contrast and intensity drift along the tree; optional hollow vessels
   (bright wall, dark lumen); blur by an anisotropic Gaussian PSF; low resolution along one axis;
   a multiplicative bias field; Gaussian, Rician or Poisson noise; a gamma non-linearity;
   then the registered artefacts (k-space spikes, Gibbs ringing, sharpening, histogram shifts,
   slice-intensity jumps, ghosting); a random linear rescaling (so units mean nothing).

Every draw comes from one :class:`numpy.random.Generator` (:func:`vessel_seg.dataset_conversion.synthetic.case_rng`),
so a seed and an index always give the same case. The CT-, MR- and microscopy-like styles of
:mod:`vessel_seg.dataset_conversion.synthetic_render` and
:mod:`vessel_seg.dataset_conversion.synthetic_styles` are *not* used here: they are the unseen
styles of the zero-shot benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from vessel_seg.dataset_conversion.randomization_terms import ARTEFACTS, DISTRACTORS
from vessel_seg.dataset_conversion.synthetic_growth import TreeParams, grow_tree
from vessel_seg.dataset_conversion.synthetic_render import _paint_capsule, smooth_noise, vessel_distance
from vessel_seg.dataset_conversion.synthetic_tree import Body
from vessel_seg.imageio import ImageGeometry


@dataclass(frozen=True)
class RandomizationRanges:
    """The ranges the randomiser draws from (voxel units; ``(low, high)`` pairs are uniform unless noted).

    Attributes:
        extent_voxels: edge length of the (in-plane) volume in voxels.
        anisotropic_probability, through_plane_spacing: chance of a thick-slice case and its slice spacing
            (in in-plane voxels).
        trees: number of branching trees.
        root_radius_voxels: root radius, drawn log-uniformly.
        min_radius_voxels: thinnest vessel of a tree.
        mesh_probability: chance of a capillary-like mesh (with loops).
        contrast: vessel minus background, in units of the background's standard deviation.
        dark_vessel_probability: chance that vessels are darker than their surroundings.
        snr: vessel contrast over noise standard deviation, drawn log-uniformly.
        vessel_like_distractor_probability: chance that a distractor kind is drawn as bright (or dark)
            as the vessels themselves, so that only shape tells them apart.
        add_probability: chance that vessels are *added* to the tissue they cross instead of replacing it.
        inversion_probability: chance, among dark-vessel cases, that the whole rendered image is
            inverted (rather than the vessels alone drawn dark).
        background_inversion_probability: chance that the tissue (background and distractors) is
            inverted under vessels that stay bright, so no background polarity is typical.
    """

    extent_voxels: tuple[int, int] = (56, 88)
    anisotropic_probability: float = 0.25
    through_plane_spacing: tuple[float, float] = (1.5, 3.0)
    trees: tuple[int, int] = (1, 3)
    root_radius_voxels: tuple[float, float] = (0.6, 12.0)
    min_radius_voxels: tuple[float, float] = (0.4, 1.2)
    mesh_probability: float = 0.3
    contrast: tuple[float, float] = (1.0, 6.0)
    dark_vessel_probability: float = 0.3
    snr: tuple[float, float] = (1.5, 30.0)
    vessel_like_distractor_probability: float = 0.4
    add_probability: float = 0.5
    inversion_probability: float = 0.5
    background_inversion_probability: float = 0.3


@dataclass
class RandomizedCase:
    """One domain-randomised volume: ``image`` float32 and ``label`` uint8, both ``(Z, Y, X)``.

    ``geometry.spacing`` is in voxel units (in-plane 1); ``styles`` lists the random choices made
    (for the model card and for tests).
    """

    image: np.ndarray
    label: np.ndarray
    geometry: ImageGeometry
    styles: dict[str, object] = field(default_factory=dict)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _random_tree_params(rng: np.random.Generator, ranges: RandomizationRanges) -> TreeParams:
    root = _log_uniform(rng, *ranges.root_radius_voxels)
    thinnest = min(rng.uniform(*ranges.min_radius_voxels), root)
    return TreeParams(
        root_radius_voxels=(root, root * 1.05),
        min_radius_voxels=thinnest,
        max_generations=int(rng.integers(2, 8)),
        trifurcation_probability=rng.uniform(0.0, 0.3),
        side_branches_per_span=rng.uniform(0.0, 10.0),
        taper=(rng.uniform(0.6, 0.8), rng.uniform(0.85, 1.0)),
        tortuosity=rng.uniform(0.0, 3.0),
        attraction=rng.uniform(0.5, 2.5),
        stenosis_probability=0.3,
        aneurysm_probability=0.2,
        max_nodes=6000,
    )


def _mesh_distance(rng: np.random.Generator, shape, spacing, band: float) -> np.ndarray:
    """Signed distance (voxel units) to a capillary-like mesh: random nodes, each joined to 2-3 nearest, wavy edges."""
    extent = (np.asarray(shape) - 1) * spacing
    count = int(rng.integers(15, 60))
    nodes = rng.uniform(0, 1, (count, 3)) * extent
    radius = rng.uniform(0.5, 1.6)
    sd = np.full(shape, band, dtype=np.float32)
    rad = np.zeros(shape, dtype=np.float32)
    grids = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    dist = np.linalg.norm(nodes[:, None] - nodes[None], axis=2)
    np.fill_diagonal(dist, np.inf)
    edges = {tuple(sorted((i, int(j)))) for i in range(count) for j in np.argsort(dist[i])[: rng.integers(2, 4)]}
    for i, j in sorted(edges):
        a, b = nodes[i], nodes[j]
        # Three pieces with jittered joints: capillaries wind.
        joints = [a, *(a + (b - a) * t + rng.normal(0, 0.12 * dist[i, j], 3) for t in (1 / 3, 2 / 3)), b]
        r = radius * rng.uniform(0.8, 1.25)
        for p, q in zip(joints[:-1], joints[1:], strict=True):
            _paint_capsule(sd, rad, grids, spacing, p, q, r, r, band)
    return sd


def random_geometry(rng: np.random.Generator, ranges: RandomizationRanges) -> tuple[np.ndarray, ImageGeometry, dict]:
    """Signed distance ``sd`` (voxel units, negative in the lumen), its geometry and the choices made."""
    extent = int(rng.integers(ranges.extent_voxels[0], ranges.extent_voxels[1] + 1))
    z_spacing = rng.uniform(*ranges.through_plane_spacing) if rng.random() < ranges.anisotropic_probability else 1.0
    shape = (max(16, int(round(extent / z_spacing))), extent, extent)
    spacing = (float(z_spacing), 1.0, 1.0)
    geometry = ImageGeometry(shape=shape, spacing=spacing, origin=(0.0, 0.0, 0.0),
                             direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    band = 3.0 * z_spacing
    sd = np.full(shape, band, dtype=np.float32)
    trees = int(rng.integers(ranges.trees[0], ranges.trees[1] + 1))
    radii = []
    for _ in range(trees):
        span = (np.asarray(shape) - 1) * spacing
        body = Body(z_range_mm=(0.0, float(span[0])), center_yx_mm=tuple(map(float, span[1:] * rng.uniform(0.4, 0.6, 2))),
                    semi_axes_yx_mm=tuple(map(float, span[1:] * rng.uniform(0.45, 0.7, 2))))
        params = _random_tree_params(rng, ranges)
        tree = grow_tree(rng, geometry, body, params)
        np.minimum(sd, vessel_distance(tree, shape, spacing, band)[0], out=sd)
        radii.append(round(params.root_radius_voxels[0], 2))
    mesh = rng.random() < ranges.mesh_probability
    if mesh:
        np.minimum(sd, _mesh_distance(rng, shape, spacing, band), out=sd)
    return sd, geometry, {"trees": trees, "root_radii_voxels": radii, "mesh": bool(mesh), "z_spacing": round(z_spacing, 2)}


def _background(rng: np.random.Generator, shape, spacing) -> tuple[np.ndarray, dict]:
    """Zero-mean background of roughly unit standard deviation: smooth fields at 1-3 random scales, maybe a texture."""
    scales = sorted(float(_log_uniform(rng, 1.0, 24.0)) for _ in range(int(rng.integers(1, 4))))
    image = np.zeros(shape, dtype=np.float32)
    for sigma in scales:
        image += rng.uniform(0.3, 1.0) * smooth_noise(rng, shape, spacing, sigma)
    texture = rng.random() < 0.4
    if texture:  # two-level texture (fat/tissue, cells): thresholded smooth noise
        level = smooth_noise(rng, shape, spacing, rng.uniform(1.0, 4.0)) > rng.uniform(-0.5, 1.0)
        image += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0) * level
    image -= image.mean()
    image /= image.std() + 1e-6
    return image, {"background_scales": [round(s, 1) for s in scales], "texture": bool(texture)}


def _distractors(rng: np.random.Generator, shape, spacing, sd: np.ndarray, contrast: float,
                 ranges: RandomizationRanges) -> tuple[np.ndarray, dict]:
    """Intensity (background-std units) of the registered label-0 distractors, kept off the lumen.

    Each kind that is drawn gets its own sign and brightness: 1-8 background stds, or (with
    ``vessel_like_distractor_probability``) the vessels' own contrast within +-30 %.
    """
    layer = np.zeros(shape, dtype=np.float32)
    kinds = []
    for term in DISTRACTORS:
        if rng.random() >= term.probability:
            continue
        fraction = term.apply(rng, shape, spacing, sd)
        if rng.random() < ranges.vessel_like_distractor_probability:
            brightness = contrast * rng.uniform(0.7, 1.3)
        else:
            brightness = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 8.0)
        layer += np.float32(brightness) * fraction
        kinds.append(term.name)
    layer *= np.clip(sd - 0.5, 0, 1)  # distractors touch vessels but never replace lumen voxels: label 0
    return layer, {"distractors": kinds}


def _vessel_layer(rng: np.random.Generator, sd: np.ndarray, spacing) -> tuple[np.ndarray, dict]:
    """Vessel intensity profile (0-1 scale): partial-volume lumen, drift along the tree, maybe hollow."""
    width = float(np.prod(spacing) ** (1 / 3))
    inside = np.clip(0.5 - sd / width, 0, 1)
    hollow = rng.random() < 0.1
    if hollow:  # bright wall, dim lumen (black-blood MR, stained vessel walls in microscopy)
        inside = inside * (0.35 + 0.65 * np.clip(1.0 + sd / 1.5, 0, 1))
    drift = 1.0 + rng.uniform(0.0, 0.4) * smooth_noise(rng, sd.shape, spacing, rng.uniform(4.0, 16.0))
    return (inside * np.clip(drift, 0.3, None)).astype(np.float32), {"hollow": bool(hollow)}


def _blur_and_resolution(rng: np.random.Generator, image: np.ndarray, spacing) -> tuple[np.ndarray, dict]:
    """Anisotropic Gaussian PSF, then (sometimes) low resolution along one axis (downsample and back)."""
    sigma = rng.uniform(0.0, 1.2, 3)
    if rng.random() < 0.3:  # a microscope's PSF is long along the optical axis
        sigma[rng.integers(3)] = rng.uniform(1.0, 3.0)
    sigma_voxels = sigma / np.asarray(spacing)
    if sigma_voxels.max() > 0.2:
        image = ndimage.gaussian_filter(image, sigma_voxels, mode="nearest")
    factor = 1
    if rng.random() < 0.2:
        axis, factor = int(rng.integers(3)), int(rng.integers(2, 5))
        zoom = [1.0] * 3
        zoom[axis] = 1.0 / factor
        small = ndimage.zoom(image, zoom, order=1, mode="nearest")
        image = ndimage.zoom(small, np.asarray(image.shape) / np.asarray(small.shape), order=1, mode="nearest")
        image = image[tuple(slice(0, n) for n in image.shape)]
    return image.astype(np.float32), {"psf_sigma": [round(float(s), 2) for s in sigma], "low_res_factor": factor}


def _noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> tuple[np.ndarray, str]:
    """Gaussian, Rician or Poisson noise of standard deviation about ``sigma`` (Poisson: at the mean level)."""
    model = str(rng.choice(["gaussian", "rician", "poisson"]))
    if model == "gaussian":
        return image + sigma * rng.standard_normal(image.shape, dtype=np.float32), model
    shifted = image - image.min() + sigma  # both need non-negative signal
    if model == "rician":
        noisy = np.hypot(shifted + sigma * rng.standard_normal(image.shape, dtype=np.float32),
                         sigma * rng.standard_normal(image.shape, dtype=np.float32))
    else:
        gain = float(shifted.mean()) / sigma**2  # counts per unit such that noise ~ sigma at the mean
        noisy = rng.poisson(np.maximum(shifted * gain, 0)).astype(np.float32) / gain
    return noisy.astype(np.float32), model


def _artefacts(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The registered acquisition artefacts (k-space spikes, Gibbs ringing, sharpening, histogram shifts, ...)."""
    found = []
    for term in ARTEFACTS:
        if rng.random() < term.probability:
            image = term.apply(rng, image)
            found.append(term.name)
    return image, found


def random_appearance(
    rng: np.random.Generator, sd: np.ndarray, spacing, ranges: RandomizationRanges
) -> tuple[np.ndarray, dict]:
    """Render a float32 image of the lumen ``sd`` with random background, distractors, contrast and acquisition."""
    shape = sd.shape
    background, styles = _background(rng, shape, spacing)
    dark = rng.random() < ranges.dark_vessel_probability
    invert = dark and rng.random() < ranges.inversion_probability
    contrast = rng.uniform(*ranges.contrast) * (-1.0 if dark and not invert else 1.0)
    distractors, more = _distractors(rng, shape, spacing, sd, contrast, ranges)
    vessels, hollow = _vessel_layer(rng, sd, spacing)
    tissue = background + distractors
    background_inverted = not dark and rng.random() < ranges.background_inversion_probability
    if background_inverted:
        tissue = -tissue
    # Added: contrast on top of the tissue (fluorescence over autofluorescence); else painted: vessels
    # replace the tissue they occupy (partial volume).
    added = rng.random() < ranges.add_probability
    kept_tissue = tissue if added else tissue * (1.0 - np.clip(vessels, 0, 1))
    image = kept_tissue + contrast * vessels
    if invert:  # the whole image inverted: dark vessels on a background whose textures are inverted too
        image = -image
    image, blur = _blur_and_resolution(rng, image, spacing)
    bias_strength = rng.uniform(0.0, 0.6)
    image = (image - image.min() + 1.0) * np.exp(bias_strength * smooth_noise(rng, shape, spacing, rng.uniform(15, 40)))
    snr = _log_uniform(rng, *ranges.snr)
    image, noise = _noise(rng, image.astype(np.float32), abs(contrast) / snr)
    gamma = 1.0
    if rng.random() < 0.4:
        lo, hi = float(image.min()), float(image.max())
        gamma = _log_uniform(rng, 0.5, 2.0)
        image = ((image - lo) / max(hi - lo, 1e-6)) ** gamma
    image, artefacts = _artefacts(rng, image)
    image = image * _log_uniform(rng, 0.01, 1000.0) + rng.uniform(-1000.0, 1000.0)
    styles.update(more, **hollow, **blur, dark_vessels=bool(dark), inverted=bool(invert), added=bool(added),
                  background_inverted=bool(background_inverted),
                  contrast=round(float(contrast), 2),
                  snr=round(snr, 2), noise=noise, bias=round(bias_strength, 2), gamma=round(gamma, 2), artefacts=artefacts)
    return image.astype(np.float32), styles


def randomized_case(rng: np.random.Generator, ranges: RandomizationRanges | None = None) -> RandomizedCase:
    """One domain-randomised case (geometry, then appearance, from the same generator)."""
    ranges = ranges or RandomizationRanges()
    sd, geometry, styles = random_geometry(rng, ranges)
    image, appearance = random_appearance(rng, sd, geometry.spacing, ranges)
    styles.update(appearance)
    return RandomizedCase(image=image, label=(sd < 0).astype(np.uint8), geometry=geometry, styles=styles)
