"""Space-colonisation vessel trees: an independent tree generator for the zero-shot dev sets.

The algorithm of Runions et al. (2007) for leaf venation and trees, in 3D: attractor points fill
an organ-shaped region; every attractor pulls the nearest tree node within ``influence`` toward it;
each pulled node grows one step along the mean direction of its attractors; attractors closer than
``kill`` to a node are consumed. Radii follow the pipe model from the leaves up,
``r_parent**gamma = sum(r_child**gamma)`` (Murray: gamma = 3). Nothing here is shared with
vessel_seg's own tree grower (:mod:`vessel_seg.dataset_conversion.synthetic_growth`) or its
pretraining randomiser; the dev sets use it so that no tuning ever saw its trees.

Units: the unit cube ``[0, 1]^3``; the dev-set builder maps it into a volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class ColonizationParams:
    """Attractor count, step, influence and kill distances (unit-cube units), Murray exponent."""

    attractors: int = 800
    step: float = 0.02
    influence: float = 0.18
    kill: float = 0.035
    gamma: float = 3.0
    max_iterations: int = 400


def _region(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` points in a random ellipsoid inside the unit cube (an organ)."""
    centre = rng.uniform(0.45, 0.55, 3)
    axes = rng.uniform(0.3, 0.48, 3)
    points = []
    while sum(len(p) for p in points) < count:
        candidates = rng.uniform(-1, 1, (count, 3))
        points.append(candidates[np.linalg.norm(candidates, axis=1) <= 1.0] * axes + centre)
    return np.concatenate(points)[:count]


def _grow(rng: np.random.Generator, attractors: np.ndarray, params: ColonizationParams) -> tuple[np.ndarray, np.ndarray]:
    """Node positions ``(N, 3)`` and parent indices ``(N,)`` (root -1) of the colonised tree."""
    face = int(rng.integers(3))
    root = rng.uniform(0.35, 0.65, 3)
    root[face] = 0.0
    nodes, parents = [root], [-1]
    # a trunk grows straight in until attractors are within reach
    direction = np.zeros(3)
    direction[face] = 1.0
    while np.min(np.linalg.norm(attractors - nodes[-1], axis=1)) > params.influence and len(nodes) < 200:
        nodes.append(nodes[-1] + params.step * direction)
        parents.append(len(nodes) - 2)
    alive = attractors
    for _ in range(params.max_iterations):
        if len(alive) == 0:
            break
        tree = cKDTree(np.asarray(nodes))
        dist, nearest = tree.query(alive, distance_upper_bound=params.influence)
        pulled = np.isfinite(dist)
        if not pulled.any():
            break
        grown = 0
        for node in np.unique(nearest[pulled]):
            pulls = alive[pulled & (nearest == node)] - nodes[node]
            mean = (pulls / np.linalg.norm(pulls, axis=1, keepdims=True)).sum(axis=0)
            if np.linalg.norm(mean) < 1e-6:
                mean = rng.normal(0, 1, 3)
            new = nodes[node] + params.step * mean / np.linalg.norm(mean) + rng.normal(0, 0.15 * params.step, 3)
            nodes.append(new)
            parents.append(int(node))
            grown += 1
        consumed = cKDTree(np.asarray(nodes)).query(alive, distance_upper_bound=params.kill)[0]
        alive = alive[~np.isfinite(consumed)]
        if grown == 0:
            break
    return np.asarray(nodes), np.asarray(parents)


def _pipe_radii(parents: np.ndarray, gamma: float) -> np.ndarray:
    """Relative radii (leaves 1) by the pipe model, children before parents (ids grow along the tree)."""
    flow = np.ones(len(parents))
    has_child = np.zeros(len(parents), dtype=bool)
    has_child[parents[parents >= 0]] = True
    flow[has_child] = 0.0
    for node in range(len(parents) - 1, 0, -1):
        flow[parents[node]] += flow[node]
    return flow ** (1.0 / gamma)


def colonization_tree(rng: np.random.Generator, params: ColonizationParams | None = None) -> dict:
    """A tree as a segment table in the unit cube: ``proximal``, ``distal`` (x, y, z) and ``radius`` (relative)."""
    params = params or ColonizationParams()
    nodes, parents = _grow(rng, _region(rng, params.attractors), params)
    radii = _pipe_radii(parents, params.gamma)
    children = np.flatnonzero(parents >= 0)
    return {"generator": "space colonisation (Runions 2007), benchmarks/devsets/colonization.py",
            "proximal": nodes[parents[children]].tolist(), "distal": nodes[children].tolist(),
            "radius": radii[children].tolist()}
