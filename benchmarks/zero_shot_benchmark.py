"""Zero-shot and few-shot quality of the built-in model on synthetic styles it never saw in pretraining.

Usage::

    .venv/bin/python benchmarks/zero_shot_benchmark.py [--builtin DIR] [--work benchmarks/work/zeroshot] \\
        [--seed 7070] [--styles ct mr microscopy] [--train-cases 8] [--test-cases 4] [--size 64] \\
        [--iterations 300] [--fewshot-iterations 150] [--shots 1 3] [--fewshot-styles ct] [--out benchmarks/results]

For each style (``ct``: CT-like trees with bone; ``mr``: TOF-MR-like trees on a dark background;
``microscopy``: a dense capillary bed under two-photon fluorescence; none of them is produced by the
pretraining randomiser) a fresh dataset is generated from ``--seed`` (used for nothing else), and the
held-out ``imagesTs`` cases are segmented by:

- ``zero-shot``: the built-in model as shipped (``vs_predict --model builtin``);
- ``own model``: a model trained on that style's ``--train-cases`` cases from scratch with the usual
  pipeline (``-pl cpu`` plans) for ``--iterations`` iterations: what a user without the built-in model does;
- ``fine-tuned k``: the built-in model fine-tuned on the first ``k`` labelled cases (``--plans-from builtin``,
  ``--pretrained builtin``) for ``--fewshot-iterations`` iterations;
- ``scratch k``: the same network, plans, cases and iterations from a random initialisation.

Every arm predicts without mirroring TTA and with the default postprocessing. Scores per case: Dice,
clDice, components; the table gives means and wall-clock seconds of training. nnU-Net v2 has no
zero-shot mode (it needs a trained model per dataset), so it has no row here; its trained-per-dataset
counterpart is the ``own model`` arm, and vessel_seg's training against nnU-Net's is compared in
``learning_curves.py``. Synthetic data throughout. Writes ``<out>/<date>-<host>-zeroshot.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules
from bench_common import machine_info, write_results  # noqa: E402

STYLE_IDS = {"ct": 701, "mr": 702, "microscopy": 703}


def set_roots(work: Path) -> None:
    """Private VS_RAW / VS_PREPROCESSED / VS_RESULTS under ``work`` (before anything reads them)."""
    for name in ("raw", "preprocessed", "results"):
        os.environ[f"VS_{name.upper()}"] = str(work / name)
        (work / name).mkdir(parents=True, exist_ok=True)


def score_folder(pred_dir: Path, label_dir: Path) -> dict[str, float]:
    """Mean Dice, clDice and components of the masks in ``pred_dir`` against ``label_dir``."""
    from vessel_seg.evaluation.metrics import compute_metrics
    from vessel_seg.imageio import read_label

    rows = []
    for label_path in sorted(label_dir.glob("*.nii.gz")):
        ref, geometry = read_label(label_path)
        pred, _ = read_label(pred_dir / label_path.name)
        fg = compute_metrics((pred > 0).astype(np.uint8), (ref > 0).astype(np.uint8), spacing=geometry.spacing, labels=[1])[1]
        rows.append((fg["dice"], fg["cldice"], fg["components_pred"]))
    dice, cldice, components = (float(np.mean(v)) for v in zip(*rows, strict=True))
    return {"dice": dice, "cldice": cldice, "components": components, "cases": len(rows)}


def predict_and_score(model_dir: Path, raw_dir: Path, out: Path, folds=("all",)) -> dict[str, float]:
    """Predict ``raw_dir/imagesTs`` with one model folder (no TTA, default postprocessing) and score it."""
    from vessel_seg.inference.prediction_run import PredictionOptions, predict_cases
    from vessel_seg.inference.predictor import load_trained_model

    model = load_trained_model(model_dir, list(folds))
    started = time.perf_counter()
    predict_cases([model], raw_dir / "imagesTs", out, PredictionOptions(use_tta=False, overwrite=True))
    scores = score_folder(out, raw_dir / "labelsTs")
    scores["predict_s"] = time.perf_counter() - started
    return scores


def subset_dataset(raw_dir: Path, dataset_id: int, shots: int) -> Path:
    """A copy of ``raw_dir`` with only its first ``shots`` training cases (same test cases), as dataset ``dataset_id``."""
    from vessel_seg.dataset import DatasetInfo
    from vessel_seg.paths import dataset_name

    target = raw_dir.parent / dataset_name(dataset_id, f"{raw_dir.name.split('_', 1)[1]}{shots}shot")
    if (target / "dataset.json").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    for sub in ("imagesTs", "labelsTs"):
        shutil.copytree(raw_dir / sub, target / sub)
    (target / "imagesTr").mkdir()
    (target / "labelsTr").mkdir()
    for label in sorted((raw_dir / "labelsTr").glob("*.nii.gz"))[:shots]:
        case = label.name.removesuffix(".nii.gz")
        shutil.copyfile(label, target / "labelsTr" / label.name)
        shutil.copyfile(raw_dir / "imagesTr" / f"{case}_0000.nii.gz", target / "imagesTr" / f"{case}_0000.nii.gz")
    info = DatasetInfo.load(raw_dir / "dataset.json")
    info.num_training, info.name = shots, target.name
    info.save(target / "dataset.json")
    return target


def train_arm(dataset_id: int, plans: str, iterations: int, trainer: str, pretrained: Path | None) -> tuple[Path, float]:
    """Train fold ``all`` for ``iterations`` (resuming a killed run); returns the model folder and training seconds."""
    from vessel_seg.trainers.settings import TrainingSettings
    from vessel_seg.trainers.trainer import TrainingJob, train

    epochs = max(1, iterations // 50)
    settings = TrainingSettings(epochs=epochs, iterations_per_epoch=iterations // epochs, validation_iterations=2,
                                final_validation=False, checkpoint_every=1, num_workers=2)
    started = time.perf_counter()
    result = train(TrainingJob(dataset_id, "3d_fullres", "all", plans, settings, resume=True,
                               pretrained=pretrained, trainer_name=trainer))
    return result.fold_dir.parent, time.perf_counter() - started


def generator_rate(count: int = 20, seed: int = 99) -> dict[str, float]:
    """Domain-randomised volumes per second on one core (the pretraining data generator), and their mean size."""
    from vessel_seg.dataset_conversion.domain_randomization import randomized_case
    from vessel_seg.dataset_conversion.synthetic import case_rng

    started = time.perf_counter()
    voxels = [randomized_case(case_rng(seed, k)).image.size for k in range(count)]
    seconds = time.perf_counter() - started
    return {"volumes_per_s": count / seconds, "mean_voxels": float(np.mean(voxels))}


def row_once(cache: Path, key: str, make) -> dict:
    """The row ``key``: measured by ``make()`` once and kept in ``cache/key.json``, so a rerun (or a killed run)
    reports the numbers measured then instead of timing a resumed, already finished training."""
    path = cache / f"{key.replace(' ', '_')}.json"
    if path.is_file():
        return json.loads(path.read_text())
    row = make()
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row))
    print(row, flush=True)
    return row


def run_style(style: str, args: argparse.Namespace, builtin: Path) -> list[dict]:
    """Every arm on one style; rows of the table."""
    from vessel_seg.dataset_conversion.synthetic import generate_dataset
    from vessel_seg.paths import dataset_name, raw_root, results_root
    from vessel_seg.planners.pipeline import plan_and_preprocess

    dataset_id = STYLE_IDS[style]
    raw_dir = raw_root() / dataset_name(dataset_id, f"ZeroShot{style.capitalize()}")
    if not (raw_dir / "dataset.json").is_file():
        generate_dataset(dataset_id, args.train_cases, args.test_cases, size=args.size, seed=args.seed, modality=style,
                         name=f"ZeroShot{style.capitalize()}")
    preds, cache = results_root() / "predictions" / style, results_root() / "rows" / style
    rows = [row_once(cache, "zero-shot", lambda: {"style": style, "arm": "zero-shot", "cases_labelled": 0, "train_s": 0.0,
                                                   **predict_and_score(builtin, raw_dir, preds / "zero_shot")})]

    def own_model() -> dict:
        plan_and_preprocess(dataset_id, ["3d_fullres"], num_workers=2, plans_name="cpu")
        model_dir, seconds = train_arm(dataset_id, "cpu", args.iterations, "vsTrainer", None)
        return {"style": style, "arm": "own model", "cases_labelled": args.train_cases, "train_s": seconds,
                "iterations": args.iterations, **predict_and_score(model_dir, raw_dir, preds / "own")}

    rows.append(row_once(cache, "own model", own_model))
    if style in (args.fewshot_styles or args.styles):
        rows += few_shot_rows(style, raw_dir, args, builtin, preds, cache)
    return rows


def few_shot_arm(style: str, subset: Path, shots: int, arm: str, trainer: str, pretrained: Path | None, raw_dir: Path,
                 args: argparse.Namespace, builtin_plans, preds: Path) -> dict:
    """Preprocess ``subset`` with the built-in plans, train one arm and score it on the style's test cases."""
    from vessel_seg.planners.pipeline import plan_and_preprocess

    plan_and_preprocess(subset.name, ["3d_fullres"], num_workers=2, plans_name="vs_builtin", plans_from=builtin_plans)
    model_dir, seconds = train_arm(subset.name, "vs_builtin", args.fewshot_iterations, trainer, pretrained)
    return {"style": style, "arm": f"{arm} {shots}", "cases_labelled": shots, "train_s": seconds,
            "iterations": args.fewshot_iterations,
            **predict_and_score(model_dir, raw_dir, preds / f"{arm.replace('-', '_')}_{shots}")}


def few_shot_rows(style: str, raw_dir: Path, args: argparse.Namespace, builtin: Path, preds: Path, cache: Path) -> list[dict]:
    """Fine-tuned and from-scratch rows for each ``--shots`` count (same plans, cases and iterations)."""
    from vessel_seg.planners.plans import Plans

    builtin_plans, rows = Plans.load(builtin / "plans.json"), []
    for k, shots in enumerate(args.shots):
        subset = subset_dataset(raw_dir, STYLE_IDS[style] * 10 % 1000 + k + 1, shots)  # 701 -> ids 11, 12, ...
        for arm, trainer, pretrained in (("fine-tuned", "vsTrainer", builtin / "fold_all" / "checkpoint_final.pt"),
                                         ("scratch", "vsTrainerScratch", None)):
            measure = functools.partial(few_shot_arm, style, subset, shots, arm, trainer, pretrained, raw_dir, args,
                                        builtin_plans, preds)
            rows.append(row_once(cache, f"{arm} {shots}", measure))
    return rows


def render(result: dict) -> str:
    rate = result["generator"]
    lines = [
        f"# Built-in model: zero-shot and few-shot ({result['date']}, {result['machine']['cpu']}, "
        f"{result['machine']['cpus']} CPUs)", "",
        f"Styles never used in pretraining; seed {result['seed']}, {result['test_cases']} held-out cases per style, "
        f"{result['size']}^3 voxels (microscopy: {result['size'] // 2}x{result['size']}^2 at 2x1x1 um). No TTA. "
        "Synthetic data.", "",
        f"Pretraining data generator: {rate['volumes_per_s']:.2f} volumes/s on one core "
        f"(mean {rate['mean_voxels'] ** (1 / 3):.0f}^3 voxels).", "",
        "| style | arm | labelled cases | iterations | Dice | clDice | components | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['style']} | {row['arm']} | {row['cases_labelled']} | {row.get('iterations', 0)} | "
                     f"{row['dice']:.3f} | {row['cldice']:.3f} | {row['components']:.1f} | {row['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builtin", type=Path, default=None, help="built-in model folder (default: the shipped one)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/zeroshot"))
    parser.add_argument("--seed", type=int, default=7070)
    parser.add_argument("--styles", nargs="+", default=list(STYLE_IDS), choices=list(STYLE_IDS))
    parser.add_argument("--train-cases", type=int, default=8)
    parser.add_argument("--test-cases", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--fewshot-iterations", type=int, default=150)
    parser.add_argument("--shots", type=int, nargs="*", default=[1, 3])
    parser.add_argument("--fewshot-styles", nargs="*", default=None, choices=list(STYLE_IDS),
                        help="styles that get the few-shot arms (default: all of --styles)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    set_roots(args.work.resolve())
    from vessel_seg.builtin import builtin_model_dir
    from vessel_seg.cli import configure_logging

    configure_logging()
    builtin = args.builtin.resolve() if args.builtin else builtin_model_dir()
    rate = generator_rate()
    rows = [row for style in args.styles for row in run_style(style, args, builtin)]
    result = {"date": datetime.date.today().isoformat(), "host": socket.gethostname().split(".")[0],
              "machine": machine_info(), "builtin": str(builtin), "seed": args.seed, "size": args.size,
              "test_cases": args.test_cases, "generator": rate, "rows": rows}
    write_results(args.out, result, "zeroshot", render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
