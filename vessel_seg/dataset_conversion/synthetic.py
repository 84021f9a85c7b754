"""Synthetic vessel datasets: random branching trees rendered as CT- or MR-like volumes (or microscopy-like capillary beds).

This is the built-in dataset of the demo and of the tests. :func:`generate_case` makes one volume
with its label and ground-truth tree; :func:`generate_dataset` writes a raw dataset in nnU-Net v2's
layout::

    DatasetNNN_Name/
        dataset.json                 channel_names {"0": "CT"} or {"0": "MRA"}, labels, numTraining
        imagesTr/synth_000_0000.nii.gz   labelsTr/synth_000.nii.gz
        imagesTs/synth_012_0000.nii.gz   labelsTs/synth_012.nii.gz   (held-out cases)
        trees/synth_000.json         ground-truth centreline tree (see VesselTree.to_json)

Case ``k`` is drawn from ``SeedSequence(seed, spawn_key=(k,))``, so a case does not depend on how
many others are generated, and the same seed always gives the same files.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vessel_seg.dataset import DatasetInfo
from vessel_seg.dataset_conversion.synthetic_growth import Body, TreeParams, grow_tree
from vessel_seg.dataset_conversion.synthetic_render import (
    MODALITIES,
    place_blobs,
    render_image,
    vessel_distance,
)
from vessel_seg.dataset_conversion.synthetic_styles import MICROSCOPY_SPACING, microscopy_case
from vessel_seg.dataset_conversion.synthetic_tree import VesselTree
from vessel_seg.errors import DatasetError
from vessel_seg.imageio import ImageGeometry, write_image
from vessel_seg.paths import DATASET_NAME_RE, dataset_name
from vessel_seg.paths import raw_root as default_raw_root
from vessel_seg.resources import check_memory

log = logging.getLogger(__name__)

DEFAULT_SPACING = (0.8, 0.5, 0.5)
CHANNEL_NAMES = {"ct": "CT", "mr": "MRA", "microscopy": "fluorescence"}
STYLES = tuple(CHANNEL_NAMES)  # "microscopy": synthetic_styles.microscopy_case (no tree file)
FILE_ENDING = ".nii.gz"


@dataclass
class SyntheticCase:
    """One synthetic volume.

    Attributes:
        image: ``(Z, Y, X)`` float32 intensities (HU-like for CT, arbitrary positive units for MR).
        label: ``(Z, Y, X)`` uint8, 1 where the voxel centre lies inside a vessel lumen.
        geometry: placement of the arrays in physical space.
        tree: the ground-truth centreline tree (None for the microscopy style's capillary bed).
    """

    image: np.ndarray
    label: np.ndarray
    geometry: ImageGeometry
    tree: VesselTree | None


def _make_geometry(rng: np.random.Generator, shape, spacing, random_flips: bool) -> ImageGeometry:
    extent_xyz = (np.asarray(shape) * np.asarray(spacing))[::-1]
    origin = np.round(-0.5 * extent_xyz + rng.uniform(-20, 20, 3) + [0.0, 0.0, -100.0], 2)
    signs = np.where(rng.random(3) < 0.5, -1.0, 1.0) if random_flips else np.ones(3)
    direction = tuple(float(v) for v in np.diag(signs).ravel())
    return ImageGeometry(shape=tuple(shape), spacing=tuple(spacing), origin=tuple(map(float, origin)),
                         direction=direction)


def _make_body(rng: np.random.Generator, shape, spacing) -> Body:
    extent = (np.asarray(shape) - 1) * np.asarray(spacing)
    centre = extent[1:] * (0.5 + rng.uniform(-0.03, 0.03, 2))
    semi_axes = extent[1:] * rng.uniform(0.40, 0.47, 2)
    return Body(z_range_mm=(0.0, float(extent[0])), center_yx_mm=tuple(map(float, centre)),
                semi_axes_yx_mm=tuple(map(float, semi_axes)))


def generate_case(
    rng: np.random.Generator,
    size: int | tuple[int, int, int] = 96,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    modality: str = "ct",
    params: TreeParams | None = None,
    random_flips: bool = False,
    num_distractors: int | None = None,
) -> SyntheticCase:
    """Generate one synthetic vessel volume.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw; the same state gives the same case.
    size : int or (int, int, int)
        Array shape ``(Z, Y, X)``; an int means a cube.
    spacing : (float, float, float)
        Voxel size ``(z, y, x)`` in mm.
    modality : {"ct", "mr"}
        CT-like (HU, bone-like distractors) or TOF-MRA-like (positive units, Rician noise).
    params : TreeParams, optional
        Tree generator settings (radii, generations, branching, pathology probabilities).
    random_flips : bool
        Give each axis of the direction matrix a random sign (identity otherwise).
    num_distractors : int, optional
        Number of unlabelled bright blobs; random (2-5 for CT, 1-3 for MR) when omitted.

    Returns
    -------
    SyntheticCase
        Image, label, geometry (origin not at zero) and the ground-truth tree.
    """
    if modality not in MODALITIES:
        raise DatasetError(f"modality {modality!r} is not supported: use one of {', '.join(MODALITIES)}")
    shape = (size,) * 3 if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 8:
        raise DatasetError(f"synthetic volume size {shape} is too small: use at least 8 voxels per axis")
    # the renderer holds about a dozen float32 volumes at once (distance, radius, noise fields, image)
    check_memory(48.0 * math.prod(shape), f"a synthetic volume of {shape} voxels", "choose a smaller --size")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DatasetError(f"synthetic spacing {spacing} is invalid: give three positive sizes (z, y, x) in mm")
    geometry = _make_geometry(rng, shape, spacing, random_flips)
    body = _make_body(rng, shape, spacing)
    tree = grow_tree(rng, geometry, body, params)
    band = float(max(spacing))
    sd, radius_map = vessel_distance(tree, shape, spacing, band)
    if num_distractors is None:
        num_distractors = int(rng.integers(2, 6) if modality == "ct" else rng.integers(1, 4))
    blobs = place_blobs(rng, body, tree, spacing, num_distractors)
    image = render_image(rng, sd, radius_map, body, blobs, spacing, modality, tree.nodes[0].radius_mm)
    label = ((sd < 0) & body.mask(shape, spacing)).astype(np.uint8)
    return SyntheticCase(image=image, label=label, geometry=geometry, tree=tree)


def style_case(rng: np.random.Generator, size: int, spacing, style: str, random_flips: bool = False) -> SyntheticCase:
    """One case of ``style``: a CT- or MR-like tree (:func:`generate_case`) or a microscopy-like capillary bed."""
    if style == "microscopy":
        shape = (max(8, size // 2), size, size)  # 2 um slices over the same depth as 1 um pixels
        image, label, geometry = microscopy_case(rng, shape, tuple(spacing or MICROSCOPY_SPACING))
        return SyntheticCase(image=image, label=label, geometry=geometry, tree=None)
    return generate_case(rng, size, spacing or DEFAULT_SPACING, style, random_flips=random_flips)


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` for ``seed`` (independent of the number of cases)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _check_target(root: Path, name: str, dataset_id: int, overwrite: bool) -> Path:
    target = root / name
    if root.is_dir():
        for entry in root.iterdir():
            match = DATASET_NAME_RE.match(entry.name)
            if entry.is_dir() and match and int(match.group(1)) == dataset_id and entry.name != name:
                raise DatasetError(f"{entry}: dataset id {dataset_id} is already used by this folder; "
                                   "choose another id or remove it")
    if target.exists() and not overwrite:
        raise DatasetError(f"{target}: dataset folder already exists; pass --overwrite (overwrite=True) to replace it or use another id")
    return target


def _write_cases(staging: Path, full_name: str, num_cases: int, num_test_cases: int, size: int, seed: int,
                 modality: str, spacing, random_flips: bool) -> None:
    """Cases ``synth_000``... into ``staging``: the first ``num_cases`` as training cases, the rest as test cases."""
    for k in range(num_cases + num_test_cases):
        case_id = f"synth_{k:03d}"
        case = style_case(case_rng(seed, k), size, spacing, modality, random_flips)
        split = "Tr" if k < num_cases else "Ts"
        write_image(case.image, case.geometry, staging / f"images{split}" / f"{case_id}_0000{FILE_ENDING}")
        write_image(case.label, case.geometry, staging / f"labels{split}" / f"{case_id}{FILE_ENDING}")
        if case.tree is not None:
            case.tree.save(staging / "trees" / f"{case_id}.json")
        log.info("%s: %s case %d/%d, %.2f %% vessel", full_name, case_id, k + 1, num_cases + num_test_cases,
                 100 * case.label.mean())


def generate_dataset(
    dataset_id: int,
    num_cases: int,
    num_test_cases: int = 2,
    size: int = 96,
    seed: int = 0,
    modality: str = "ct",
    name: str = "Synthetic",
    raw_root: Path | None = None,
    overwrite: bool = False,
    spacing: tuple[float, float, float] | None = None,
    random_flips: bool = False,
) -> Path:
    """Write a synthetic raw dataset ``DatasetNNN_<name>`` (nnU-Net v2 layout) and return its folder.

    Parameters
    ----------
    dataset_id : int
        Dataset number, 0-999; must not be used by another dataset folder in the raw root.
    num_cases, num_test_cases : int
        Labelled training cases (``imagesTr``/``labelsTr``) and held-out cases (``imagesTs``/``labelsTs``).
    size : int
        Edge length of the cubic volumes in voxels.
    seed : int
        Master seed; the same seed and settings give identical files.
    modality : {"ct", "mr", "microscopy"}
        Image appearance; declared in ``dataset.json`` as channel ``"CT"``, ``"MRA"`` or ``"fluorescence"``
        (microscopy: a capillary bed, :mod:`~vessel_seg.dataset_conversion.synthetic_styles`).
    name : str
        Short dataset name (letters, digits, ``_`` and ``-``).
    raw_root : Path, optional
        Where to write; defaults to ``VS_RAW``.
    overwrite : bool
        Replace an existing folder of the same name (otherwise :class:`DatasetError`).
    spacing : (float, float, float), optional
        Voxel size ``(z, y, x)`` in mm; default (0.8, 0.5, 0.5) for CT and MR, 2 x 1 x 1 um for microscopy.
    random_flips : bool
        Random axis signs in the direction matrices.

    The dataset is assembled in a hidden sibling folder and moved into place at the end, so an
    interrupted run leaves no half-written dataset.
    """
    if num_cases < 1 or num_test_cases < 0:
        raise DatasetError(f"need at least 1 training case and no negative test count, got {num_cases}/{num_test_cases}")
    if modality not in STYLES:
        raise DatasetError(f"modality {modality!r} is not supported: use one of {', '.join(STYLES)}")
    if size < 8:
        raise DatasetError(f"synthetic volume size {size} is too small: use at least 8 voxels per axis")
    check_memory(48.0 * size**3, f"a synthetic volume of {size}^3 voxels", "choose a smaller --size")  # before any folder
    root = Path(raw_root) if raw_root is not None else default_raw_root()
    full_name = dataset_name(dataset_id, name)
    target = _check_target(root, full_name, dataset_id, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{full_name}.", suffix=".tmp", dir=root))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the dataset should not be
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "trees"):
            (staging / sub).mkdir()
        _write_cases(staging, full_name, num_cases, num_test_cases, size, seed, modality, spacing, random_flips)
        default_spacing = MICROSCOPY_SPACING if modality == "microscopy" else DEFAULT_SPACING
        DatasetInfo(
            channel_names={"0": CHANNEL_NAMES[modality]},
            labels={"background": 0, "vessel": 1},
            num_training=num_cases,
            file_ending=FILE_ENDING,
            name=full_name,
            description=f"Synthetic vessels, {modality}-like, generated by vessel_seg",
            extra={"generator": {"seed": seed, "size": size, "spacing": list(spacing or default_spacing), "modality": modality,
                                 "num_test_cases": num_test_cases, "random_flips": random_flips}},
        ).save(staging / "dataset.json")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s", target)
    return target
