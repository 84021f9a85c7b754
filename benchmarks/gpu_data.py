"""Data steps of ``gpu_compare.py``, each run as its own (time-limited) process.

Usage::

    python gpu_data.py dataset --work W -d 501 --cases 12 --size 96 [--spacing 0.8 0.5 0.5] [--seed 0]
    python gpu_data.py big --work W --shape 600 512 512 [--tile 96] [--spacing ...] [--seed 0]
    python gpu_data.py dice --label L.nii.gz --json out.json NAME=PRED.nii.gz ...

- ``dataset``: vessel_seg's synthetic generator writes the training set into ``W/vs_raw``; its
  ``dataset.json``, ``imagesTr`` and ``labelsTr`` are copied unchanged into ``W/nnUNet_raw``
  (``compare_nnunet.prepare_dataset``).
- ``big``: one large volume ``W/big/images/big_0000.nii.gz`` (int16 intensities) with its label
  ``W/big/labels/big.nii.gz``: the grid is filled with tiles of four synthetic cases that are not in
  the training set (cubes of ``--tile`` voxels, each flipped at random along each axis), so the
  whole volume looks like training data, with about 0.5 % vessel voxels. Rendering the generator's
  trees at 512x512x600 directly would take minutes; tiling takes seconds.
- ``dice``: Dice of each prediction against the label (foreground = any label > 0), merged into
  ``--json``; a prediction that is missing or has another shape is reported, not scored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules; benchmarks/ is not a package

BIG_CASE = "big"
BIG_TILES = 4
BIG_SEED_OFFSET = 1000  # case indices of the tiles: never those of the training cases


def make_dataset(args: argparse.Namespace) -> int:
    """Write the synthetic training set for both frameworks (see the module docstring)."""
    from bench_common import BenchmarkContext
    from compare_nnunet import prepare_dataset

    ctx = BenchmarkContext(work=args.work, dataset_id=args.dataset_id, num_processes=1, ours_command=[],
                           nnunet_command=None)
    prepare_dataset(ctx, args.cases, 0, args.size, args.seed, tuple(args.spacing))
    print(f"wrote {args.cases} cases of {args.size}^3 for {ctx.dataset} under {args.work}", flush=True)
    return 0


def tile_volume(shape: tuple[int, int, int], tiles: list[tuple[np.ndarray, np.ndarray]], seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``shape`` with randomly chosen and flipped ``(image, label)`` cubes; returns int16 image, uint8 label.

    All cubes share one edge length; the last tile along an axis is cropped to fit.
    """
    rng = np.random.default_rng(seed)
    edge = tiles[0][0].shape[0]
    image = np.empty(shape, np.int16)
    label = np.empty(shape, np.uint8)
    for z in range(0, shape[0], edge):
        for y in range(0, shape[1], edge):
            for x in range(0, shape[2], edge):
                img, lab = tiles[int(rng.integers(len(tiles)))]
                flips = tuple(a for a in range(3) if rng.random() < 0.5)
                if flips:
                    img, lab = np.flip(img, flips), np.flip(lab, flips)
                dz, dy, dx = min(edge, shape[0] - z), min(edge, shape[1] - y), min(edge, shape[2] - x)
                image[z:z + dz, y:y + dy, x:x + dx] = img[:dz, :dy, :dx]
                label[z:z + dz, y:y + dy, x:x + dx] = lab[:dz, :dy, :dx]
    return image, label


def make_big(args: argparse.Namespace) -> int:
    """Write the large tiled volume and its label (see the module docstring)."""
    from vessel_seg.dataset_conversion.synthetic import case_rng, generate_case
    from vessel_seg.imageio import ImageGeometry, write_image

    started = time.perf_counter()
    cases = [generate_case(case_rng(args.seed, BIG_SEED_OFFSET + k), args.tile, tuple(args.spacing))
             for k in range(BIG_TILES)]
    tiles = [(np.clip(np.round(c.image), -32768, 32767).astype(np.int16), c.label) for c in cases]
    image, label = tile_volume(tuple(args.shape), tiles, args.seed)
    geometry = ImageGeometry(shape=tuple(image.shape), spacing=tuple(float(s) for s in args.spacing))
    for sub, array, name in (("images", image, f"{BIG_CASE}_0000.nii.gz"), ("labels", label, f"{BIG_CASE}.nii.gz")):
        (args.work / "big" / sub).mkdir(parents=True, exist_ok=True)
        write_image(array, geometry, args.work / "big" / sub / name)
    print(f"big volume {tuple(image.shape)} (z, y, x), {100 * label.mean():.2f} % vessel, "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return 0


def dice_score(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of the foregrounds (> 0) of two arrays of one shape; 1.0 when both are empty."""
    p, r = pred > 0, ref > 0
    denominator = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    return 1.0 if denominator == 0 else 2.0 * int(np.count_nonzero(p & r)) / denominator


def score(args: argparse.Namespace) -> int:
    """Dice of every ``NAME=PATH`` prediction against ``--label``, merged into ``--json``."""
    from vessel_seg.imageio import read_array

    ref, _ = read_array(args.label)
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for item in args.predictions:
        name, _, path = item.partition("=")
        if not Path(path).is_file():
            results[name] = {"dice": None, "note": "no prediction"}
            continue
        pred, _ = read_array(path)
        if pred.shape != ref.shape:
            results[name] = {"dice": None, "note": f"shape {pred.shape} != label {ref.shape}"}
            continue
        results[name] = {"dice": round(dice_score(pred, ref), 4), "pred_voxels": int(np.count_nonzero(pred))}
        print(f"{name}: Dice {results[name]['dice']:.4f}", flush=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="data steps of benchmarks/gpu_compare.py")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("dataset", "big"):
        p = sub.add_parser(name)
        p.add_argument("--work", type=Path, required=True)
        p.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.5, 0.5), help="voxel size z y x in mm")
        p.add_argument("--seed", type=int, default=0)
    ds = sub.choices["dataset"]
    ds.add_argument("-d", "--dataset-id", type=int, default=501)
    ds.add_argument("--cases", type=int, default=12)
    ds.add_argument("--size", type=int, default=96)
    big = sub.choices["big"]
    big.add_argument("--shape", type=int, nargs=3, default=(600, 512, 512), help="z y x voxels")
    big.add_argument("--tile", type=int, default=96, help="edge of the synthetic cubes tiled into the volume")
    dc = sub.add_parser("dice")
    dc.add_argument("--label", type=Path, required=True)
    dc.add_argument("--json", type=Path, required=True)
    dc.add_argument("predictions", nargs="+", help="NAME=PATH")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"dataset": make_dataset, "big": make_big, "dice": score}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
