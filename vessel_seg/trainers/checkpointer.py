"""Latest / best / final checkpoints of one fold, written atomically, resumed safely."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from vessel_seg.atomic import write_atomic
from vessel_seg.checkpoint import load_checkpoint, load_first_valid, save_checkpoint
from vessel_seg.errors import CheckpointError
from vessel_seg.model_folder import checkpoint_path

log = logging.getLogger(__name__)


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers (its state dict has clean keys)."""
    while True:
        if hasattr(network, "module"):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


class Checkpointer:
    """Writes ``checkpoint_{latest,best,final}.pt`` in a fold folder.

    The previous latest checkpoint is kept as ``checkpoint_previous.pt`` so that a latest file damaged
    on disk (the writes themselves are atomic) still leaves a checkpoint to resume from.
    """

    def __init__(self, fold_dir: Path, metadata: dict[str, Any]):
        self.fold_dir = fold_dir
        self.metadata = metadata

    def state(self, network, optimizer, scaler, epoch: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "network_weights": unwrap(network).state_dict(),
            "optimizer_state": optimizer.state_dict() if optimizer is not None else {},
            "grad_scaler_state": scaler.state_dict() if scaler is not None else {},
            "epoch": epoch,
            "metadata": self.metadata,
            **extra,
        }

    def save(self, which: str, state: dict[str, Any]) -> Path:
        path = checkpoint_path(self.fold_dir, which)
        if which == "latest" and path.is_file():
            # Keep the old latest as "previous" by linking, not moving it: at every instant of a
            # kill there is a complete checkpoint_latest.pt to resume from.
            write_atomic(self.fold_dir / "checkpoint_previous.pt", lambda tmp: _link_or_copy(path, tmp))
        return save_checkpoint(state, path)

    def load_for_resume(self, map_location="cpu") -> dict[str, Any] | None:
        """The newest intact latest checkpoint, or None when training never saved one."""
        candidates = [checkpoint_path(self.fold_dir, "latest"), self.fold_dir / "checkpoint_previous.pt"]
        if not any(p.is_file() for p in candidates):
            return None
        path, state = load_first_valid(candidates, map_location)
        log.info("resuming from %s (epoch %d)", path, state.get("epoch", 0))
        return state


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink()
    try:
        os.link(source, target)
    except OSError:  # filesystems without hard links
        shutil.copyfile(source, target)


def settings_metadata(settings) -> dict[str, Any]:
    """Settings as plain values, safe for weights_only loading."""
    return {k: v for k, v in asdict(settings).items() if isinstance(v, (int, float, str, bool, type(None), dict, list))}


def pretrained_weights(path: Path) -> dict:
    """The ``network_weights`` of a checkpoint given to ``--pretrained`` (one-line :class:`CheckpointError` otherwise).

    ``vs_train`` calls it before anything starts, so a wrong file fails before the first log line.
    """
    state = load_checkpoint(Path(path))
    weights = state.get("network_weights")
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{path}: holds no network_weights; is it a vessel_seg checkpoint?")
    return weights


def load_pretrained_weights(network: nn.Module, path: Path) -> int:
    """Copy matching weights from another model's checkpoint; returns how many tensors were copied.

    Tensors whose name or shape differs (e.g. segmentation heads of a model with other labels) keep
    their initialisation, as when fine-tuning nnU-Net models on new labels.
    """
    weights = pretrained_weights(path)
    own = unwrap(network).state_dict()
    matched = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise CheckpointError(f"{path}: no weight matches this network's layers; was it trained with other plans?")
    own.update(matched)
    unwrap(network).load_state_dict(own)
    log.info("pretrained: copied %d of %d tensors from %s", len(matched), len(own), path)
    return len(matched)
