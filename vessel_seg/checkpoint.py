"""Saving and safely loading model checkpoints.

Checkpoints are untrusted input: they are loaded with ``torch.load(..., weights_only=True)``, which
only rebuilds tensors and plain containers and refuses pickled code. They hold tensors, numbers,
strings, lists and dicts only. Writes go to a temporary file that is renamed into place, so a
killed process never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from vessel_seg.atomic import atomic_open
from vessel_seg.errors import CheckpointError

log = logging.getLogger(__name__)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically to ``path``; a full disk or a forbidden folder is a one-line :class:`CheckpointError`.

    torch reports a failed write of its zip stream as ``RuntimeError``; an ``OSError`` of the file
    handle already becomes an ``OutputWriteError`` in :func:`~vessel_seg.atomic.atomic_path`. The
    temporary is removed either way, so the previous checkpoint stays intact.
    """
    try:
        with atomic_open(path) as handle:
            torch.save(state, handle)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0][:160]
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({reason}); free disk space or fix permissions, then resume with "
            "--continue (the previous checkpoint is kept)"
        ) from exc
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` if unsafe or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train the model first or check the fold/checkpoint name")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load, the file holds objects other than tensors (possibly code); "
            "only load checkpoints you trust, saved by vessel_seg"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - whatever a damaged or foreign file makes the loader raise is the file's
        first = (str(exc).splitlines() or [""])[0][:160]
        raise CheckpointError(f"{path}: checkpoint is damaged, truncated or not a checkpoint ({type(exc).__name__}: "
                              f"{first}); export or train the model again") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a vessel_seg checkpoint (expected a dictionary of tensors)")
    return state


def load_first_valid(paths: list[Path], map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """Load the first checkpoint in ``paths`` that exists and is intact, warning about damaged ones."""
    errors = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as exc:
            log.warning("%s; trying an older checkpoint", exc)
            errors.append(str(exc))
    raise CheckpointError(errors[-1] if errors else f"{paths[0]}: no checkpoint found")
