"""Zero-shot quality of built-in models on the frozen dev sets (other generators, other appearances).

Usage::

    .venv/bin/python benchmarks/zero_shot_devsets.py --split report \\
        --arm "016438f=benchmarks/work/builtin_016438f" --arm "new=vessel_seg/builtin_model/vsTrainer__vs_builtin__3d_fullres" \\
        [--arm "new, scale auto=...:auto"] [--labels-iterations 300] [--work benchmarks/work/devsets] [--out benchmarks/results]

The sets are built and frozen by ``benchmarks/devsets/make_devsets.py`` (its docstring lists them).
``--split tune`` scores the tuning cases (the only ones any choice may be made on); ``--split report``
the report cases, which the table in docs/ quotes. Each ``--arm NAME=FOLDER[:SCALE]`` is a built-in model
folder predicted with ``vs_predict``'s defaults but no TTA (``SCALE``: ``1`` or ``auto``, the test-time
vessel-scale choice; default 1). ``--labels-iterations N`` adds, per set, a model trained with labels on
that set's train split (``-pl cpu``, fold ``all``, N iterations) as the reference a user with labels has.

Scores per case against the reference: Dice, clDice, precision, recall, 26-connected components of the
written mask; the table gives means over the split's cases and seconds of prediction per case. Rows are
measured once and kept under ``WORK/rows`` (a rerun reports them again). nnU-Net v2 has no zero-shot mode;
the trained-with-labels rows are its counterpart. Synthetic data throughout.
"""

from __future__ import annotations

import argparse
import datetime
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "devsets"))
from bench_common import machine_info, write_results  # noqa: E402
from make_devsets import FOLDERS, set_names  # noqa: E402
from zero_shot_benchmark import row_once, set_roots, train_arm  # noqa: E402

METRICS = ("dice", "cldice", "precision", "recall", "components")


def score_cases(pred_dir: Path, label_dir: Path) -> dict[str, float]:
    """Mean Dice, clDice, precision, recall and components of ``pred_dir``'s masks against ``label_dir``."""
    from vessel_seg.evaluation.metrics import compute_metrics
    from vessel_seg.imageio import read_label

    rows = []
    for label_path in sorted(label_dir.glob("*.nii.gz")):
        ref, geometry = read_label(label_path)
        pred, _ = read_label(pred_dir / label_path.name)
        fg = compute_metrics((pred > 0).astype(np.uint8), (ref > 0).astype(np.uint8), spacing=geometry.spacing,
                             labels=[1])[1]
        rows.append([fg["dice"], fg["cldice"], fg["precision"], fg["recall"], fg["components_pred"]])
    means = np.nanmean(np.asarray(rows, dtype=float), axis=0)
    return {**dict(zip(METRICS, map(float, means), strict=True)), "cases": len(rows)}


def predict_split(model_dir: Path, folds: list[str], images: Path, labels: Path, out: Path, scale: str) -> dict:
    """Predict ``images`` with one model (no TTA, default postprocessing) and score against ``labels``."""
    from vessel_seg.inference.prediction_run import PredictionOptions, predict_cases
    from vessel_seg.inference.predictor import load_trained_model

    model = load_trained_model(model_dir, folds)
    started = time.perf_counter()
    predict_cases([model], images, out, PredictionOptions(use_tta=False, overwrite=True, vessel_scale=scale))
    scores = score_cases(out, labels)
    scores["predict_s_per_case"] = (time.perf_counter() - started) / max(scores["cases"], 1)
    return scores


def parse_arm(text: str) -> tuple[str, Path, str]:
    name, _, rest = text.partition("=")
    folder, _, scale = rest.partition(":")
    if not name or not folder:
        raise SystemExit(f"--arm {text!r}: give NAME=FOLDER[:SCALE]")
    return name, Path(folder).resolve(), scale or "1"


def set_rows(dataset_id: int, generator: str, appearance: str, args: argparse.Namespace) -> list[dict]:
    from vessel_seg.paths import raw_root, results_root

    raw = next(raw_root().glob(f"Dataset{dataset_id:03d}_*"))
    images, labels = (raw / f for f in FOLDERS[args.split])
    cache, rows = results_root() / "rows" / args.split / raw.name, []
    base = {"set": f"{generator} / {appearance}", "dataset": raw.name, "split": args.split}
    for name, folder, scale in args.arms:
        key = f"{name}"
        out = results_root() / "predictions" / args.split / raw.name / key.replace(" ", "_").replace(",", "")
        rows.append(row_once(cache, key, lambda f=folder, s=scale, o=out, n=name: {
            **base, "arm": n, **predict_split(f, ["all"], images, labels, o, s)}))
    if args.labels_iterations:
        def labelled() -> dict:
            from vessel_seg.planners.pipeline import plan_and_preprocess

            plan_and_preprocess(raw.name, ["3d_fullres"], num_workers=1, plans_name="cpu")
            model_dir, seconds = train_arm(raw.name, "cpu", args.labels_iterations, "vsTrainer", None)
            out = results_root() / "predictions" / args.split / raw.name / "labels"
            return {**base, "arm": f"trained with labels ({args.labels_iterations} it)", "train_s": seconds,
                    **predict_split(model_dir, ["all"], images, labels, out, "1")}

        rows.append(row_once(cache, f"labels {args.labels_iterations}", labelled))
    return rows


def render(result: dict) -> str:
    lines = [f"# Zero-shot on the frozen dev sets, {result['split']} split ({result['date']}, "
             f"{result['machine']['cpu']}, {result['machine']['cpus']} CPUs)", "",
             "Trees from svVascularize (CCO) and space colonisation, rendered CT/MR/microscopy-like with label-0 "
             "look-alikes; `large`: aorta-sized (root 10-30 voxels). No TTA. Synthetic data.", "",
             "| set | arm | Dice | clDice | precision | recall | components | s/case |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['set']} | {row['arm']} | {row['dice']:.3f} | {row['cldice']:.3f} | "
                     f"{row['precision']:.3f} | {row['recall']:.3f} | {row['components']:.1f} | "
                     f"{row['predict_s_per_case']:.1f} |")
    arms = dict.fromkeys(r["arm"] for r in result["rows"])
    lines += ["", "| arm (mean over sets) | Dice | clDice | precision | recall | components | worst-set Dice |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for arm in arms:
        rows = [r for r in result["rows"] if r["arm"] == arm]
        mean = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
        lines.append(f"| {arm} | {mean['dice']:.3f} | {mean['cldice']:.3f} | {mean['precision']:.3f} | "
                     f"{mean['recall']:.3f} | {mean['components']:.1f} | {min(r['dice'] for r in rows):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/devsets"))
    parser.add_argument("--split", choices=["tune", "report"], default="tune")
    parser.add_argument("--arm", dest="arms", action="append", type=parse_arm, required=True)
    parser.add_argument("--sets", nargs="*", type=int, default=None, help="dataset ids (default: all)")
    parser.add_argument("--labels-iterations", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    set_roots(args.work.resolve())
    from vessel_seg.cli import configure_logging

    configure_logging()
    rows = []
    for dataset_id, generator, appearance in set_names():
        if args.sets is None or dataset_id in args.sets:
            rows += set_rows(dataset_id, generator, appearance, args)
    result = {"date": datetime.date.today().isoformat(), "host": socket.gethostname().split(".")[0],
              "machine": machine_info(), "split": args.split, "rows": rows,
              "arms": [[n, str(f), s] for n, f, s in args.arms]}
    write_results(args.out, result, f"zeroshot-devsets-{args.split}{args.tag}", render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
