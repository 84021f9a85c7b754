"""Cross-validation folds: deterministic shuffled K-fold splits, persisted next to the preprocessed data.

The splits of a dataset live in ``VS_PREPROCESSED/DatasetNNN_Name/splits.json`` as a list of
``{"train": [...], "val": [...]}`` objects, one per fold. They are created once and then reused, so
that every configuration (2D, 3D full resolution, cascade) of a dataset is cross-validated on the
same folds and the ensembles chosen from their validation predictions are comparable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vessel_seg.errors import DatasetError, VesselSegError
from vessel_seg.serialization import read_json, write_json_atomic

log = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
Split = dict[str, list[str]]


def make_splits(case_ids: Sequence[str], num_folds: int = 5, seed: int = 12345) -> list[Split]:
    """Shuffled K-fold splits of ``case_ids``.

    The identifiers are sorted first and then permuted with ``seed``, so the result depends only on
    the *set* of cases, not on the order they were listed in. Every case is in exactly one
    validation set; the first ``n % num_folds`` folds hold one validation case more than the rest
    (as in scikit-learn's ``KFold``).

    Parameters
    ----------
    case_ids : sequence of str
        Identifiers of the training cases (duplicates are an error).
    num_folds : int, optional
        Number of folds. With fewer cases than folds, one fold per case is made (leave-one-out) and
        a warning is logged; a single case gives one fold that trains and validates on it.
    seed : int, optional
        Seed of the permutation.

    Returns
    -------
    list of dict
        ``[{"train": [...], "val": [...]}, ...]``, identifiers sorted within each list.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        duplicates = sorted({c for c in ids if ids.count(c) > 1})
        raise DatasetError(f"case identifiers are duplicated: {', '.join(duplicates)}; rename the cases")
    if not ids:
        raise DatasetError("no cases to split into folds; preprocess the dataset first (vs_plan_and_preprocess)")
    if num_folds < 1:
        raise VesselSegError(f"num_folds must be at least 1, got {num_folds}")
    if len(ids) == 1:
        log.warning("only one case (%s): its single fold trains and validates on the same case", ids[0])
        return [{"train": list(ids), "val": list(ids)}]
    if len(ids) < num_folds:
        log.warning("only %d cases for %d folds: using %d folds (leave-one-out)", len(ids), num_folds, len(ids))
        num_folds = len(ids)

    order = np.random.RandomState(seed).permutation(len(ids))
    splits = []
    for val_positions in np.array_split(order, num_folds):
        val = sorted(ids[i] for i in val_positions)
        val_set = set(val)
        splits.append({"train": [c for c in ids if c not in val_set], "val": val})
    return splits


def _validate(path: Path, data: object) -> list[Split]:
    ok = isinstance(data, list) and data and all(
        isinstance(s, dict)
        and isinstance(s.get("train"), list)
        and isinstance(s.get("val"), list)
        and all(isinstance(c, str) for c in s["train"] + s["val"])
        for s in data
    )
    if not ok:
        raise DatasetError(
            f"{path}: not a list of {{'train': [...], 'val': [...]}} folds; fix it or delete it to re-create the splits"
        )
    return [{"train": list(s["train"]), "val": list(s["val"])} for s in data]


def load_or_create_splits(
    preprocessed_dataset_dir: str | Path, case_ids: Sequence[str], num_folds: int = 5, seed: int = 12345
) -> list[Split]:
    """Read ``splits.json`` from ``preprocessed_dataset_dir``, or create and save it.

    Existing splits are reused as they are, even when ``num_folds`` differs, so folds never change
    under a trained model. Cases present in ``case_ids`` but missing from the file (added after
    the split) are reported with a warning: they take part in no fold until the file is deleted
    (which re-splits every fold). Cases named in the file but absent from ``case_ids`` are an
    error, because training would fail to load them.

    Parameters
    ----------
    preprocessed_dataset_dir : str or Path
        ``VS_PREPROCESSED/DatasetNNN_Name``.
    case_ids : sequence of str
        Identifiers of the preprocessed training cases.
    num_folds, seed : int, optional
        Passed to :func:`make_splits` when the file does not exist yet.

    Returns
    -------
    list of dict
        One ``{"train": [...], "val": [...]}`` per fold.
    """
    path = Path(preprocessed_dataset_dir) / SPLITS_FILE
    if not path.is_file():
        splits = make_splits(case_ids, num_folds=num_folds, seed=seed)
        write_json_atomic(path, splits)
        log.info("created %d-fold splits of %d cases in %s", len(splits), len(set(case_ids)), path)
        return splits

    try:
        splits = _validate(path, read_json(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc}); delete it to re-create the splits") from exc

    in_file = {c for s in splits for c in s["train"] + s["val"]}
    available = set(case_ids)
    missing = sorted(in_file - available)
    if missing:
        raise DatasetError(
            f"{path}: names {len(missing)} case(s) that are not preprocessed ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); re-run preprocessing or delete the file to re-split"
        )
    added = sorted(available - in_file)
    if added:
        log.warning(
            "%d case(s) were added after %s was written (%s%s) and are in no fold; delete the file to re-split "
            "(this changes every fold and invalidates trained folds)",
            len(added), path, ", ".join(added[:5]), ", ..." if len(added) > 5 else "",
        )
    log.info("using the %d existing folds in %s", len(splits), path)
    return splits


def fold_cases(splits: Sequence[Split], fold: int | str) -> tuple[list[str], list[str]]:
    """Training and validation cases of one fold.

    Parameters
    ----------
    splits : sequence of dict
        As returned by :func:`make_splits` or :func:`load_or_create_splits`.
    fold : int or str
        Fold index (``0 <= fold < len(splits)``, also as a string such as ``"3"``), or ``"all"`` to
        train and validate on every case of every fold.

    Returns
    -------
    (train_ids, val_ids) : tuple of list of str
    """
    if isinstance(fold, str) and fold.strip().lower() == "all":
        everything = sorted({c for s in splits for c in s["train"] + s["val"]})
        return everything, list(everything)
    try:
        index = int(fold)
    except (TypeError, ValueError):
        raise VesselSegError(f"fold {fold!r} is not valid: use a number from 0 to {len(splits) - 1} or 'all'") from None
    if not 0 <= index < len(splits):
        raise VesselSegError(
            f"fold {index} is out of range: the splits have {len(splits)} folds (0 to {len(splits) - 1}); "
            "use one of those or 'all'"
        )
    return list(splits[index]["train"]), list(splits[index]["val"])
