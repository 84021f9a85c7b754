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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vessel_seg.atomic import write_text_atomic
from vessel_seg.file_lock import exclusive_lock

PROVENANCE_FILE = ".vs_provenance.json"


def _weights_digest(network: torch.nn.Module, hasher: Any) -> None:
    for name, tensor in network.state_dict().items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())


def run_identity(models: Sequence[Any], use_tta: bool, step_size: float, postprocessing: str,
                 vessel_scale: float | str = 1.0, vessel_polarity: str = "bright") -> str:
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
    if str(vessel_scale) not in ("1", "1.0"):  # the native grid keeps the identities recorded before this option
        hasher.update(f"|scale={vessel_scale}".encode())
    if vessel_polarity != "bright":
        hasher.update(f"|polarity={vessel_polarity}".encode())
    return hasher.hexdigest()


class ProvenanceLog:
    """The ``case id -> identity`` record of one output folder (missing or damaged files read as empty).

    Parallel parts of one run (``-num_parts``, torchrun) write one file each,
    ``.vs_provenance.partKofN.json``, so no process overwrites another's record; reading merges all
    files of the folder and keeps, per case, the newest record (each carries its time in ns).
    """

    def __init__(self, output_dir: Path, part_id: int = 0, num_parts: int = 1) -> None:
        folder = Path(output_dir)
        name = PROVENANCE_FILE if num_parts == 1 else f".vs_provenance.part{part_id}of{num_parts}.json"
        self.path = folder / name
        self._lock = threading.Lock()
        self._own: dict[str, list] = {}
        self._cases: dict[str, tuple[int, str]] = {}
        for path in sorted(folder.glob(".vs_provenance*.json")) if folder.is_dir() else []:
            records = _read_records(path)
            if path == self.path:
                self._own = {case: [identity, ns] for case, (ns, identity) in records.items()}
            for case, (ns, identity) in records.items():
                if case not in self._cases or ns > self._cases[case][0]:
                    self._cases[case] = (ns, identity)

    def made_by(self, case_id: str, identity: str) -> bool:
        return case_id in self._cases and self._cases[case_id][1] == identity

    def record(self, case_id: str, identity: str) -> None:
        """Note that ``case_id``'s outputs now come from ``identity`` (atomic rewrite; writer threads allowed)."""
        with self._lock, exclusive_lock(self.path.parent):
            # Another vs_predict into the same folder may have recorded cases since we read the file: merge
            # under the folder's lock, keeping per case the newest record, so neither run's records are lost.
            for case, (ns, other) in _read_records(self.path).items():
                if case not in self._own or ns > self._own[case][1]:
                    self._own[case] = [other, ns]
            ns = time.time_ns()
            self._own[case_id] = [identity, ns]
            self._cases[case_id] = (ns, identity)
            write_text_atomic(self.path, json.dumps(self._own, indent=1, sort_keys=True) + "\n")


def _read_records(path: Path) -> dict[str, tuple[int, str]]:
    """``case -> (ns, identity)`` of one record file; anything unreadable or malformed counts as no record."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    records = {}
    for case, value in data.items() if isinstance(data, dict) else []:
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
            records[str(case)] = (value[1], value[0])
    return records
