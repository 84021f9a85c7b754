"""A model folder checked as a whole: plans, dataset description and checkpoints that belong together.

Shared by prediction (:func:`~vessel_seg.inference.predictor.load_trained_model`) and model import
(:mod:`~vessel_seg.inference.model_sharing`). The network the plans describe is built on PyTorch's ``meta``
device (shapes only, no memory, no arithmetic) and its tensors are compared with the checkpoint's, so a
plans file edited or swapped under a checkpoint fails in one line naming both, before any real allocation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vessel_seg.errors import CheckpointError
from vessel_seg.resources import check_memory

MAX_LISTED = 3  # mismatching tensors named in the error line


def checkpoint_metadata(state: Mapping[str, Any], path: Path) -> tuple[int, int]:
    """``(in_channels, num_classes)`` of a checkpoint, checked to be positive integers."""
    meta = state.get("metadata")
    values = []
    for key in ("in_channels", "num_classes"):
        value = meta.get(key) if isinstance(meta, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise CheckpointError(f"{path}: checkpoint metadata lacks a valid {key!r} (found {value!r}); export or "
                                  "train the model again")
        values.append(value)
    return values[0], values[1]


def check_weights_match_plans(topology, state: Mapping[str, Any], path: Path, plans_path: Path) -> None:
    """One-line :class:`CheckpointError` when the plans' network and the checkpoint's tensors differ (names or shapes)."""
    import torch

    from vessel_seg.networks.registry import build_network

    in_channels, num_classes = checkpoint_metadata(state, path)
    weights = state.get("network_weights")
    if not isinstance(weights, Mapping) or not weights:
        raise CheckpointError(f"{path}: holds no network weights; export or train the model again")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_network(topology, in_channels, num_classes).state_dict().items()}
    parameters = sum(math.prod(shape) for shape in expected.values())
    check_memory(4.0 * parameters, f"the network of {plans_path} ({parameters / 1e6:,.1f} M parameters)",
                 "use plans with a smaller network")
    found = {k: tuple(v.shape) for k, v in weights.items() if hasattr(v, "shape")}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or reshaped:
        parts = []
        if reshaped:
            parts.append("shape of " + ", ".join(f"{k} {found[k]} vs plans {expected[k]}" for k in reshaped[:MAX_LISTED]))
        if missing:
            parts.append("missing " + ", ".join(missing[:MAX_LISTED]))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:MAX_LISTED]))
        count = len(missing) + len(unexpected) + len(reshaped)
        raise CheckpointError(f"{path}: the weights do not fit the network of {plans_path} ({count} tensor(s): "
                              f"{'; '.join(parts)}); use the plans the model was trained with")
