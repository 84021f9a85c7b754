"""Centreline graph of a vessel mask: branch points, end points, the inlet, and radii along branches.

The mask is thinned to a one-voxel-wide skeleton (Lee's 3D method, ``skimage.morphology.skeletonize``)
and the skeleton is read as a graph in the 26-neighbourhood. Definitions used throughout:

* **radius** of a skeleton voxel: the Euclidean distance (mm, spacing-aware) from its centre to the
  nearest background voxel centre, i.e. the radius of the largest inscribed sphere.
* **branch point**: a cluster of 26-connected skeleton voxels with three or more neighbours
  (clusters are merged into one node placed at their mean position).
* **end point**: a skeleton voxel with one neighbour. Its radius is the largest voxel radius over its
  first few skeleton voxels, because the skeleton stops short of a cut vessel face.
* **branch**: the skeleton path between two nodes; ``length_mm`` is its polyline length and
  ``mean_radius_mm`` the mean voxel radius along it.
* **spur**: a branch from a branch point to an end point shorter than ``spur_factor`` times the
  branch point's radius plus one (largest) voxel size: a surface bump, not a vessel. Spurs are
  pruned repeatedly, and a branch point left with two branches joins them into one.
* **root** (the inlet): the end point with the largest radius.
* **loop** node: a closed ring of skeleton with no branch or end point is anchored at its widest
  voxel and kept as one branch from that node to itself.

All coordinates are physical ``(x, y, z)`` in mm (ITK/LPS), as in :mod:`vessel_seg.inference.surface_mesh`.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from vessel_seg.errors import VesselSegError
from vessel_seg.imageio import ImageGeometry
from vessel_seg.inference.surface_mesh import polydata_to_vtp, write_bytes_atomic
from vessel_seg.morphology import bounding_box, skeleton_and_radius
from vessel_seg.serialization import write_json_atomic

log = logging.getLogger(__name__)

_END_RADIUS_VOXELS = 4  # skeleton voxels from a tip over which an end point's radius is taken
# Half of the 26-neighbourhood: every neighbour pair is found once.
_HALF_OFFSETS = [o for o in itertools.product((-1, 0, 1), repeat=3) if o > (0, 0, 0)]


@dataclass
class CenterlineNode:
    """A branch point or end point.

    Attributes:
        id: position in :attr:`CenterlineGraph.nodes`.
        kind: ``"branch"``, ``"end"``, ``"root"`` (the inlet end point) or ``"loop"`` (the anchor of a
            closed ring that has no branch or end point, degree 2).
        position_mm: physical ``(x, y, z)`` in mm.
        index_zyx: continuous voxel index ``(z, y, x)``.
        radius_mm: inscribed-sphere radius in mm (see the module docstring for end points).
        degree: number of branches meeting here.
    """

    id: int
    kind: str
    position_mm: tuple[float, float, float]
    index_zyx: tuple[float, float, float]
    radius_mm: float
    degree: int


@dataclass
class CenterlineBranch:
    """A vessel segment between two nodes.

    Attributes:
        id: position in :attr:`CenterlineGraph.branches`.
        start, end: node ids.
        length_mm: polyline length in mm.
        mean_radius_mm: mean inscribed-sphere radius along the branch in mm.
        points_mm: ``(K, 3)`` polyline, physical ``(x, y, z)`` in mm, from ``start`` to ``end``.
        radii_mm: ``(K,)`` radius at each polyline point in mm.
    """

    id: int
    start: int
    end: int
    length_mm: float
    mean_radius_mm: float
    points_mm: np.ndarray
    radii_mm: np.ndarray


@dataclass
class CenterlineGraph:
    """Nodes and branches of a vessel centreline; ``root`` is the inlet node id (``-1`` if none)."""

    nodes: list[CenterlineNode] = field(default_factory=list)
    branches: list[CenterlineBranch] = field(default_factory=list)
    root: int = -1

    def branch_points(self) -> list[int]:
        return [n.id for n in self.nodes if n.kind == "branch"]

    def end_points(self) -> list[int]:
        """Ids of all end points, the root included."""
        return [n.id for n in self.nodes if n.kind in ("end", "root")]

    def total_length_mm(self) -> float:
        return float(sum(b.length_mm for b in self.branches))

    def to_networkx(self) -> nx.MultiGraph:
        """The graph with node and branch attributes (branch key = branch id)."""
        graph = nx.MultiGraph()
        for node in self.nodes:
            graph.add_node(node.id, kind=node.kind, position_mm=node.position_mm, radius_mm=node.radius_mm)
        for b in self.branches:
            graph.add_edge(b.start, b.end, key=b.id, length_mm=b.length_mm, mean_radius_mm=b.mean_radius_mm)
        return graph

    def to_json(self) -> dict:
        """Plain JSON: units, root, nodes (position, radius, kind, degree) and branches with polylines."""
        return {
            "units": {"position_mm": "physical (x, y, z) in mm, ITK/LPS", "radius_mm": "mm", "length_mm": "mm"},
            "root": self.root,
            "nodes": [{"id": n.id, "kind": n.kind, "position_mm": [round(v, 4) for v in n.position_mm],
                       "index_zyx": [round(v, 3) for v in n.index_zyx], "radius_mm": round(n.radius_mm, 4),
                       "degree": n.degree} for n in self.nodes],
            "branches": [{"id": b.id, "start": b.start, "end": b.end, "length_mm": round(b.length_mm, 4),
                          "mean_radius_mm": round(b.mean_radius_mm, 4),
                          "points_mm": np.round(b.points_mm, 4).tolist(),
                          "radii_mm": np.round(b.radii_mm, 4).tolist()} for b in self.branches],
        }


def _voxel_graph(coords: np.ndarray, spacing: np.ndarray) -> nx.Graph:
    """26-neighbourhood graph of skeleton voxels, without the long side of small triangles.

    A diagonal step next to two face steps would otherwise give voxels on a plain bend three
    neighbours; an edge is dropped when a common neighbour is closer to both of its ends.
    """
    lookup = {tuple(c): i for i, c in enumerate(coords)}
    graph = nx.Graph()
    graph.add_nodes_from(range(len(coords)))
    for i, c in enumerate(coords):
        for off in _HALF_OFFSETS:
            j = lookup.get((c[0] + off[0], c[1] + off[1], c[2] + off[2]))
            if j is not None:
                graph.add_edge(i, j, length=float(np.linalg.norm(np.asarray(off) * spacing)))
    redundant = []
    for u, v, data in graph.edges(data=True):
        for w in set(graph[u]) & set(graph[v]):
            if graph[u][w]["length"] < data["length"] and graph[v][w]["length"] < data["length"]:
                redundant.append((u, v))
                break
    graph.remove_edges_from(redundant)
    return graph


def _trace_branches(graph: nx.Graph, node_of: dict[int, int]) -> list[list[int]]:
    """Voxel paths between node voxels; ``node_of`` maps a node voxel to its node (cluster) id."""
    paths, seen = [], set()
    for start in node_of:
        for nxt in graph[start]:
            if node_of.get(nxt) == node_of[start]:
                continue  # inside the same junction cluster
            path, prev, cur = [start], start, nxt
            while cur not in node_of:
                path.append(cur)
                onward = [v for v in graph[cur] if v != prev]
                if not onward:
                    break
                prev, cur = cur, onward[0]
            path.append(cur)
            key = min(tuple(path), tuple(path[::-1]))
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths


def _polyline_length(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum()) if len(points) > 1 else 0.0


def _build_multigraph(mask: np.ndarray, spacing: np.ndarray) -> nx.MultiGraph:
    """Skeleton -> graph of nodes (``index``, ``radius``) and branches (``points`` zyx, ``radii``)."""
    # Crop to the bounding box plus one background voxel: skeletonisation cost grows with the volume.
    box = bounding_box(mask, margin=1)
    lo = np.array([b.start for b in box])
    skeleton, dist = skeleton_and_radius(mask[box], spacing)
    coords = np.argwhere(skeleton) + lo
    radii = dist[skeleton].astype(np.float64)  # same (C-order) sequence as ``coords``
    voxels = _voxel_graph(coords, spacing)
    degree = dict(voxels.degree())
    junction = [i for i, d in degree.items() if d >= 3]
    node_of: dict[int, int] = {}
    out = nx.MultiGraph()
    for cluster in nx.connected_components(voxels.subgraph(junction)):
        members = sorted(cluster)
        out.add_node(len(out), index=coords[members].mean(axis=0), radius=float(radii[members].max()))
        node_of.update({m: len(out) - 1 for m in members})
    for i, d in degree.items():
        if d == 1:
            node_of[i] = len(out)
            out.add_node(len(out), index=coords[i].astype(np.float64), radius=float(radii[i]))
    for component in nx.connected_components(voxels):
        if len(component) >= 3 and not any(i in node_of for i in component):
            anchor = max(component, key=lambda i: radii[i])  # a closed ring: anchor it at its widest voxel
            node_of[anchor] = len(out)
            out.add_node(len(out), index=coords[anchor].astype(np.float64), radius=float(radii[anchor]))
    for path in _trace_branches(voxels, node_of):
        a, b = node_of.get(path[0], -1), node_of.get(path[-1], -1)
        if b < 0:  # ran into the end of a path without a node voxel (cannot happen for degree <= 2 ends)
            continue
        inner = path[1:-1]
        points = np.vstack([out.nodes[a]["index"], coords[inner], out.nodes[b]["index"]]).astype(np.float64)
        branch_radii = np.concatenate([[out.nodes[a]["radius"]], radii[inner], [out.nodes[b]["radius"]]])
        out.add_edge(a, b, points=points, radii=branch_radii)
    isolated = [n for n in out.nodes if out.degree(n) == 0]
    out.remove_nodes_from(isolated)
    for n in out.nodes:  # end points: the skeleton stops short of a cut face, so look a few voxels in
        if out.degree(n) == 1:
            (_, _, data), = out.edges(n, data=True)
            r = data["radii"] if np.allclose(data["points"][0], out.nodes[n]["index"]) else data["radii"][::-1]
            out.nodes[n]["radius"] = float(r[:_END_RADIUS_VOXELS + 1].max())
    return out


def _merge_through(graph: nx.MultiGraph, node: int) -> None:
    """Replace a degree-2 node and its two branches by one branch."""
    (_, a, ka, da), (_, b, kb, db) = list(graph.edges(node, keys=True, data=True))
    if a == node:  # a loop through itself: nothing to merge
        return
    pa = da["points"] if np.allclose(da["points"][-1], graph.nodes[node]["index"]) else da["points"][::-1]
    ra = da["radii"] if pa is da["points"] else da["radii"][::-1]
    pb = db["points"] if np.allclose(db["points"][0], graph.nodes[node]["index"]) else db["points"][::-1]
    rb = db["radii"] if pb is db["points"] else db["radii"][::-1]
    graph.remove_node(node)
    graph.add_edge(a, b, points=np.vstack([pa, pb[1:]]), radii=np.concatenate([ra, rb[1:]]))


def _prune(graph: nx.MultiGraph, spacing: np.ndarray, spur_factor: float) -> None:
    """Remove spurs and short self-loops, merging the nodes that drop to degree 2, until stable."""
    changed = True
    while changed:
        changed = False
        for u, v, k, data in list(graph.edges(keys=True, data=True)):
            if not graph.has_edge(u, v, k):
                continue
            length = _polyline_length(data["points"] * spacing)
            du, dv = graph.degree(u), graph.degree(v)
            if u == v and length < 2 * np.pi * graph.nodes[u]["radius"]:
                graph.remove_edge(u, v, k)
                changed = True
            elif min(du, dv) == 1 and max(du, dv) >= 3:
                junction = u if du >= 3 else v
                if length < spur_factor * graph.nodes[junction]["radius"] + float(spacing.max()):
                    graph.remove_edge(u, v, k)
                    graph.remove_node(v if junction == u else u)
                    changed = True
        for n in [n for n in graph.nodes if graph.degree(n) == 2]:
            if graph.has_node(n) and graph.degree(n) == 2 and graph.number_of_edges(n, n) == 0:
                _merge_through(graph, n)
                changed = True
        graph.remove_nodes_from([n for n in graph.nodes if graph.degree(n) == 0])


def extract_centerline(mask: np.ndarray, geometry: ImageGeometry, spur_factor: float = 1.0) -> CenterlineGraph:
    """Centreline graph of a binary vessel mask.

    Parameters
    ----------
    mask : (Z, Y, X) array
        Vessel where non-zero.
    geometry : ImageGeometry
        Placement of ``mask``; positions come out as physical ``(x, y, z)`` in mm.
    spur_factor : float
        A terminal branch off a branch point is a spur, and pruned, when it is shorter than
        ``spur_factor * radius(branch point) + largest voxel size``.

    Returns
    -------
    CenterlineGraph
        Nodes (branch points, end points, the root) and branches with mm polylines and radii.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or tuple(mask.shape) != tuple(geometry.shape):
        raise VesselSegError(f"centreline: mask shape {mask.shape} does not match its geometry "
                             f"{tuple(geometry.shape)}; give the (Z, Y, X) mask of that image")
    fg = mask > 0
    if not fg.any():
        raise VesselSegError("centreline: the mask is empty (no foreground voxel); nothing to trace")
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    graph = _build_multigraph(fg, spacing)
    _prune(graph, spacing, spur_factor)
    ids = {n: i for i, n in enumerate(sorted(graph.nodes))}
    nodes = []
    for n, i in ids.items():
        index = graph.nodes[n]["index"]
        nodes.append(CenterlineNode(
            id=i, kind={1: "end", 2: "loop"}.get(graph.degree(n), "branch"),
            position_mm=tuple(float(v) for v in geometry.index_to_physical(index[None])[0]),
            index_zyx=tuple(float(v) for v in index), radius_mm=float(graph.nodes[n]["radius"]),
            degree=int(graph.degree(n))))
    branches = []
    for u, v, data in graph.edges(data=True):
        points = data["points"]
        if not np.allclose(points[0], graph.nodes[u]["index"]):
            points, radii = points[::-1], data["radii"][::-1]
        else:
            radii = data["radii"]
        branches.append(CenterlineBranch(
            id=len(branches), start=ids[u], end=ids[v], length_mm=_polyline_length(points * spacing),
            mean_radius_mm=float(np.mean(radii)), points_mm=geometry.index_to_physical(points),
            radii_mm=np.asarray(radii, dtype=np.float64)))
    ends = [n for n in nodes if n.kind == "end"]
    root = max(ends, key=lambda n: n.radius_mm).id if ends else -1
    if root >= 0:
        nodes[root].kind = "root"
    result = CenterlineGraph(nodes=nodes, branches=branches, root=root)
    log.info("centreline: %d branch points, %d end points, %d branches, %.1f mm", len(result.branch_points()),
             len(result.end_points()), len(branches), result.total_length_mm())
    return result


def centerline_to_vtp(graph: CenterlineGraph) -> bytes:
    """VTK XML PolyData: one polyline per branch, point data ``radius`` (mm), cell data ``branch_id``,
    ``length_mm`` and ``mean_radius_mm``."""
    points, lines, radii, offset = [], [], [], 0
    for b in graph.branches:
        points.append(b.points_mm)
        radii.append(b.radii_mm)
        lines.append(np.arange(offset, offset + len(b.points_mm)))
        offset += len(b.points_mm)
    return polydata_to_vtp(
        np.vstack(points) if points else np.zeros((0, 3)), lines=lines,
        point_data={"radius": np.concatenate(radii) if radii else np.zeros(0)},
        cell_data={"branch_id": np.array([b.id for b in graph.branches], dtype=np.int64),
                   "length_mm": np.array([b.length_mm for b in graph.branches], dtype=np.float64),
                   "mean_radius_mm": np.array([b.mean_radius_mm for b in graph.branches], dtype=np.float64)})


def save_centerline(graph: CenterlineGraph, json_path: str | Path | None, vtp_path: str | Path | None) -> None:
    """Write the graph as JSON (:meth:`CenterlineGraph.to_json`) and/or VTP polylines, atomically."""
    if json_path is not None:
        write_json_atomic(json_path, graph.to_json())
        log.info("wrote %s", json_path)
    if vtp_path is not None:
        write_bytes_atomic(vtp_path, centerline_to_vtp(graph))
        log.info("wrote %s", vtp_path)
