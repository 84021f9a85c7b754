"""Atomic writes of the evaluation reports (CSV, Markdown, PNG), on top of :mod:`vessel_seg.atomic`.

A reader (or a crashed run) never sees a half-written report; JSON goes through
:func:`vessel_seg.serialization.write_json_atomic`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vessel_seg.atomic import write_atomic, write_text_atomic

__all__ = ["save_figure_atomic", "write_csv_atomic", "write_text_atomic"]


def write_csv_atomic(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` as CSV (no index) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_figure_atomic(path: str | Path, figure, dpi: int = 120) -> Path:
    """Save a matplotlib ``figure`` as PNG to ``path`` atomically."""
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
