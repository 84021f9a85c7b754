"""Cache constructive-constrained-optimisation vessel trees from svVascularize (``svv``) as JSON.

Runs in its own environment (svv pulls VTK, PyVista, Open3D, PySide6 and more; it is never a
dependency of vessel_seg)::

    python3 -m venv /tmp/svv_venv && /tmp/svv_venv/bin/pip install svv==0.0.57
    SVV_TELEMETRY_DISABLED=1 /tmp/svv_venv/bin/python benchmarks/devsets/svv_trees.py \\
        --out benchmarks/work/devsets/svv_trees --count 16

Each ``tree_NNN.json`` holds the tree's segments in svv's own unit domain: ``proximal`` and
``distal`` points (x, y, z) and ``radius`` per segment, the domain's name and the number of
terminals. vessel_seg's dev-set builder (``make_devsets.py``) maps them into a volume and renders
them; nothing of vessel_seg's own tree grower is involved. A tree already cached is kept.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DOMAINS = ("cube", "sphere", "ellipsoid", "cylinder")


def _domain(name: str, rng):
    import pyvista as pv
    from svv.domain.domain import Domain

    if name == "cube":
        shape = pv.Cube()
    elif name == "sphere":
        shape = pv.Sphere(radius=0.5, theta_resolution=24, phi_resolution=24)
    elif name == "ellipsoid":
        shape = pv.ParametricEllipsoid(*(0.5 * rng.uniform(0.6, 1.0, 3)), u_res=24, v_res=24, w_res=24)
    else:
        shape = pv.Cylinder(radius=0.45, height=1.0, resolution=24).triangulate()
    domain = Domain(shape)
    domain.create()
    domain.solve()
    domain.build()
    return domain


def make_tree(index: int, terminals: int) -> dict:
    """One svv tree grown in a domain chosen by ``index``; segments as plain lists."""
    import numpy as np
    from svv.tree.tree import Tree

    rng = np.random.default_rng(1000 + index)
    name = DOMAINS[index % len(DOMAINS)]
    tree = Tree()
    tree.set_domain(_domain(name, rng))
    tree.set_root()
    tree.n_add(terminals)
    data = tree.data
    return {"generator": "svv 0.0.57 (svVascularize, constructive constrained optimisation)", "domain": name,
            "terminals": terminals, "proximal": np.asarray(data.get("proximal")).tolist(),
            "distal": np.asarray(data.get("distal")).tolist(), "radius": np.asarray(data.get("radius")).ravel().tolist()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for k in range(args.count):
        path = args.out / f"tree_{k:03d}.json"
        if path.is_file():
            continue
        terminals = [25, 50, 80, 120][k % 4]
        tree = make_tree(k, terminals)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(tree))
        os.replace(tmp, path)
        print(path, tree["domain"], len(tree["radius"]), "segments", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
