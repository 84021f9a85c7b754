"""Random branching 3D vessel trees grown in millimetre space.

Growth happens in a *local frame*: ``q = index_zyx * spacing`` (mm, array order), which is the
physical frame up to the image's origin and direction; the finished nodes also carry their
physical ITK ``(x, y, z)`` position computed with the image geometry.

Generation recipe (all random draws from one ``numpy.random.Generator``):

- the root vessel enters through a z face of the volume, inside the body (an elliptic cylinder
  along z, :class:`Body`), with a radius of ``root_radius_voxels`` in-plane voxels;
- each branch is traced in steps of about its radius; its direction turns with a smooth random
  curvature (an Ornstein-Uhlenbeck process on the turning vector, i.e. tortuosity) and is pushed
  back when it nears the body wall or a z face; it also drifts towards a random point of the body
  ahead of it, which spreads the tree over the volume; its radius tapers geometrically;
- large branches shed side branches along their way; every branch ends in a bifurcation or a
  trifurcation whose child radii follow Murray's law (``r0**3 = sum(ri**3)``) with random
  asymmetry, until the radius reaches ``min_radius_voxels`` or the generation limit;
- a branch that leaves the body or a z face ends there (an outlet);
- optionally one stenosis (Gaussian narrowing of a wide branch) and one saccular aneurysm (on a
  side wall, or on the apex of a bifurcation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vessel_seg.dataset_conversion.synthetic_tree import Aneurysm, Body, Stenosis, VesselNode, VesselTree
from vessel_seg.imageio.geometry import ImageGeometry


@dataclass(frozen=True)
class TreeParams:
    """Knobs of the tree generator; ``(low, high)`` pairs are uniform ranges drawn per tree or branch.

    Attributes:
        root_radius_voxels: root radius in in-plane voxels (the smaller of the y/x spacings).
        min_radius_voxels: no vessel gets thinner than this (in-plane voxels).
        max_generations: deepest generation (branch points passed since the root) that may still split.
        trifurcation_probability: chance that a terminal split has three children instead of two.
        side_branches_per_span: expected side branches per body width of vessel length
            (generations 0-3 only).
        taper: radius at the end of a branch over radius at its start.
        root_length: root length as a fraction of the volume's z extent.
        length_ratio: child branch length over parent branch length.
        tortuosity: scale of the random curvature (0 gives straight branches).
        attraction: strength of the drift towards each branch's random target point.
        stenosis_probability, aneurysm_probability: chance of one stenosis / one aneurysm per tree.
        max_nodes: safety cap on the number of centreline samples.
    """

    root_radius_voxels: tuple[float, float] = (3.6, 4.4)
    min_radius_voxels: float = 1.0
    max_generations: int = 6
    trifurcation_probability: float = 0.2
    side_branches_per_span: float = 6.0
    taper: tuple[float, float] = (0.75, 0.92)
    root_length: tuple[float, float] = (0.35, 0.6)
    length_ratio: tuple[float, float] = (0.7, 0.9)
    tortuosity: float = 1.0
    attraction: float = 1.5
    stenosis_probability: float = 0.5
    aneurysm_probability: float = 0.4
    max_nodes: int = 20000


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """A random unit vector perpendicular to unit vector ``d``."""
    v = rng.standard_normal(3)
    return _unit(v - (v @ d) * d)


def _rotate_away(d: np.ndarray, axis_perp: np.ndarray, angle: float) -> np.ndarray:
    """``d`` tilted by ``angle`` radians towards the perpendicular unit vector ``axis_perp``."""
    return _unit(np.cos(angle) * d + np.sin(angle) * axis_perp)


class _Occupancy:
    """Which branch owns each cell of a grid over the body (cell size ``cell`` mm), to keep vessels apart.

    A vessel lumen marks the cells within its radius; a new step collides when a cell of another
    branch lies within its own radius plus the wanted gap. The tree thus stays a tree (no
    touching or crossing vessels, so no spurious loops in the label) and fills space like a
    vascular territory instead of a tangle.
    """

    def __init__(self, body: Body, cell: float, pad: float):
        self.cell = cell
        axes = np.asarray(body.semi_axes_yx_mm)
        self.origin = np.array([body.z_range_mm[0], *(np.asarray(body.center_yx_mm) - axes)]) - pad
        extent = np.array([body.z_range_mm[1] - body.z_range_mm[0], *(2 * axes)]) + 2 * pad
        self.owner = np.full(tuple(np.ceil(extent / cell).astype(int) + 1), -1, dtype=np.int16)
        self.log: list[tuple[tuple[slice, ...], np.ndarray]] = []

    def _ball(self, q: np.ndarray, radius: float) -> tuple[tuple[slice, ...], np.ndarray]:
        centre = (q - self.origin) / self.cell
        reach = radius / self.cell
        lo = np.maximum(np.floor(centre - reach).astype(int), 0)
        hi = np.maximum(np.minimum(np.ceil(centre + reach).astype(int) + 1, self.owner.shape), lo)
        z, y, x = (np.arange(a, b) - c for a, b, c in zip(lo, hi, centre, strict=True))
        inside = z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2 <= reach**2
        return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), inside

    def mark(self, q: np.ndarray, radius: float, owner: int) -> None:
        """Give the free cells within ``radius`` of ``q`` to ``owner`` (logged for :meth:`undo`)."""
        box, inside = self._ball(q, radius)
        view = self.owner[box]
        taken = inside & (view < 0)
        view[taken] = owner
        self.log.append((box, taken))

    def undo(self) -> None:
        """Free the cells marked since the log was last cleared."""
        for box, taken in self.log:
            self.owner[box][taken] = -1
        self.log.clear()

    def collision(self, q: np.ndarray, radius: float, ignore: list[int]) -> np.ndarray | None:
        """Centre (local frame, mm) of cells within ``radius`` of ``q`` owned by a branch not in ``ignore``."""
        box, inside = self._ball(q, radius)
        owners = self.owner[box]
        foreign = inside & (owners >= 0)
        for owner in ignore:
            foreign &= owners != owner
        hits = np.argwhere(foreign)
        if not len(hits):
            return None
        start = np.array([b.start for b in box])
        return self.origin + (hits.mean(axis=0) + start) * self.cell


@dataclass
class _Branch:
    start: int
    direction: np.ndarray
    radius: float
    length: float
    generation: int


class _Grower:
    """Traces branches into flat arrays (local frame); the public entry point is :func:`grow_tree`."""

    def __init__(self, rng: np.random.Generator, body: Body, spacing: np.ndarray, params: TreeParams):
        h = float(min(spacing[1:]))
        self.rng, self.body, self.h, self.p = rng, body, h, params
        # Surface-to-surface gap between distinct vessels: more than a voxel diagonal (plus the
        # occupancy grid's resolution), so their labels never touch, not even 26-connected.
        self.gap = float(np.linalg.norm(spacing)) + h
        self.span = 2.0 * min(body.semi_axes_yx_mm)
        self.r_min = params.min_radius_voxels * h
        self.q: list[np.ndarray] = []
        self.r: list[float] = []
        self.parent: list[int] = []
        self.gen: list[int] = []
        self.branches: list[list[int]] = []
        self.node_branch: list[int] = []
        self.occupancy = _Occupancy(body, cell=h, pad=params.root_radius_voxels[1] * h + 2 * h)

    def add(self, q: np.ndarray, r: float, parent: int, gen: int) -> int:
        self.q.append(q)
        self.r.append(r)
        self.parent.append(parent)
        self.gen.append(gen)
        self.node_branch.append(len(self.branches))
        return len(self.q) - 1

    def _rollback(self, n_nodes: int, queue: list[_Branch], n_queue: int) -> None:
        """Forget the branch being traced: its nodes, its cells and the side branches it queued."""
        for values in (self.q, self.r, self.parent, self.gen, self.node_branch):
            del values[n_nodes:]
        del queue[n_queue:]
        self.occupancy.undo()

    def trace(self, br: _Branch, queue: list[_Branch]) -> None:
        """Walk one branch, queueing its side branches and its terminal split."""
        rng, p = self.rng, self.p
        node, d, s = br.start, br.direction, 0.0
        r_end_ratio = rng.uniform(*p.taper)
        r_start, r = br.radius, br.radius
        turn = np.zeros(3)
        corr = 0.1 * self.span  # correlation length of the curvature (mm)
        target = self.pick_target(self.q[br.start], d, br.length)
        # Curvature std (1/mm): thin vessels wind more than wide ones.
        kappa = p.tortuosity * 1.5 / self.span * np.sqrt(4.0 * self.h / br.radius)
        n_side = rng.poisson(p.side_branches_per_span * br.length / self.span) if br.generation < 4 else 0
        side_at = sorted(rng.uniform(0.15, 0.9, n_side) * br.length)
        bid = min(len(self.branches), np.iinfo(np.int16).max)
        path, n_nodes, n_queue = [node], len(self.q), len(queue)
        self.occupancy.log.clear()
        # Near its start a branch overlaps its parent and its siblings, so those are ignored there.
        grace = 1.5 * (self.r[br.start] + br.radius + self.gap)
        blocked = False
        near = [bid, self.node_branch[br.start]] + [b for b, path_b in enumerate(self.branches) if path_b[0] == br.start]
        while s < br.length and len(self.q) < p.max_nodes:
            ds = float(np.clip(0.8 * r, 0.8 * self.h, 3.0 * self.h))
            decay = np.exp(-ds / corr)
            turn = turn * decay + kappa * np.sqrt(1 - decay**2) * rng.standard_normal(3)
            turn -= (turn @ d) * d
            push = self.body.inward_push(self.q[node], margin=0.2 * self.span + r)
            to_target = target - self.q[node]
            pull = to_target / max(np.linalg.norm(to_target), ds)
            d = _unit(d + turn * ds + push * ds * 12.0 / self.span + pull * ds * p.attraction / br.length)
            q_new = self.q[node] + d * ds
            ignore = near if s < grace else [bid]
            hit = self.occupancy.collision(q_new, r + self.gap, ignore)
            if hit is not None:  # swerve away from the other vessel once, else end here
                d = _unit(d + 1.5 * _unit(q_new - hit))
                q_new = self.q[node] + d * ds
                if self.occupancy.collision(q_new, r + self.gap, ignore) is not None:
                    blocked = True
                    break
            if self.body.wall_distance(q_new) < r + self.h:
                break  # would leave the body sideways: end here
            s += ds
            r = max(r_start * r_end_ratio ** (s / br.length), self.r_min)
            node = self.add(q_new, r, node, br.generation)
            path.append(node)
            self.occupancy.mark(q_new, r, bid)
            z0, z1 = self.body.z_range_mm
            if not z0 - self.h <= q_new[0] <= z1 + self.h:
                self.branches.append(path)
                return  # an outlet through a z face
            while side_at and s >= side_at[0] and s > grace:
                side_at.pop(0)
                r_side = max(r * rng.uniform(0.45, 0.7), self.r_min)
                r = max((r**3 - r_side**3) ** (1 / 3), self.r_min)  # Murray's law for the main vessel
                r_start = r / r_end_ratio ** (s / br.length)
                angle = rng.uniform(np.radians(45), np.radians(85))
                queue.append(_Branch(node, _rotate_away(d, _perpendicular(rng, d), angle), r_side,
                                     br.length * rng.uniform(*p.length_ratio) * 0.8, br.generation + 1))
        if br.generation > 0 and (s <= grace or (blocked and s < grace + 2.0 * br.radius)):
            # A stub that never left its parent, or that ran into another vessel right after (where
            # it may still lie too close to a sibling): there is no room for it.
            self._rollback(n_nodes, queue, n_queue)
            return
        self.branches.append(path)
        if s >= br.length and br.generation < p.max_generations and r > 1.3 * self.r_min:
            self.split(node, d, r, br, queue)

    def pick_target(self, q: np.ndarray, d: np.ndarray, length: float) -> np.ndarray:
        """A point of the body ahead of ``q`` about ``length`` away, for the branch to drift towards.

        Aiming branches at random points of the body spreads the tree over the volume (space
        filling) instead of letting branches pile up against the walls.
        """
        rng, body = self.rng, self.body
        n = 16
        rho, phi = 0.8 * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
        points = np.column_stack([
            rng.uniform(*body.z_range_mm, n),
            body.center_yx_mm[0] + rho * body.semi_axes_yx_mm[0] * np.cos(phi),
            body.center_yx_mm[1] + rho * body.semi_axes_yx_mm[1] * np.sin(phi),
        ])
        rel = points - q
        dist = np.linalg.norm(rel, axis=1) + 1e-9
        score = (rel @ d) / dist - 0.5 * np.abs(dist - length) / length
        return points[int(np.argmax(score))]

    def split(self, node: int, d: np.ndarray, r: float, br: _Branch, queue: list[_Branch]) -> None:
        rng, p = self.rng, self.p
        k = 3 if rng.random() < p.trifurcation_probability else 2
        fractions = rng.dirichlet([4.0] * k)
        radii = [max(r * f ** (1 / 3), self.r_min) for f in fractions]
        phi0, e1 = rng.uniform(0, 2 * np.pi), _perpendicular(rng, d)
        e2 = np.cross(d, e1)
        for i, ri in enumerate(radii):
            if k == 2:
                # Murray-optimal angle between parent and child i, given the sibling's radius.
                rj = radii[1 - i]
                cos_t = (r**4 + ri**4 - rj**4) / (2 * r**2 * ri**2)
                angle = np.arccos(np.clip(cos_t, np.cos(np.radians(75)), np.cos(np.radians(15))))
            else:
                angle = rng.uniform(np.radians(30), np.radians(60))
            phi = phi0 + 2 * np.pi * i / k + rng.normal(0, 0.2)
            perp = np.cos(phi) * e1 + np.sin(phi) * e2
            length = max(br.length * rng.uniform(*p.length_ratio), 8 * ri)
            queue.append(_Branch(node, _rotate_away(d, perp, angle + rng.normal(0, 0.1)), ri, length, br.generation + 1))

    def narrow(self) -> list[Stenosis]:
        """Narrow a random wide vessel, with probability ``stenosis_probability``.

        The centre is a node at least two radii wide (``2 * r_min``) in the middle half of its
        branch; the narrowest lumen keeps at least ``r_min`` so that the label stays connected.
        """
        rng = self.rng
        candidates = [(b, i) for b, path in enumerate(self.branches) if len(path) > 8
                      for i in range(len(path) // 4, 3 * len(path) // 4) if self.r[path[i]] > 2.0 * self.r_min]
        if not candidates or rng.random() >= self.p.stenosis_probability:
            return []
        branch, centre = candidates[rng.integers(len(candidates))]
        path = self.branches[branch]
        steps = np.linalg.norm(np.diff(np.array([self.q[i] for i in path]), axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(steps)])
        r_centre = self.r[path[centre]]
        severity = min(rng.uniform(0.35, 0.6), 1.0 - self.r_min / r_centre)
        sigma = r_centre * rng.uniform(1.0, 2.0)
        for node, s in zip(path, arc - arc[centre], strict=True):
            narrowed = self.r[node] * (1.0 - severity * np.exp(-(s**2) / (2 * sigma**2)))
            self.r[node] = max(narrowed, min(self.r[node], self.r_min))
        return [Stenosis(node=path[centre], severity=float(severity), length_mm=float(sigma))]

    def bulge(self) -> list[tuple[int, np.ndarray, float]]:
        """Place a saccular aneurysm (node, centre, radius) with probability ``aneurysm_probability``.

        A third of the sacs sit on the apex of a bifurcation (where the flow hits), the others on
        a side wall; the sac overlaps its vessel by half its radius and keeps clear of the body
        wall and of every other vessel.
        """
        rng = self.rng
        if rng.random() >= self.p.aneurysm_probability:
            return []
        counts = np.bincount([p for p in self.parent if p >= 0], minlength=len(self.q))
        wide = [i for i in range(1, len(self.q)) if self.r[i] > 1.5 * self.r_min and self.gen[i] <= 3]
        apexes = [i for i in wide if counts[i] >= 2]
        z0, z1 = self.body.z_range_mm
        for _ in range(10):
            pool = apexes if apexes and rng.random() < 1 / 3 else wide
            if not pool:
                return []
            node = pool[rng.integers(len(pool))]
            tangent = _unit(self.q[node] - self.q[self.parent[node]])
            normal = tangent if counts[node] >= 2 else _perpendicular(rng, tangent)
            radius = self.r[node] * rng.uniform(1.3, 2.2)
            centre = self.q[node] + normal * (self.r[node] + 0.5 * radius)
            own = [self.node_branch[node]] + [b for b, path in enumerate(self.branches) if path[0] == node]
            if (self.body.wall_distance(centre) > radius + self.h and z0 + radius < centre[0] < z1 - radius
                    and self.occupancy.collision(centre, radius + self.gap, own) is None):
                return [(node, centre, float(radius))]
        return []


def grow_tree(
    rng: np.random.Generator, geometry: ImageGeometry, body: Body, params: TreeParams | None = None
) -> VesselTree:
    """Grow a random vessel tree inside ``body`` and place it with ``geometry``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all random draws (the same state gives the same tree).
    geometry : ImageGeometry
        Shape, spacing ``(z, y, x)`` in mm, origin and direction of the target image.
    body : Body
        Region (local frame, mm) the vessels must stay in.
    params : TreeParams, optional
        Generator settings; defaults to :class:`TreeParams()`.

    Returns
    -------
    VesselTree
        Nodes with physical ``(x, y, z)`` positions (mm), voxel indices ``(z, y, x)`` and radii (mm).
    """
    params = params or TreeParams()
    spacing = np.asarray(geometry.spacing, dtype=float)
    h = float(min(spacing[1:]))
    grower = _Grower(rng, body, spacing, params)
    r0 = rng.uniform(*params.root_radius_voxels) * h
    # The root enters through a z face, inside the inner half of the body ellipse.
    from_top = rng.random() < 0.5
    z0, z1 = body.z_range_mm
    rho, phi = np.sqrt(rng.uniform(0, 0.25)), rng.uniform(0, 2 * np.pi)
    yx = np.asarray(body.center_yx_mm) + rho * np.asarray(body.semi_axes_yx_mm) * [np.cos(phi), np.sin(phi)]
    start = np.array([z0 - 0.5 * spacing[0] if from_top else z1 + 0.5 * spacing[0], *yx])
    direction = _rotate_away(np.array([1.0 if from_top else -1.0, 0.0, 0.0]),
                             _perpendicular(rng, np.array([1.0, 0.0, 0.0])), rng.uniform(0, np.radians(25)))
    root_length = rng.uniform(*params.root_length) * (z1 - z0)
    queue = [_Branch(grower.add(start, r0, -1, 0), direction, r0, root_length, 0)]
    grower.occupancy.mark(start, r0, 0)
    while queue and len(grower.q) < params.max_nodes:
        grower.trace(queue.pop(0), queue)
    stenoses = grower.narrow()
    sacs = grower.bulge()

    # Rounded to 0.1 um / 1e-4 voxel: compact JSON, and the saved tree renders the very same label.
    index = np.round(np.array(grower.q) / spacing, 4)
    physical = np.round(geometry.index_to_physical(index), 4)
    nodes = [
        VesselNode(i, grower.parent[i], _floats(physical[i]), _floats(index[i]), round(float(grower.r[i]), 5),
                   grower.gen[i])
        for i in range(len(index))
    ]
    aneurysms = []
    for node, centre, radius in sacs:
        idx = np.round(centre / spacing, 4)
        position = np.round(geometry.index_to_physical(idx[None])[0], 4)
        aneurysms.append(Aneurysm(node, _floats(position), _floats(idx), round(radius, 5)))
    return VesselTree(nodes=nodes, aneurysms=aneurysms, stenoses=stenoses)


def _floats(values: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)
