"""Atomic writes of the evaluation reports (CSV, Markdown, PNG): temporary file, then ``os.replace``.

A reader (or a crashed run) never sees a half-written report; JSON goes through
:func:`vessel_seg.serialization.write_json_atomic`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def _write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_csv_atomic(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` as CSV (no index) to ``path`` atomically."""
    return _write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_figure_atomic(path: str | Path, figure, dpi: int = 120) -> Path:
    """Save a matplotlib ``figure`` as PNG to ``path`` atomically."""
    return _write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
