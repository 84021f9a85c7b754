"""Voxel overlap metrics: Dice, recall (sensitivity) and precision of binary masks.

Empty masks are scored, never NaN: when the reference and the prediction are both empty every
metric is 1 (nothing to find, nothing wrongly found); the conventions for one empty mask are given
per function.
"""

from __future__ import annotations

import numpy as np

from vessel_seg.evaluation.metrics_common import as_binary


def overlap_counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of ``pred`` against ``ref``.

    Parameters
    ----------
    pred, ref : ndarray
        Masks of equal shape; non-zero voxels are foreground.

    Returns
    -------
    tp, fp, fn : int
        ``|P ∩ L|``, ``|P \\ L|`` and ``|L \\ P|`` in voxels.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    p, r = as_binary(pred), as_binary(ref)
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


def _dice(tp: int, fp: int, fn: int) -> float:
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def _recall(tp: int, fp: int, fn: int) -> float:
    if tp + fn == 0:
        return 1.0 if fp == 0 else 0.0
    return tp / (tp + fn)


def _precision(tp: int, fp: int, fn: int) -> float:
    if tp + fp == 0:
        return 1.0 if fn == 0 else 0.0
    return tp / (tp + fp)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient ``2|P ∩ L| / (|P| + |L|)``.

    Symmetric in its arguments, in ``[0, 1]``. Both masks empty: 1. Exactly one empty: 0.
    """
    return _dice(*overlap_counts(pred, ref))


def recall(pred: np.ndarray, ref: np.ndarray) -> float:
    """Recall (sensitivity, true positive rate) ``|P ∩ L| / |L|``.

    Empty reference: 1 when the prediction is empty too, else 0 (every predicted voxel is a false
    positive, and an empty reference is scored like Dice). Non-empty reference and empty
    prediction: 0.
    """
    return _recall(*overlap_counts(pred, ref))


def precision(pred: np.ndarray, ref: np.ndarray) -> float:
    """Precision (positive predictive value) ``|P ∩ L| / |P|``.

    Empty prediction: 1 when the reference is empty too, else 0 (a vessel was missed entirely).
    Non-empty prediction and empty reference: 0. ``precision(P, L) == recall(L, P)``.
    """
    return _precision(*overlap_counts(pred, ref))
