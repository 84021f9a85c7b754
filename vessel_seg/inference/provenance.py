"""Which model and settings made each mask in an output folder, so that a rerun reuses only what still holds.

``vs_predict`` skips a case whose mask exists; before, it did so even after the model had been
retrained. Now every written mask is recorded in ``OUTPUT/.vs_provenance.json`` with the identity of
what produced it: a SHA-256 over the model folders, folds and the weights themselves (so a retrained
fold changes it even under the same file name), the test-time augmentation, the tile step and the
postprocessing. A mask is reused only when its recorded identity equals the current one; otherwise
(another model, other settings, or no record) the case is predicted again, and the log says which
and why.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vessel_seg.atomic import write_text_atomic

PROVENANCE_FILE = ".vs_provenance.json"


def _weights_digest(network: torch.nn.Module, hasher: Any) -> None:
    for name, tensor in network.state_dict().items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())


def run_identity(models: Sequence[Any], use_tta: bool, step_size: float, postprocessing: str) -> str:
    """Hex SHA-256 of what decides the masks: model folders, folds, weights (cascade stages included) and settings."""
    hasher = hashlib.sha256()
    pending = list(models)
    while pending:
        model = pending.pop(0)
        hasher.update(f"{model.name}|{','.join(model.folds)}".encode())
        for network in model.networks:
            _weights_digest(network, hasher)
        if getattr(model, "previous_stage", None) is not None:
            pending.append(model.previous_stage)
    hasher.update(f"tta={use_tta}|step={step_size:g}|post={postprocessing}".encode())
    return hasher.hexdigest()


class ProvenanceLog:
    """The ``case id -> identity`` record of one output folder (a missing or damaged file reads as empty)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / PROVENANCE_FILE
        self._lock = threading.Lock()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        self._cases = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def made_by(self, case_id: str, identity: str) -> bool:
        return self._cases.get(case_id) == identity

    def record(self, case_id: str, identity: str) -> None:
        """Note that ``case_id``'s outputs now come from ``identity`` (atomic rewrite; writer threads allowed)."""
        with self._lock:
            self._cases[case_id] = identity
            write_text_atomic(self.path, json.dumps(self._cases, indent=1, sort_keys=True) + "\n")
