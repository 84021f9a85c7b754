"""Where datasets, preprocessed data and trained models live, and dataset lookup by id or name.

The three roots come from the environment variables ``VS_RAW``, ``VS_PREPROCESSED`` and
``VS_RESULTS``; when one is unset, nnU-Net v2's ``nnUNet_raw`` / ``nnUNet_preprocessed`` /
``nnUNet_results`` are used if set (announced once), else a default under ``~/vessel_seg_data``
(announced once, level WARNING) so that nobody wonders where their data went.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from vessel_seg.errors import DatasetError

log = logging.getLogger(__name__)

DEFAULT_BASE = Path.home() / "vessel_seg_data"
_ROOTS = {"VS_RAW": "raw", "VS_PREPROCESSED": "preprocessed", "VS_RESULTS": "results"}
_announced: set[str] = set()
DATASET_NAME_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")


# nnU-Net v2's variables, used when ours are unset: an nnU-Net user's raw datasets work as they are (the
# preprocessed and result folders of the two frameworks have different names and coexist).
NNUNET_FALLBACK = {"VS_RAW": "nnUNet_raw", "VS_PREPROCESSED": "nnUNet_preprocessed", "VS_RESULTS": "nnUNet_results"}


def _root(variable: str) -> Path:
    value = os.environ.get(variable)
    if value:
        return Path(value).expanduser()
    fallback = os.environ.get(NNUNET_FALLBACK[variable])
    if fallback:
        if variable not in _announced:
            _announced.add(variable)
            log.info("%s is not set; using %s=%s", variable, NNUNET_FALLBACK[variable], fallback)
        return Path(fallback).expanduser()
    default = DEFAULT_BASE / _ROOTS[variable]
    if variable not in _announced:
        _announced.add(variable)
        log.warning("%s is not set; using the default %s", variable, default)
    return default


def raw_root() -> Path:
    return _root("VS_RAW")


def preprocessed_root() -> Path:
    return _root("VS_PREPROCESSED")


def results_root() -> Path:
    return _root("VS_RESULTS")


def dataset_name(dataset_id: int, short_name: str) -> str:
    """``DatasetNNN_Name`` from an integer id and a short name."""
    if not 0 <= dataset_id <= 999:
        raise DatasetError(f"dataset id {dataset_id} is out of range: use a number from 0 to 999")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", short_name):
        raise DatasetError(f"dataset name {short_name!r} may only hold letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{short_name}"


def _candidates(dataset_id: int, roots: list[Path]) -> set[str]:
    found = set()
    for root in roots:
        if root.is_dir():
            for entry in root.iterdir():
                match = DATASET_NAME_RE.match(entry.name)
                if entry.is_dir() and match and int(match.group(1)) == dataset_id:
                    found.add(entry.name)
    return found


def _misnamed(dataset_id: int, roots: list[Path]) -> list[Path]:
    """Folders that start like dataset ``dataset_id`` (``Dataset614...``) but do not match the name pattern."""
    prefix = f"Dataset{dataset_id:03d}"
    return sorted(entry for root in roots if root.is_dir() for entry in root.iterdir()
                  if entry.is_dir() and entry.name.startswith(prefix) and not DATASET_NAME_RE.match(entry.name))


def resolve_dataset(identifier: str | int, roots: list[Path] | None = None) -> str:
    """Turn ``501``, ``"501"``, ``"Dataset501"`` or ``"Dataset501_Synthetic"`` into the full name.

    The name is looked up in the raw, preprocessed and results roots (in that order), so a dataset
    that exists only as a trained model can still be addressed by its id.
    """
    text = str(identifier).strip()
    if DATASET_NAME_RE.match(text):
        return text
    digits = text[len("Dataset"):] if text.startswith("Dataset") else text
    if not digits.isdigit():
        raise DatasetError(
            f"{text!r} is not a dataset id or name: use a number such as 501 or a name such as "
            "Dataset501_Synthetic"
        )
    if roots is None:
        roots = [raw_root(), preprocessed_root(), results_root()]
    found = _candidates(int(digits), roots)
    if not found:
        searched = ", ".join(str(r) for r in roots)
        near = _misnamed(int(digits), roots)
        if near:
            raise DatasetError(
                f"{near[0]}: looks like dataset {int(digits)} but its name does not follow DatasetNNN_Name (Name: "
                "letters, digits, '_' and '-'; no spaces or accents); rename the folder"
            )
        raise DatasetError(
            f"no dataset with id {int(digits)} found in {searched}: check VS_RAW / VS_PREPROCESSED / "
            "VS_RESULTS or create it (e.g. vs_generate_synthetic)"
        )
    if len(found) > 1:
        raise DatasetError(f"dataset id {int(digits)} is ambiguous: {sorted(found)}; use the full name")
    return found.pop()
