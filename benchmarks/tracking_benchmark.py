"""Tracking against full-volume prediction (and nnU-Net's predictions where given), on held-out synthetic cases and
on one large sparse volume.

Usage::

    .venv/bin/python benchmarks/tracking_benchmark.py --model-dir VS_RESULTS/Dataset520_Synthetic/vsTrainer__cpu__3d_fullres \\
        --raw VS_RAW/Dataset520_Synthetic [--nnunet-predictions DIR] [--big-shape 400 512 512] [--out benchmarks/results] \\
        [--seqseg-exe VENV/bin/seqseg --seqseg-weights W --seqseg-dataset D --seqseg-config C] [--reuse-rows JSON]

Arms, all without mirroring TTA (so that times compare), on every ``imagesTs`` case and on the large volume:

- ``full``: vessel_seg's full-volume prediction (``vs_predict`` with its default postprocessing);
- ``tracking``: vessel_seg's tracking mode from one seed per case: the root of the reference tree (the
  skeleton end with the largest radius, :func:`vessel_seg.evaluation.seqseg_seeds.seed_from_label`),
  the seed SeqSeg gets as well;
- ``nnunet``: nnU-Net v2's masks of the same cases when ``--nnunet-predictions`` is given (scored only:
  they come from another run, whose time is not comparable);
- ``seqseg``: the SeqSeg package (``seqseg run batch``) from the same seeds, with the nnU-Net weights given by
  ``--seqseg-weights/--seqseg-dataset`` (``benchmarks/seqseg_train.py`` trains them with SeqSeg's own sampler
  and prints these arguments with ``--seqseg-config``); its mask is resampled onto the input grid. Listed as
  not run without weights.

``--reuse-rows`` takes the ``full``/``tracking`` rows of an earlier result JSON of the same model (say so when
reporting), e.g. to add SeqSeg without repeating the 20-minute full-volume prediction of the large volume.

Scores: Dice, clDice, connected components, Betti-0 error, **centreline capture** (the share of the
reference skeleton inside the prediction) and seconds. The large volume (``--big-shape``, default
400x512x512) holds the first test case's tree at its centre inside background drawn from that case's own
non-vessel intensities, so it is as sparse as a real CTA crop around one tree. Synthetic data throughout.
Writes ``<out>/<date>-<host>-tracking.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules
from bench_common import write_results  # noqa: E402

from vessel_seg.evaluation.metrics import compute_metrics
from vessel_seg.evaluation.seqseg_seeds import seed_from_label
from vessel_seg.imageio import ImageGeometry, read_image, read_label
from vessel_seg.inference.prediction_inputs import find_input_cases
from vessel_seg.inference.prediction_run import PredictionOptions, predict_case
from vessel_seg.inference.predictor import TrainedModel, load_trained_model
from vessel_seg.inference.tracking import TrackingOptions, TrackingSeed, track_vessels
from vessel_seg.morphology import skeleton


def score(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
    """Dice, clDice, components, Betti-0 error and centreline capture of the foreground."""
    fg = compute_metrics((pred > 0).astype(np.uint8), (ref > 0).astype(np.uint8), spacing=spacing, labels=[1])[1]
    line = skeleton(ref > 0)
    capture = float((pred[line] > 0).mean()) if line.any() else float("nan")
    return {"dice": fg["dice"], "cldice": fg["cldice"], "components": fg["components_pred"],
            "betti0_error": fg["betti0_error"], "centreline_capture": capture}


def run_full(model: TrainedModel, image_path: Path, out: Path) -> tuple[np.ndarray, float]:
    """Full-volume prediction of one image (default postprocessing, no TTA); mask and seconds."""
    (case,) = find_input_cases(image_path, model.info.num_channels)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    predict_case([model], case, out, PredictionOptions(use_tta=False))
    seconds = time.perf_counter() - started
    return read_label(out / f"{case.case_id}{case.file_ending}")[0], seconds


def run_tracking(model: TrainedModel, images: np.ndarray, geometry: ImageGeometry, label: np.ndarray) -> tuple[np.ndarray, float, dict]:
    """Tracking from the reference tree's root; mask, seconds and the run's counts."""
    seed = seed_from_label(label, geometry)
    started = time.perf_counter()
    result = track_vessels(model, images, geometry, [TrackingSeed(seed.start, seed.radius)], TrackingOptions())
    seconds = time.perf_counter() - started
    counts = {"steps": len(result.steps), "branches": result.branches,
              "predicted_share": result.predicted_voxels / float(np.prod(label.shape))}
    return result.mask, seconds, counts


def big_sparse_volume(images: np.ndarray, label: np.ndarray, geometry: ImageGeometry, shape, seed: int = 0):
    """``images``/``label`` placed at the centre of a ``shape`` volume whose background is drawn from the case's own."""
    rng = np.random.default_rng(seed)
    background = images[0][label == 0]
    big = rng.choice(background, size=tuple(shape)).astype(np.float32)
    big_label = np.zeros(tuple(shape), np.uint8)
    start = [(s - n) // 2 for s, n in zip(shape, label.shape, strict=True)]
    box = tuple(slice(a, a + n) for a, n in zip(start, label.shape, strict=True))
    big[box], big_label[box] = images[0], label
    big_geometry = ImageGeometry(tuple(int(s) for s in shape), geometry.spacing, geometry.origin, geometry.direction)
    return big[None], big_label, big_geometry


def _row(name: str, arm: str, scores: dict, seconds: float | None, extra: dict | None = None) -> dict:
    return {"case": name, "arm": arm, **{k: round(v, 4) for k, v in scores.items()},
            "seconds": None if seconds is None else round(seconds, 2), **(extra or {})}


def vessel_seg_rows(model, name: str, image_path: Path, images: np.ndarray, geometry: ImageGeometry,
                    label: np.ndarray, full_out: Path, reuse: dict) -> list[dict]:
    """vessel_seg's full-volume and tracking rows of one image, taken from ``reuse`` where it has them."""
    rows = []
    if (name, "full") in reuse:
        rows.append(reuse[(name, "full")])
    else:
        full, seconds = run_full(model, image_path, full_out)
        rows.append(_row(name, "full", score(full, label, geometry.spacing), seconds))
    if (name, "tracking") in reuse:
        rows.append(reuse[(name, "tracking")])
    else:
        tracked, seconds, counts = run_tracking(model, images, geometry, label)
        rows.append(_row(name, "tracking", score(tracked, label, geometry.spacing), seconds, counts))
    return rows


def evaluate_case(model, image_path: Path, label_path: Path, work: Path, external: dict, reuse: dict) -> list[dict]:
    """Full-volume and tracking rows of one case (see :func:`vessel_seg_rows`), plus a row per external
    method's mask (``external``: arm -> (folder, seconds per case or None))."""
    images, geometry = read_image([image_path])
    label, _ = read_label(label_path)
    name = label_path.name.split(".")[0]
    rows = vessel_seg_rows(model, name, image_path, images, geometry, label, work / "full", reuse)
    for arm, (folder, seconds) in external.items():
        if (folder / label_path.name).is_file():
            rows.append(_row(name, arm, score(read_label(folder / label_path.name)[0], label, geometry.spacing), seconds))
    return rows


def load_reused_rows(path: Path | None, model_name: str) -> dict:
    """(case, arm) -> row of the ``full`` and ``tracking`` arms of an earlier result of the same model."""
    if path is None:
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("model") != model_name:
        sys.exit(f"{path}: rows of model {earlier.get('model')!r}, not {model_name!r}; rerun without --reuse-rows")
    return {(r["case"], r["arm"]): r for r in earlier["rows"] if r["arm"] in ("full", "tracking")}


def run_seqseg_arm(images_dir: Path, labels_dir: Path, work: Path, weights: Path, dataset: str,
                   settings) -> tuple[Path, float]:
    """SeqSeg (``seqseg`` on PATH) on every image of ``images_dir`` with ``settings``
    (:class:`~vessel_seg.evaluation.seqseg_runner.SeqSegSettings`); masks and seconds per case."""
    from vessel_seg.evaluation.seqseg_runner import run_seqseg

    result = run_seqseg(images_dir, labels_dir, work / "seqseg", weights, dataset, settings)
    count = len(list(Path(result.pred_dir).glob("*.nii.gz")))
    return Path(result.pred_dir), result.runtime_s / max(count, 1)


def evaluate_big(model, image_path: Path, label_path: Path, work: Path, shape, seqseg: tuple | None,
                 reuse: dict) -> list[dict]:
    """The rows of the large sparse volume (``reuse`` as in :func:`evaluate_case`); ``seqseg`` = (weights,
    dataset, settings) adds SeqSeg's."""
    from vessel_seg.imageio import write_image

    images, geometry = read_image([image_path])
    label, _ = read_label(label_path)
    big, big_label, big_geometry = big_sparse_volume(images, label, geometry, shape)
    folder, ref = work / "big", work / "big_ref"
    folder.mkdir(parents=True, exist_ok=True)
    ref.mkdir(parents=True, exist_ok=True)
    write_image(big[0], big_geometry, folder / "big_0000.nii.gz")
    write_image(big_label, big_geometry, ref / "big.nii.gz")
    name = f"big {'x'.join(map(str, shape))}"
    rows = vessel_seg_rows(model, name, folder / "big_0000.nii.gz", big, big_geometry, big_label, work / "big_full", reuse)
    if seqseg is not None:
        masks, seconds = run_seqseg_arm(folder, ref, work / "big_seqseg", *seqseg)
        rows.append(_row(name, "seqseg", score(read_label(masks / "big.nii.gz")[0], big_label, big_geometry.spacing), seconds))
    return rows


def render(result: dict) -> str:
    keys = ("dice", "cldice", "components", "betti0_error", "centreline_capture", "seconds")
    lines = [f"# Tracking vs full-volume prediction ({result['date']}, {result['host']})", "",
             f"Model `{result['model']}`; synthetic data; no TTA. SeqSeg: {result['seqseg']}", "",
             *([f"Rows reused from an earlier run of the same model on this machine: {result['reused_rows']}.", ""]
               if result.get("reused_rows") else []),
             "| case | arm | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for row in result["rows"]:
        cells = ["-" if row.get(k) is None else f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append(f"| {row['case']} | {row['arm']} | " + " | ".join(cells) + " |")
    for arm in ("full", "tracking", "seqseg", "nnunet"):
        rows = [r for r in result["rows"] if r["arm"] == arm and not r["case"].startswith("big")]
        if rows:
            means = {k: np.mean([r[k] for r in rows]) for k in keys[:-1]}
            lines.append(f"| mean of {len(rows)} test cases | {arm} | "
                         + " | ".join(f"{means[k]:.3f}" for k in keys[:-1]) + " | - |")
    big = {r["arm"]: r for r in result["rows"] if r["case"].startswith("big")}
    if "seqseg" in big:
        lines += ["", f"SeqSeg on the large volume: {big['seqseg']['seconds'] / big['full']['seconds']:.3f} of "
                  f"full-volume time, centreline capture {big['seqseg']['centreline_capture']:.3f}."]
    if "full" in big and "tracking" in big:
        lines += ["", f"Large sparse volume: tracking took {big['tracking']['seconds'] / big['full']['seconds']:.3f} of "
                  f"full-volume prediction's time and kept {big['tracking']['centreline_capture'] / max(big['full']['centreline_capture'], 1e-9):.1%} "
                  f"of its centreline capture; it predicted {big['tracking']['predicted_share']:.1%} of the voxels."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True, help="raw dataset folder with imagesTs and labelsTs")
    parser.add_argument("--nnunet-predictions", type=Path, default=None)
    parser.add_argument("--seqseg-weights", type=Path, default=None,
                        help="folder holding DATASET/nnUNetTrainer__nnUNetPlans__3d_fullres (seqseg_train.py prints it)")
    parser.add_argument("--seqseg-dataset", default=None, help="SeqSeg's nnU-Net dataset name, e.g. Dataset900_SYNTHCT")
    parser.add_argument("--seqseg-exe", type=Path, default=None, help="the seqseg executable (its folder goes on PATH)")
    parser.add_argument("--seqseg-config", default="global",
                        help="SeqSeg tracing config, name or path without .yaml (seqseg_train.py prints the one it wrote)")
    parser.add_argument("--seqseg-seed-inset", type=float, default=0.0,
                        help="SeqSeg's seed this many root radii into the tree (it stops when its first crop meets the border)")
    parser.add_argument("--seqseg-resample-spacing", type=float, nargs="+", default=None, metavar="MM",
                        help="SeqSeg resamples each image to this spacing before tracing (its -resample_spacing)")
    parser.add_argument("--reuse-rows", type=Path, default=None,
                        help="an earlier result JSON of the same model: its full/tracking rows are taken, not rerun")
    parser.add_argument("--big-shape", type=int, nargs=3, default=(400, 512, 512))
    parser.add_argument("--max-cases", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "tracking")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    model = load_trained_model(args.model_dir, checkpoint="final", device="cpu")
    labels = sorted((args.raw / "labelsTs").glob("*.nii.gz"))[: args.max_cases]
    external, seqseg, status = {}, None, "not run (no --seqseg-weights: its published weights cannot be downloaded here)"
    if args.nnunet_predictions is not None:
        external["nnunet"] = (args.nnunet_predictions, None)
    if args.seqseg_weights is not None:
        if args.seqseg_exe is not None:
            os.environ["PATH"] = f"{args.seqseg_exe.resolve().parent}{os.pathsep}{os.environ['PATH']}"
        from vessel_seg.evaluation.seqseg_runner import SeqSegSettings

        settings = SeqSegSettings(config_name=args.seqseg_config, seed_inset_radii=args.seqseg_seed_inset,
                                  resample_spacing=args.seqseg_resample_spacing)
        seqseg = (args.seqseg_weights.resolve(), args.seqseg_dataset, settings)
        external["seqseg"] = run_seqseg_arm(args.raw / "imagesTs", args.raw / "labelsTs", args.work, *seqseg)
        status = (f"`seqseg` run batch with `{args.seqseg_dataset}` from {args.seqseg_weights}, config "
                  f"`{Path(args.seqseg_config).name}`, seeded {args.seqseg_seed_inset:g} root radii inside each label's root, images resampled to "
                  f"{args.seqseg_resample_spacing or 'their own'} mm spacing")
    reuse = load_reused_rows(args.reuse_rows, args.model_dir.name)
    rows = []
    for label_path in labels:
        image_path = args.raw / "imagesTs" / label_path.name.replace(".nii.gz", "_0000.nii.gz")
        rows += evaluate_case(model, image_path, label_path, args.work, external, reuse)
        print(json.dumps(rows[-2:]), flush=True)
    first = labels[0]
    rows += evaluate_big(model, args.raw / "imagesTs" / first.name.replace(".nii.gz", "_0000.nii.gz"), first, args.work,
                         args.big_shape, seqseg, reuse)
    result = {"date": datetime.date.today().isoformat(), "host": socket.gethostname().split(".")[0],
              "model": args.model_dir.name, "rows": rows, "seqseg": status,
              "reused_rows": None if args.reuse_rows is None else f"{args.reuse_rows.name}: {len(reuse)} full/tracking rows"}
    write_results(args.out, result, "tracking", render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
