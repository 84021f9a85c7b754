"""The ground-truth vessel tree of a synthetic case, its JSON form, and the body region it lives in.

A tree is a list of centreline samples (:class:`VesselNode`), each pointing to its parent; the
lumen around an edge ``parent -> child`` is a tapered tube whose radius varies linearly between
the two node radii, plus spherical aneurysm sacs (:class:`Aneurysm`). Stenoses
(:class:`Stenosis`) are already applied to the node radii and recorded for reference. The trees
are grown by :mod:`vessel_seg.dataset_conversion.synthetic_growth` inside a :class:`Body` (an
elliptic cylinder; outside it the rendered image is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vessel_seg.errors import DatasetError
from vessel_seg.serialization import from_dict, read_json, to_jsonable, write_json_atomic


@dataclass
class VesselNode:
    """One centreline sample of a vessel tree.

    Attributes:
        id: position in :attr:`VesselTree.nodes`; parents always have smaller ids.
        parent: id of the parent node, ``-1`` for the root (the inlet).
        position_mm: physical position ``(x, y, z)`` in mm, ITK order.
        index_zyx: continuous voxel index ``(z, y, x)``; voxel centres sit at integers.
        radius_mm: lumen radius in mm.
        generation: 0 on the root vessel, one more after every branch point.
    """

    id: int
    parent: int
    position_mm: tuple[float, float, float]
    index_zyx: tuple[float, float, float]
    radius_mm: float
    generation: int = 0


@dataclass
class Aneurysm:
    """A saccular bulge: a sphere of ``radius_mm`` centred at ``position_mm`` on the wall of ``node``."""

    node: int
    position_mm: tuple[float, float, float]
    index_zyx: tuple[float, float, float]
    radius_mm: float


@dataclass
class Stenosis:
    """A local narrowing centred on ``node``.

    The radius is multiplied by ``1 - severity * exp(-s**2 / (2 * length_mm**2))`` where ``s`` is
    the arc length (mm) from ``node`` along its branch; ``severity`` is the fraction of the radius
    removed at the narrowest point.
    """

    node: int
    severity: float
    length_mm: float


@dataclass
class VesselTree:
    """A vessel tree: nodes with parent links, plus its aneurysms and stenoses.

    Node kinds (:meth:`kinds`): ``"root"`` (no parent), ``"bifurcation"`` (2 children),
    ``"trifurcation"`` (3 or more), ``"end"`` (no children: outlet or terminal), else ``"segment"``.
    """

    nodes: list[VesselNode]
    aneurysms: list[Aneurysm] = field(default_factory=list)
    stenoses: list[Stenosis] = field(default_factory=list)

    @property
    def edges(self) -> list[tuple[int, int]]:
        """``(parent, child)`` pairs."""
        return [(n.parent, n.id) for n in self.nodes if n.parent >= 0]

    def child_counts(self) -> np.ndarray:
        counts = np.zeros(len(self.nodes), dtype=int)
        for parent, _ in self.edges:
            counts[parent] += 1
        return counts

    def kinds(self) -> list[str]:
        counts = self.child_counts()
        names = {0: "end", 1: "segment", 2: "bifurcation"}
        return ["root" if n.parent < 0 else names.get(int(counts[n.id]), "trifurcation") for n in self.nodes]

    def _of_kind(self, *wanted: str) -> list[int]:
        return [i for i, kind in enumerate(self.kinds()) if kind in wanted]

    def branch_points(self) -> list[int]:
        """Ids of nodes with two or more children."""
        return self._of_kind("bifurcation", "trifurcation")

    def bifurcations(self) -> list[int]:
        return self._of_kind("bifurcation")

    def trifurcations(self) -> list[int]:
        return self._of_kind("trifurcation")

    def end_points(self) -> list[int]:
        return self._of_kind("end")

    def radii_mm(self) -> np.ndarray:
        return np.array([n.radius_mm for n in self.nodes], dtype=float)

    def indices_zyx(self) -> np.ndarray:
        return np.array([n.index_zyx for n in self.nodes], dtype=float).reshape(-1, 3)

    def positions_mm(self) -> np.ndarray:
        return np.array([n.position_mm for n in self.nodes], dtype=float).reshape(-1, 3)

    def to_json(self) -> dict:
        """Plain JSON: nodes (each with its ``kind``), edges, aneurysms, stenoses and id lists."""
        kinds = self.kinds()
        nodes = [dict(to_jsonable(n), kind=kinds[n.id]) for n in self.nodes]
        return {
            "units": {"position_mm": "physical (x, y, z) in mm, ITK order", "index_zyx": "voxel index (z, y, x)"},
            "nodes": nodes,
            "edges": [list(e) for e in self.edges],
            "bifurcations": self.bifurcations(),
            "trifurcations": self.trifurcations(),
            "end_points": self.end_points(),
            "aneurysms": to_jsonable(self.aneurysms),
            "stenoses": to_jsonable(self.stenoses),
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "tree.json") -> VesselTree:
        """Inverse of :meth:`to_json`; derived fields are recomputed, structure is checked."""
        try:
            nodes = [from_dict(VesselNode, n) for n in data["nodes"]]
            tree = cls(
                nodes=nodes,
                aneurysms=[from_dict(Aneurysm, a) for a in data.get("aneurysms", [])],
                stenoses=[from_dict(Stenosis, s) for s in data.get("stenoses", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{source}: not a vessel tree ({exc}); regenerate it with vs_generate_synthetic") from exc
        for i, node in enumerate(nodes):
            if node.id != i or not -1 <= node.parent < i:
                raise DatasetError(f"{source}: node {i} has id {node.id} / parent {node.parent}; ids must run 0..N-1 "
                                   "with parents before children")
        return tree

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> VesselTree:
        return cls.from_json(read_json(path), str(path))


@dataclass(frozen=True)
class Body:
    """The body region in the local frame: an elliptic cylinder along z, cut by the volume's z range.

    Attributes:
        z_range_mm: ``(first, last)`` voxel-centre z positions in mm.
        center_yx_mm: ellipse centre ``(y, x)`` in mm.
        semi_axes_yx_mm: ellipse semi-axes ``(a_y, a_x)`` in mm.
    """

    z_range_mm: tuple[float, float]
    center_yx_mm: tuple[float, float]
    semi_axes_yx_mm: tuple[float, float]

    def wall_distance(self, q: np.ndarray) -> float:
        """Approximate distance (mm) from ``q`` inside the ellipse to its wall (negative outside)."""
        rel = (np.asarray(q[1:]) - self.center_yx_mm) / self.semi_axes_yx_mm
        return float((1.0 - np.hypot(*rel)) * min(self.semi_axes_yx_mm))

    def inward_push(self, q: np.ndarray, margin: float) -> np.ndarray:
        """A vector pointing inwards, growing from 0 to 1 over the last ``margin`` mm before each wall."""
        push = np.zeros(3)
        rel = np.asarray(q[1:]) - self.center_yx_mm
        depth = self.wall_distance(q)
        if depth < margin and np.any(rel):
            push[1:] -= (1.0 - max(depth, 0.0) / margin) * rel / np.linalg.norm(rel)
        for bound, sign in ((self.z_range_mm[0], 1.0), (self.z_range_mm[1], -1.0)):
            depth = sign * (q[0] - bound)
            if depth < margin:
                push[0] += sign * 0.3 * (1.0 - max(depth, 0.0) / margin)  # weak: outlets through z are fine
        return push

    def mask(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
        """Boolean ``(Z, Y, X)`` mask of voxel centres inside the ellipse (all z)."""
        y = np.arange(shape[1])[:, None] * spacing[1] - self.center_yx_mm[0]
        x = np.arange(shape[2])[None, :] * spacing[2] - self.center_yx_mm[1]
        inside = (y / self.semi_axes_yx_mm[0]) ** 2 + (x / self.semi_axes_yx_mm[1]) ** 2 <= 1.0
        return np.broadcast_to(inside, shape)
