"""Test-time vessel scale for modality-free models: predict on coarser grids where vessels are wider than
the network was trained on, and fuse.

A modality-free model (``spacing_mode = "finest_voxel"``, e.g. the built-in model) works in voxels of
the image's own finest spacing, and it saw vessels of up to ~12 voxels in radius in pretraining. An
aorta at 0.7 mm is 15-30 voxels across its radius: at the native grid only its wall looks tubular.
Predicting the same image again on grids 2x and 4x coarser brings such vessels into the trained range.
The fused map keeps the native pass everywhere except inside the *wide* parts of a coarser pass's mask
(where a ball of :data:`WIDE_RADIUS_VOXELS` fits), where the more confident scale wins: a coarse pass
is trusted only for what the native pass cannot see, and thin vessels keep the native pass's precision
(an ungated maximum over scales dropped precision from 0.27-0.53 to 0.06-0.11 on the dev sets' tuning
split, 2026-12-08). Coarse passes cost 1/8 and 1/64 of the native one.

``vessel_scale`` (``vs_predict --vessel-scale``): ``1`` (native grid only), a number ``f >= 1`` (one
pass on a grid ``f`` times coarser) or ``multi`` (native, 2x and 4x, fused as described; factors
that would leave fewer than :data:`MIN_COARSE_VOXELS` voxels along an axis are skipped); ``auto`` (the
CLI's default) is :data:`AUTO_MODALITY_FREE` for a modality-free model and ``1`` for any other.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from vessel_seg.errors import VesselSegError

if TYPE_CHECKING:
    from vessel_seg.imageio import ImageGeometry
    from vessel_seg.inference.predictor import TrainedModel

MULTI_FACTORS = (1.0, 2.0, 4.0)
MIN_COARSE_VOXELS = 24  # a coarser grid must keep at least this many voxels along every axis with more than one
# Coarser passes count only inside vessels at least this wide (radius, finest-spacing voxels): the built-in model
# saw radii up to 12 voxels in pretraining, and its masks of 8-12 voxel vessels already thin out.
WIDE_RADIUS_VOXELS = 8.0


# What ``--vessel-scale auto`` (the default) means: modality-free models alone get AUTO_MODALITY_FREE, every other
# model (and ensembles) the native grid. Chosen on the dev sets' tuning split (2026-12-08, docs/pretraining.md): with
# the shipped model, multi raised the aorta-sized sets (CT 0.146 -> 0.201 Dice) but cost the thin-vessel sets more
# (MR 0.403 -> 0.160: its coarse passes take the MR fat shell for a wide vessel), so auto stays on the native grid.
AUTO_MODALITY_FREE: str | float = 1.0


def resolve_auto(value: object, models) -> str | float:
    """``value`` with ``auto`` replaced by what it means for ``models`` (see :data:`AUTO_MODALITY_FREE`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        free = len(models) == 1 and all(m.config.spacing_mode == "finest_voxel" for m in models)
        return AUTO_MODALITY_FREE if free else 1.0
    return parse_vessel_scale(value)


def parse_vessel_scale(value: object) -> str | float:
    """``"multi"`` or a factor ``>= 1`` (float), else a one-line :class:`VesselSegError`."""
    if isinstance(value, str) and value.strip().lower() == "multi":
        return "multi"
    try:
        factor = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        factor = math.nan
    if not math.isfinite(factor) or not 1.0 <= factor <= 16.0:
        raise VesselSegError(f"--vessel-scale {value!r}: give auto, multi or a factor from 1 to 16 (1: the native grid)")
    return factor


def scale_factors(vessel_scale: str | float, geometry: ImageGeometry) -> list[float]:
    """The grid factors to predict ``geometry`` at (``[1.0]``: the usual single native pass).

    Whether the model may take them at all is :func:`check_vessel_scale`'s job, done once per run.
    """
    scale = parse_vessel_scale(vessel_scale)
    if scale != "multi":
        return [float(scale)]
    extents = [n for n in geometry.shape if n > 1]
    return [f for f in MULTI_FACTORS if f == 1.0 or min(extents) / f >= MIN_COARSE_VOXELS]


def check_vessel_scale(vessel_scale: str | float, models) -> None:
    """Refuse (one line) a ``vessel_scale`` other than 1 for an ensemble or a model planned in mm, before any work."""
    scale = parse_vessel_scale(vessel_scale)
    if scale == 1.0:
        return
    if scale == "multi" and len(models) > 1:
        raise VesselSegError("--vessel-scale multi predicts one model; drop the ensemble or the option")
    for model in models:
        if model.config.spacing_mode != "finest_voxel":
            raise VesselSegError(f"{model.model_dir}: --vessel-scale needs a modality-free model (spacing_mode "
                                 "finest_voxel, e.g. --model builtin); this model's plans are in mm")


def scaled_model(model: TrainedModel, factor: float) -> TrainedModel:
    """``model`` predicting on a grid ``factor`` times coarser (its plans' spacing multiplied; same networks)."""
    if factor == 1.0:
        return model
    config = replace(model.config, spacing=[float(s) * factor for s in model.config.spacing])
    return replace(model, config=config)


def thick_parts(mask: np.ndarray, radius_voxels: float, spacing=None) -> np.ndarray:
    """The morphological opening of ``mask`` by a ball of ``radius_voxels``: the union of every such ball that fits.

    Two exact Euclidean distance transforms: centres where a ball fits (``edt(mask) >= r``), then every voxel
    closer than ``r`` to one. ``spacing`` (per axis, in the unit of ``radius_voxels``) for anisotropic grids.
    """
    import edt

    anisotropy = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * mask.ndim
    centres = edt.edt(mask.astype(np.uint8), anisotropy=anisotropy, parallel=0) >= radius_voxels
    if not centres.any():
        return np.zeros(mask.shape, dtype=bool)
    # strictly inside: a background voxel lies at least edt >= r from every centre
    return edt.edt((~centres).astype(np.uint8), anisotropy=anisotropy, parallel=0) < radius_voxels


def predict_fused_probabilities(model: TrainedModel, images: np.ndarray, geometry: ImageGeometry, case_id: str,
                                use_tta: bool, step: float, factors: list[float]) -> np.ndarray:
    """Class probabilities ``(K, Z, Y, X)`` float16 in the input geometry, native grid first, coarser grids
    trusted only for *wide* vessels.

    A coarser pass ``f`` contributes only inside the thick parts of its own mask: where a ball of
    :data:`WIDE_RADIUS_VOXELS` finest-spacing voxels fits (:func:`thick_parts`), i.e. vessels at or beyond the
    edge of what the native pass learned; there each voxel takes the scale whose foreground
    (1 - background) probability is highest. Elsewhere the native pass stands, so thin vessels and
    the native pass's precision on them are untouched.
    """
    from vessel_seg.inference.predictor import predict_original_probabilities

    finest = min(float(s) for s, n in zip(geometry.spacing, geometry.shape, strict=True) if n > 1)
    voxel = [float(s) / finest for s in geometry.spacing]  # input axes in finest-spacing voxels
    fused = None
    for factor in factors:
        probs = predict_original_probabilities([scaled_model(model, factor)], images, geometry, case_id, use_tta,
                                               step).astype(np.float32)
        if fused is None:
            fused = probs
            continue
        wide = thick_parts(probs[0] < 0.5, WIDE_RADIUS_VOXELS, voxel)
        better = wide & (probs[0] < fused[0])  # lower background probability: more confident foreground
        fused[:, better] = probs[:, better]
    return fused.astype(np.float16)
