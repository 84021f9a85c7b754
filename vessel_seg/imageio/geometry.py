"""Physical geometry of an image, kept so that outputs land exactly in the input's space."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _rounded(values: np.ndarray) -> tuple[float, ...]:
    """Plain floats rounded to 4 decimals, so messages read ``(1.0, 2.0)`` and not ``np.float64(1.0)``."""
    return tuple(round(float(v), 4) for v in values.ravel())


@dataclass(frozen=True)
class ImageGeometry:
    """Where a ``(Z, Y, X)`` voxel array sits in physical (ITK/LPS, millimetre) space.

    Attributes:
        shape: array shape ``(Z, Y, X)``.
        spacing: voxel size in mm, ``(z, y, x)`` (array order, the reverse of ITK's order).
        origin: physical position of voxel ``(0, 0, 0)`` in ITK order ``(x, y, z)``.
        direction: ITK direction cosines, row-major 3x3 (9 floats), columns are the i, j, k axes.
        ndim: 2 for images that came from a 2D file (stored with ``Z == 1``), otherwise 3.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    ndim: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageGeometry:
        return cls(
            shape=tuple(int(v) for v in data["shape"]),
            spacing=tuple(float(v) for v in data["spacing"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
            ndim=int(data.get("ndim", 3)),
        )

    def matches(self, other: ImageGeometry, rtol: float = 1e-4, atol: float = 1e-3) -> bool:
        """True when shape is equal and spacing/origin/direction agree within tolerance."""
        return self.mismatch(other, rtol, atol) is None

    def mismatch(self, other: ImageGeometry, rtol: float = 1e-4, atol: float = 1e-3) -> str | None:
        """Human-readable description of the first difference, or ``None`` when they agree."""
        if tuple(self.shape) != tuple(other.shape):
            return f"shape {tuple(self.shape)} != {tuple(other.shape)}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol):
                return f"{name} {_rounded(a)} != {_rounded(b)}"
        return None

    def index_to_physical(self, index_zyx: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` voxel indices in ``(z, y, x)`` order to physical ``(x, y, z)`` points in mm."""
        ijk = np.asarray(index_zyx, dtype=np.float64)[:, ::-1] * np.asarray(self.spacing[::-1])
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return ijk @ direction.T + np.asarray(self.origin)
