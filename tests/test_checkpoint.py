import pickle

import pytest
import torch

from vessel_seg.checkpoint import load_checkpoint, load_first_valid, save_checkpoint
from vessel_seg.errors import CheckpointError


class _Payload:
    """Unpickling this would create a marker file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_round_trip_tensors(tmp_path):
    state = {"weights": {"a": torch.arange(4.0)}, "epoch": 3, "log": [1.0, 2.0]}
    save_checkpoint(state, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["epoch"] == 3 and torch.equal(back["weights"]["a"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as handle:
        torch.save({"x": _Payload(marker)}, handle, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_checkpoint_falls_back(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path / "old.pt")
    save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, tmp_path / "new.pt")
    data = (tmp_path / "new.pt").read_bytes()
    (tmp_path / "new.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "new.pt")
    path, state = load_first_valid([tmp_path / "new.pt", tmp_path / "old.pt"])
    assert path.name == "old.pt" and state["epoch"] == 1


def test_failed_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    import torch as torch_module

    from vessel_seg.checkpoint import save_checkpoint
    from vessel_seg.errors import CheckpointError

    path = tmp_path / "checkpoint_latest.pt"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()

    def full_disk(obj, handle):
        handle.write(b"PK partial")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch_module, "save", full_disk)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint .*file write failed.*--continue"):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
