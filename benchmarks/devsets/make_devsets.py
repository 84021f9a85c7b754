"""Build (once) and freeze the zero-shot dev sets: trees from generators the randomiser never uses,
rendered in appearances it never produces, split into train / tune / report cases.

Usage::

    .venv/bin/python benchmarks/devsets/make_devsets.py --work benchmarks/work/devsets \\
        [--svv-trees benchmarks/work/devsets/svv_trees] [--train-cases 8] [--tune-cases 3] [--report-cases 4]

Generators (geometry):

- ``svv``: constructive constrained optimisation trees of svVascularize (``svv_trees.py`` caches them;
  each tree's unit domain is mapped into the volume, radii scaled so the root is 2-6 voxels);
- ``colonization``: space-colonisation trees (``colonization.py``), root 2-6 voxels;
- ``large``: svv trees scaled so the root is 10-30 voxels (aorta-sized at the image's own spacing).

Appearances (``appearance.py``): ``ct``, ``mr``, ``microscopy``; every case carries label-0 look-alikes.
Each set is ``DatasetNNN_Dev<Generator><Appearance>`` in nnU-Net's raw layout: ``imagesTr/labelsTr`` (the
train split, for the trained-with-labels arm), ``imagesTune/labelsTune`` (the only cases anyone may tune
on) and ``imagesTs/labelsTs`` (the report split). ``manifest.json`` records the SHA-256 of every file
when a set is first written; a later run verifies them and refuses a set that changed (frozen).
Synthetic data throughout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appearance import APPEARANCES, RENDERERS, SPACING_MM  # noqa: E402
from colonization import colonization_tree  # noqa: E402

GENERATORS = {"svv": (2.0, 6.0), "colonization": (2.0, 6.0), "large": (10.0, 30.0)}  # root radius, voxels
SIZES = {"svv": 80, "colonization": 80, "large": 112}
SPLITS = ("train", "tune", "report")
FOLDERS = {"train": ("imagesTr", "labelsTr"), "tune": ("imagesTune", "labelsTune"), "report": ("imagesTs", "labelsTs")}
BASE_SEED = 880_000  # used for nothing else


def set_names(generators=tuple(GENERATORS), appearances=APPEARANCES) -> list[tuple[int, str, str]]:
    """``(dataset id, generator, appearance)`` of every dev set (ids 801-809)."""
    return [(801 + 3 * g + a, gen, app) for g, gen in enumerate(GENERATORS) for a, app in enumerate(APPEARANCES)
            if gen in generators and app in appearances]


def case_seed(dataset_id: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(BASE_SEED + dataset_id, spawn_key=(SPLITS.index(split), index)))


def _tree_table(generator: str, rng: np.random.Generator, svv_trees: list[Path], pick: int) -> dict:
    if generator == "colonization":
        return colonization_tree(rng)
    if not svv_trees:
        raise SystemExit("no cached svv trees: run benchmarks/devsets/svv_trees.py first (see its docstring)")
    return json.loads(svv_trees[pick].read_text())


def tree_segments(table: dict, shape, spacing, root_voxels: float, rng: np.random.Generator,
                  min_relative_radius: float = 0.0) -> list[tuple]:
    """Map a segment table from the unit cube into the volume (local frame, mm, z/y/x) with a random axis order
    and flips; segments thinner than ``min_relative_radius`` of the root are dropped."""
    proximal, distal = np.asarray(table["proximal"], float), np.asarray(table["distal"], float)
    radius = np.asarray(table["radius"], float)
    lo, hi = np.minimum(proximal.min(0), distal.min(0)), np.maximum(proximal.max(0), distal.max(0))
    order = rng.permutation(3)  # which of svv's axes becomes z, y, x
    extent = (np.asarray(shape) - 1) * np.asarray(spacing)
    scale = lambda p: ((p - lo) / np.maximum(hi - lo, 1e-9))[:, order] * 0.9 * extent + 0.05 * extent  # noqa: E731
    a, b = scale(proximal), scale(distal)
    flip = rng.random(3) < 0.5
    a[:, flip], b[:, flip] = extent[flip] - a[:, flip], extent[flip] - b[:, flip]
    relative = radius / radius.max()
    r = relative * root_voxels * min(spacing)
    keep = relative >= min_relative_radius
    return [(p, q, rr, rr) for p, q, rr, k in zip(a, b, r, keep, strict=True) if k]


def render_case(generator: str, appearance: str, rng: np.random.Generator, svv_trees: list[Path], pick: int):
    """``(image, label, spacing)`` of one case."""
    from vessel_seg.dataset_conversion.synthetic_render import segments_distance

    size, spacing = SIZES[generator], SPACING_MM[appearance]
    shape = (int(round(size * spacing[1] / spacing[0])), size, size)
    root = float(np.exp(rng.uniform(*np.log(GENERATORS[generator]))))
    # aorta-sized sets keep the trunk and its large branches (>= 40 % of the root radius), as an aorta and iliacs
    segments = tree_segments(_tree_table(generator, rng, svv_trees, pick), shape, spacing, root, rng,
                             min_relative_radius=0.4 if generator == "large" else 0.0)
    sd, radius = segments_distance(segments, shape, spacing, float(3 * max(spacing)))
    image = RENDERERS[appearance](rng, sd, radius, spacing)
    return image, (sd < 0).astype(np.uint8), spacing


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_set(work: Path, dataset_id: int, generator: str, appearance: str, counts: dict[str, int],
              svv_trees: list[Path]) -> Path:
    """Write one dev set (staging folder, then moved into place) and its manifest; reuse and verify a frozen one."""
    from vessel_seg.dataset import DatasetInfo
    from vessel_seg.imageio import ImageGeometry, write_image

    name = f"Dataset{dataset_id:03d}_Dev{generator.capitalize()}{appearance.capitalize()}"
    target = work / "raw" / name
    if (target / "manifest.json").is_file():
        manifest = json.loads((target / "manifest.json").read_text())
        changed = [f for f, h in manifest["sha256"].items() if not (target / f).is_file() or _sha(target / f) != h]
        if changed:
            raise SystemExit(f"{target}: frozen dev set changed ({changed[:3]}...); restore it, never regenerate")
        return target
    staging = work / "raw" / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    hashes = {}
    for split, (images, labels) in FOLDERS.items():
        for k in range(counts[split]):
            rng = case_seed(dataset_id, split, k)
            pick = svv_pick(split, k, len(svv_trees))
            image, label, spacing = render_case(generator, appearance, rng, svv_trees, pick)
            geometry = ImageGeometry(shape=image.shape, spacing=tuple(map(float, spacing)), origin=(0.0, 0.0, 0.0),
                                     direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
            case = f"{split}_{k:03d}"
            for folder, array, suffix in ((images, image, "_0000"), (labels, label, "")):
                path = staging / folder / f"{case}{suffix}.nii.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_image(array, geometry, path)
                hashes[f"{folder}/{path.name}"] = _sha(path)
    DatasetInfo(channel_names={"0": appearance.upper()}, labels={"background": 0, "vessel": 1},
                num_training=counts["train"], file_ending=".nii.gz", name=name,
                description=f"zero-shot dev set: {generator} trees, {appearance} appearance (benchmarks/devsets)").save(
        staging / "dataset.json")
    (staging / "manifest.json").write_text(json.dumps({"generator": generator, "appearance": appearance,
                                                       "counts": counts, "sha256": hashes}, indent=1))
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def svv_tree_files(folder: Path) -> list[Path]:
    """Cached svv trees, sorted by name (``svv_pick`` assigns them to splits)."""
    return sorted(Path(folder).glob("tree_*.json"))


def svv_pick(split: str, index: int, count: int) -> int:
    """Which cached svv tree case ``index`` of ``split`` uses: the trees are cut into three disjoint thirds
    (train, tune, report), so no report tree was ever seen while tuning or training."""
    third = max(1, count // 3)
    return SPLITS.index(split) * third + index % third


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/devsets"))
    parser.add_argument("--svv-trees", type=Path, default=None, help="default: WORK/svv_trees")
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=list(GENERATORS))
    parser.add_argument("--appearances", nargs="+", default=list(APPEARANCES), choices=list(APPEARANCES))
    parser.add_argument("--train-cases", type=int, default=8)
    parser.add_argument("--tune-cases", type=int, default=3)
    parser.add_argument("--report-cases", type=int, default=4)
    args = parser.parse_args(argv)
    trees = svv_tree_files(args.svv_trees or args.work / "svv_trees")
    counts = {"train": args.train_cases, "tune": args.tune_cases, "report": args.report_cases}
    for dataset_id, generator, appearance in set_names(args.generators, args.appearances):
        print(write_set(args.work, dataset_id, generator, appearance, counts, trees), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
