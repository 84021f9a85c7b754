"""Layout of trained-model folders under ``VS_RESULTS`` (shared by training and inference).

::

    VS_RESULTS/DatasetNNN_Name/<trainer>__<plans>__<configuration>/
        plans.json  dataset.json  fingerprint.json
        fold_K/checkpoint_{latest,best,final}.pt  [checkpoint_epochNNNN.pt]  training_log.jsonl  progress.png
        fold_K/validation/CASE.nii.gz  metrics.csv  summary.json
        fold_K/predicted_next_stage/<next configuration>/CASE.npy   (3d_lowres only, feeds the cascade)
"""

from __future__ import annotations

import re
from pathlib import Path

from vessel_seg.errors import VesselSegError
from vessel_seg.paths import results_root

DEFAULT_TRAINER = "vsTrainer"
CHECKPOINT_NAMES = ("final", "best", "latest")
_SNAPSHOT = re.compile(r"epoch\d{4,}")


# A trainer, plans or configuration name: one path component of a model folder's name, joined into paths
# under VS_PREPROCESSED and VS_RESULTS, so no separator, no "..", no "__" (the folder name's own separator).
NAME_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-]|_(?!_))*$")


def check_name_part(value: str, flag: str) -> str:
    """``value`` if it is a valid trainer/plans/configuration name, else a one-line :class:`VesselSegError`."""
    if not isinstance(value, str) or len(value) > 100 or not NAME_PART_RE.match(value):
        raise VesselSegError(f"{flag} {value!r}: a name is letters, digits, '_' and '-' (no '__', no path, at most "
                             "100 characters), e.g. vs_plans, cpu, vsTrainer")
    return value


def model_dir(dataset_name: str, configuration: str, plans_name: str, trainer: str = DEFAULT_TRAINER) -> Path:
    for value, flag in ((configuration, "-c"), (plans_name, "-pl"), (trainer, "-tr")):
        check_name_part(value, flag)
    return results_root() / dataset_name / f"{trainer}__{plans_name}__{configuration}"


def fold_name(fold: int | str) -> str:
    return f"fold_{fold}"


def parse_fold(text: str | int) -> int | str:
    """``"0"`` -> 0, ``"all"`` -> ``"all"``; anything else is a one-line error."""
    if isinstance(text, int) or str(text).isdigit():
        return int(text)
    if str(text) == "all":
        return "all"
    raise VesselSegError(f"fold {text!r} is not valid: use 0-4 (or another fold index) or 'all'")


def snapshot_name(epoch: int) -> str:
    """Checkpoint name of the weights kept after ``epoch`` epochs (``--snapshot-every``)."""
    return f"epoch{epoch:04d}"


def checkpoint_path(fold_dir: Path, which: str) -> Path:
    if which not in CHECKPOINT_NAMES and not _SNAPSHOT.fullmatch(which):
        raise VesselSegError(
            f"checkpoint {which!r} is not valid: use one of {', '.join(CHECKPOINT_NAMES)} or a snapshot such as epoch0020"
        )
    return fold_dir / f"checkpoint_{which}.pt"
