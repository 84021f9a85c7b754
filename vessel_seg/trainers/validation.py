"""Validation: patch-level pseudo-Dice / pseudo-clDice / Betti-0 error each epoch, full volumes at the end.

The pseudo metrics pool true/false positives over all validation patches of an epoch (nnU-Net's
"pseudo Dice") and average clDice and the component-count error over patches that hold vessel in
prediction or reference. They are
cheap proxies used to track training and pick the best checkpoint; the real numbers come from the
full-volume validation at the end of training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import numpy as np
import torch
from tqdm import tqdm

from vessel_seg.atomic import atomic_open
from vessel_seg.case_store import load_case, load_properties
from vessel_seg.dataset import DatasetInfo
from vessel_seg.evaluation.evaluate import evaluate_folders
from vessel_seg.evaluation.metrics_topology import cldice
from vessel_seg.imageio import write_image
from vessel_seg.inference.cascade import add_previous_stage_channels, resample_for_next_stage
from vessel_seg.inference.case_prediction import labels_from_probabilities, predict_probabilities
from vessel_seg.inference.ensemble import PROBABILITY_SUFFIX, save_probabilities
from vessel_seg.planners.plans import ConfigurationPlan, Plans
from vessel_seg.planners.preprocessing import restore_to_original

log = logging.getLogger(__name__)


@dataclass
class PseudoMetrics:
    """Running totals over the validation patches of one epoch.

    :meth:`update` never waits for the device: true/false positive counts are summed where the
    logits are, and the foreground masks for clDice are copied to the host without blocking. The
    first read of :attr:`dice` or :attr:`cldice` synchronises once and computes the rest.
    """

    num_classes: int
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    cldice_values: list[float] = field(default_factory=list)
    betti0_errors: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tp, self.fp, self.fn = (np.zeros(self.num_classes - 1) for _ in range(3))
        self._counts: torch.Tensor | None = None  # (3, K - 1) on the device, not yet added to tp/fp/fn
        self._masks: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``logits`` ``(B, K, *S)``, ``target`` ``(B, 1, *S)`` class indices."""
        pred = torch.argmax(logits, dim=1)
        ref = target[:, 0].long()
        counts = []
        for c in range(1, self.num_classes):
            p, r = pred == c, ref == c
            counts.append(torch.stack([(p & r).sum(), (p & ~r).sum(), (~p & r).sum()]))
        if counts:
            batch_counts = torch.stack(counts, dim=1)
            self._counts = batch_counts if self._counts is None else self._counts + batch_counts
        self._masks.append(((pred > 0).to("cpu", non_blocking=True), (ref > 0).to("cpu", non_blocking=True)))

    def _collect(self) -> None:
        """Bring pending counts and masks to the host (one synchronisation) and score the masks."""
        if self._counts is not None:
            counts = self._counts.cpu().numpy()  # blocking: waits for the masks queued before it, too
            self.tp += counts[0]
            self.fp += counts[1]
            self.fn += counts[2]
            self._counts = None
        elif self._masks and torch.cuda.is_available():
            torch.cuda.synchronize()
        for pred_fg, ref_fg in self._masks:
            for p, r in zip(pred_fg.numpy(), ref_fg.numpy(), strict=True):
                if p.any() or r.any():
                    self.cldice_values.append(cldice(p, r))
                    self.betti0_errors.append(abs(_count_components(p) - _count_components(r)))
        self._masks = []

    @property
    def dice(self) -> float:
        self._collect()
        denom = 2 * self.tp + self.fp + self.fn
        per_class = np.where(denom > 0, 2 * self.tp / np.maximum(denom, 1), np.nan)
        return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else 0.0

    @property
    def cldice(self) -> float:
        self._collect()
        return float(np.mean(self.cldice_values)) if self.cldice_values else 0.0

    @property
    def betti0_error(self) -> float:
        """Mean over patches of ``|components(prediction) - components(reference)|`` (26-/8-connected)."""
        self._collect()
        return float(np.mean(self.betti0_errors)) if self.betti0_errors else 0.0


def _count_components(mask: np.ndarray) -> int:
    return int(cc3d.connected_components(mask, connectivity=26 if mask.ndim == 3 else 8, return_N=True)[1])


def selection_score(dice: float, cl_dice: float, betti0_error: float = 0.0) -> float:
    """What the best checkpoint maximises (as an EMA over epochs), in [0, 1].

    The mean of pseudo-Dice, pseudo-clDice and ``1 / (1 + Betti-0 error)``. Dice alone favours
    thick vessels; clDice rewards connected centrelines but barely notices a few specks or a
    short break; the component term does (one extra fragment per patch halves it). Equal weights
    keep a checkpoint from trading overlap for topology or back.
    """
    return (dice + cl_dice + 1.0 / (1.0 + betti0_error)) / 3.0


def validate_full_volumes(
    network: torch.nn.Module,
    plans: Plans,
    config: ConfigurationPlan,
    info: DatasetInfo,
    case_ids: Sequence[str],
    preprocessed_dir: Path,
    raw_labels_dir: Path,
    out_dir: Path,
    mirror_axes: Sequence[int],
    device: torch.device,
    amp: bool,
    previous_stage_dir: Path | None = None,
    save_probabilities_too: bool = True,
) -> dict:
    """Predict whole validation cases, write them in the original geometry and score them.

    Writes ``out_dir/CASE<file_ending>``, ``metrics.csv`` and ``summary.json``; returns the summary.
    With ``save_probabilities_too`` also ``out_dir/CASE.npz``: the float16 class probabilities
    restored to the original geometry (format in :mod:`vessel_seg.inference.ensemble`), which
    ``vs_find_best_configuration`` needs to score ensembles and gap bridging.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    label_values = sorted(plans.labels.values())
    for case_id in tqdm(case_ids, desc="validating", unit="case", disable=None, leave=False):
        data, _, props = load_case(preprocessed_dir, case_id)
        data = add_previous_stage_channels(np.asarray(data), case_id, previous_stage_dir, label_values)
        probs = predict_probabilities([network], data, config, len(label_values), mirror_axes, device, amp)
        seg = labels_from_probabilities(probs, label_values)
        restored = restore_to_original(seg, props, is_label=True, labels=label_values[1:])
        write_image(restored, props.original_geometry, out_dir / f"{case_id}{info.file_ending}")
        probability_file = out_dir / f"{case_id}{PROBABILITY_SUFFIX}"
        if not save_probabilities_too:
            probability_file.unlink(missing_ok=True)  # a stale file of an earlier run would not match the mask
        else:
            # The mask above stays the arg-max in preprocessed space (as vs_predict writes it); the
            # probabilities are resampled on their own, as predictor.predict_original_probabilities does.
            original = restore_to_original(
                probs.half().cpu().numpy(), props, is_label=False, anisotropy_threshold=config.anisotropy_threshold
            )
            save_probabilities(probability_file, original, label_values, props.original_geometry, info.file_ending)
    result = evaluate_folders(raw_labels_dir, out_dir, out_dir, labels=label_values[1:], case_ids=list(case_ids))
    return result.summary


def predict_next_stage(
    network: torch.nn.Module,
    config: ConfigurationPlan,
    next_config: ConfigurationPlan,
    label_values: Sequence[int],
    case_ids: Sequence[str],
    preprocessed_dir: Path,
    next_preprocessed_dir: Path,
    out_dir: Path,
    mirror_axes: Sequence[int],
    device: torch.device,
    amp: bool,
) -> None:
    """Segment cases at this (low) resolution and resample them to the next stage's grid.

    Writes ``out_dir/CASE.npy`` (uint8, the next stage's preprocessed shape) for the cascade.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for case_id in tqdm(case_ids, desc=f"predicting for {next_config.name}", unit="case", disable=None, leave=False):
        data, _, props = load_case(preprocessed_dir, case_id)
        probs = predict_probabilities([network], np.asarray(data), config, len(label_values), mirror_axes, device, amp)
        seg = labels_from_probabilities(probs, label_values)
        next_props = load_properties(next_preprocessed_dir, case_id)
        resampled = resample_for_next_stage(
            seg, props.spacing, next_props.shape_after_resampling, next_props.spacing, label_values
        )
        with atomic_open(out_dir / f"{case_id}.npy") as handle:
            np.save(handle, resampled)
