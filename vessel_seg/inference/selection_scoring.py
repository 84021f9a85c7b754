"""Scoring candidate predictions (configurations, ensembles, postprocessing) on validation cases.

The ranking score is mean(Dice, clDice) over all validation cases of all folds, the same
combination the trainer uses to pick its best checkpoint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.evaluate import load_pair
from vessel_seg.evaluation.metrics_common import spatial_view, union_bbox
from vessel_seg.evaluation.metrics_overlap import dice
from vessel_seg.evaluation.metrics_topology import cldice_from_skeletons
from vessel_seg.imageio import read_label
from vessel_seg.inference.ensemble import average_probabilities, probabilities_to_labels
from vessel_seg.inference.postprocessing import PostprocessingRecipe, apply_postprocessing
from vessel_seg.morphology import skeleton
from vessel_seg.planners.fingerprint import DatasetFingerprint

MIN_IMPROVEMENT = 1e-4  # a step must raise mean(Dice, clDice) by more than this to be kept
FIXED_DEBRIS_MM3: tuple[float, ...] = (1.0, 10.0, 100.0)
FIXED_BRIDGE_GAPS_MM: tuple[float, ...] = (1.0, 2.0, 4.0)
BRIDGE_GAP_RADIUS_MULTIPLES: tuple[float, ...] = (1.0, 2.0, 4.0)
_SMALL_VESSEL_LENGTH_IN_RADII = 10.0  # a small-vessel segment five diameters long


def ranking_score(dice_value: float, cldice_value: float) -> float:
    """``mean(Dice, clDice)``: what configurations and postprocessing steps are ranked by."""
    return 0.5 * (dice_value + cldice_value)


@dataclass
class Scores:
    """Mean Dice and clDice over cases (each the mean over labels) and the ranking score."""

    dice: float
    cldice: float
    num_cases: int

    @property
    def score(self) -> float:
        return ranking_score(self.dice, self.cldice)

    def as_dict(self) -> dict:
        return {"dice": self.dice, "cldice": self.cldice, "score": self.score, "num_cases": self.num_cases}


def debris_volume_candidates(fingerprint: DatasetFingerprint | None) -> list[float]:
    """Minimum component volumes (mm³) to try for debris removal.

    The fixed :data:`FIXED_DEBRIS_MM3`, plus, when a fingerprint with vessel radii is available,
    the volume of a typical small-vessel segment: a cylinder of the 10th-percentile radius ``r``
    and length ``10 r`` (five diameters), ``V = 10 π r³``.
    """
    values = set(FIXED_DEBRIS_MM3)
    if fingerprint is not None and fingerprint.vessel_radius_mm.num_samples > 0:
        radius = fingerprint.vessel_radius_mm.p10
        if radius > 0:
            values.add(round(_SMALL_VESSEL_LENGTH_IN_RADII * math.pi * radius**3, 3))
    return sorted(values)


def bridge_gap_candidates(fingerprint: DatasetFingerprint | None) -> list[float]:
    """Widest gaps (mm) to try for gap bridging.

    The fixed :data:`FIXED_BRIDGE_GAPS_MM`, plus, when a fingerprint with vessel radii is available,
    :data:`BRIDGE_GAP_RADIUS_MULTIPLES` times the median vessel radius: a break in a vessel is about
    as wide as the vessel, and the fixed values cover datasets whose spacing hides small radii.
    """
    values = set(FIXED_BRIDGE_GAPS_MM)
    if fingerprint is not None and fingerprint.vessel_radius_mm.num_samples > 0:
        radius = fingerprint.vessel_radius_mm.p50
        values.update(round(k * radius, 3) for k in BRIDGE_GAP_RADIUS_MULTIPLES if radius > 0)
    return sorted(values)


class CasePrediction(NamedTuple):
    """One validation case: its reference and its prediction.

    ``mask`` is a configuration's label file; ``probabilities`` its ``CASE.npz`` (used only for gap
    bridging), or empty when it has none. For an ensemble ``mask`` is ``None`` and the labels are
    the arg-max of the mean of ``probabilities``, one file per configuration.
    """

    reference: Path
    mask: Path | None
    probabilities: tuple[Path, ...] = ()


def _load_case(case: CasePrediction, need_probabilities: bool) -> tuple[np.ndarray, np.ndarray, tuple, np.ndarray | None]:
    """Reference, predicted labels, spacing (mm) and foreground probability (``None`` if not needed or absent)."""
    if case.mask is not None:
        ref, pred, spacing, _ = load_pair(case.reference, case.mask)
        if not (need_probabilities and case.probabilities):
            return ref, pred, spacing, None
    else:
        ref, geometry = read_label(case.reference)
        pred, spacing = None, geometry.spacing
    mean = average_probabilities(list(case.probabilities))
    if tuple(mean.probabilities.shape[1:]) != ref.shape:
        raise VesselSegError(
            f"{case.probabilities[0]}: probabilities of shape {mean.probabilities.shape[1:]} do not match reference "
            f"{case.reference} {ref.shape}; rerun that fold's validation (vs_train ... --continue)"
        )
    if pred is None:
        pred = probabilities_to_labels(mean.probabilities, mean.label_values)
    return ref, pred, spacing, 1.0 - mean.probabilities[0]


def _case_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """Dice and clDice of one case, each the mean over ``labels``."""
    dices, cldices = [], []
    for label in labels:
        p, r, _ = spatial_view(pred == label, ref == label, spacing)
        box = union_bbox([p, r])
        if box is None:  # both empty: perfect by convention
            dices.append(1.0)
            cldices.append(1.0)
            continue
        pc, rc = p[box], r[box]
        dices.append(dice(pc, rc))
        cldices.append(cldice_from_skeletons(pc, rc, skeleton(pc), skeleton(rc)))
    return float(np.mean(dices)), float(np.mean(cldices))


def _score_job(job: tuple) -> list[tuple[float, float]]:
    """Score one case under each postprocessing candidate; identical outputs are scored once."""
    case, labels, candidates = job
    ref, pred, spacing, fg = _load_case(case, any(c.bridge_gaps_mm is not None for c in candidates))
    seen: dict[bytes, tuple[float, float]] = {}
    results = []
    for recipe in candidates:
        out = apply_postprocessing(pred, recipe, spacing, labels, fg)
        key = hashlib.blake2b(np.ascontiguousarray(out).tobytes(), digest_size=16).digest()
        if key not in seen:
            seen[key] = _case_scores(out, ref, spacing, labels)
        results.append(seen[key])
    return results


def score_predictions(
    cases: Sequence[CasePrediction],
    labels: Sequence[int],
    candidates: Sequence[PostprocessingRecipe],
    num_workers: int = 1,
) -> list[Scores]:
    """Mean scores of the ``cases`` under each postprocessing candidate (in the order given)."""
    jobs = [(case, list(labels), list(candidates)) for case in cases]
    if num_workers <= 1 or len(jobs) <= 1:
        per_case = [_score_job(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            per_case = list(pool.map(_score_job, jobs))
    values = np.asarray(per_case, dtype=np.float64)  # (cases, candidates, 2)
    return [Scores(float(values[:, i, 0].mean()), float(values[:, i, 1].mean()), len(jobs)) for i in range(len(candidates))]
