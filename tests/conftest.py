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


def load_benchmark_script(name: str):
    """Import ``benchmarks/<name>.py`` as module ``name`` (benchmarks/ is not a package).

    Yields the module and removes it from ``sys.modules`` afterwards; use it from a fixture as
    ``yield from load_benchmark_script("learning_curves")``.
    """
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)
