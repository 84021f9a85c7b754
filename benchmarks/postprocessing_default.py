"""The default postprocessing of vs_predict (no recipe): debris removal, measured on held-out predictions.

Usage::

    .venv/bin/python benchmarks/postprocessing_default.py --labels LABELS_DIR --predictions PRED_DIR [PRED_DIR ...] \\
        [--shares 0.01 0.02 0.05] [--distances 2 3 5]

For each prediction folder (masks named like the labels) and each rule (share of the main tree,
distance from it in mm), prints mean Dice, recall, clDice, components, Betti-0 error and the recall of
thin vessels (true voxels within 1 voxel of the true centreline where the true radius is below
the median radius) before and after. A rule that lowers recall or thin-vessel recall drops true vessel.
Reads only what it is given; no training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from vessel_seg.evaluation.metrics import compute_metrics
from vessel_seg.imageio import read_label
from vessel_seg.inference.postprocessing import remove_detached_debris


def thin_vessel_mask(label: np.ndarray, spacing) -> np.ndarray:
    """Centreline voxels of the thinner half of the true tree (radius below its median), 1-voxel thick."""
    skeleton = skeletonize(label > 0)
    radius = ndimage.distance_transform_edt(label > 0, sampling=spacing)
    if not skeleton.any():
        return skeleton
    thin = skeleton & (radius < np.median(radius[skeleton]))
    return ndimage.binary_dilation(thin) & (label > 0)


def score(pred: np.ndarray, label: np.ndarray, spacing, thin: np.ndarray) -> dict[str, float]:
    fg = compute_metrics((pred > 0).astype(np.uint8), (label > 0).astype(np.uint8), spacing=spacing, labels=[1])[1]
    return {"dice": fg["dice"], "recall": fg["recall"], "cldice": fg["cldice"], "components": fg["components_pred"],
            "betti0_error": fg["betti0_error"], "thin_recall": float((pred[thin] > 0).mean()) if thin.any() else 1.0}


def evaluate(labels_dir: Path, predictions: Path, rules: list[tuple[float, float]]) -> list[dict]:
    rows: dict[str, list[dict]] = {"as predicted": []}
    for rule in rules:
        rows[f"share {rule[0]:g}, distance {rule[1]:g} mm"] = []
    for pred_path in sorted(predictions.glob("*.nii.gz")):
        label, geometry = read_label(labels_dir / pred_path.name)
        pred, _ = read_label(pred_path)
        thin = thin_vessel_mask(label, geometry.spacing)
        rows["as predicted"].append(score(pred, label, geometry.spacing, thin))
        for share, distance in rules:
            cleaned, _ = remove_detached_debris(pred, geometry.spacing, share, distance)
            rows[f"share {share:g}, distance {distance:g} mm"].append(score(cleaned, label, geometry.spacing, thin))
    return [{"rule": name, **{k: float(np.mean([r[k] for r in values])) for k in values[0]}}
            for name, values in rows.items() if values]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, nargs="+", required=True)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.02])
    parser.add_argument("--distances", type=float, nargs="+", default=[3.0])
    args = parser.parse_args(argv)
    rules = [(s, d) for s in args.shares for d in args.distances]
    for folder in args.predictions:
        print(f"\n{folder}\n\n| rule | Dice | recall | clDice | components | Betti-0 error | thin-vessel recall |\n|---|---|---|---|---|---|---|")
        for row in evaluate(args.labels, folder, rules):
            print(f"| {row['rule']} | {row['dice']:.3f} | {row['recall']:.4f} | {row['cldice']:.3f} | {row['components']:.1f} | "
                  f"{row['betti0_error']:.1f} | {row['thin_recall']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
