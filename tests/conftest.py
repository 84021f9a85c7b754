"""Shared fixtures: isolated data roots and a small, fixed thread budget."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def data_roots(tmp_path, monkeypatch):
    """Point VS_RAW / VS_PREPROCESSED / VS_RESULTS at fresh folders under ``tmp_path``."""
    roots = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name, path in roots.items():
        path.mkdir()
        monkeypatch.setenv(f"VS_{name.upper()}", str(path))
    return roots
