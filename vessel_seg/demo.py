"""``make demo``: the built-in synthetic vessel dataset, end to end, on whatever device is there.

generate -> zero-shot: the built-in pretrained model segments the held-out test images before
anything is trained -> verify, fingerprint, plan (CPU preset) and preprocess -> train fold 0 of
3d_fullres (a short budget) -> predict the held-out test images with and without mirroring TTA (MIP
previews) -> evaluate (Dice, clDice, V-score, HD95, Betti errors) and benchmark the three side by side.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from vessel_seg.builtin import announce_builtin, builtin_model_dir
from vessel_seg.cli import configure_logging, sleep_idle_openmp_threads

sleep_idle_openmp_threads()  # the demo trains with an augmentation worker; before torch is imported
from vessel_seg.dataset_conversion.synthetic import generate_dataset  # noqa: E402
from vessel_seg.evaluation.benchmark import benchmark_methods  # noqa: E402
from vessel_seg.evaluation.evaluate import evaluate_folders, format_summary_table  # noqa: E402
from vessel_seg.imageio import read_array  # noqa: E402
from vessel_seg.inference.prediction_run import predict_folder  # noqa: E402
from vessel_seg.inference.predictor import load_trained_model  # noqa: E402
from vessel_seg.inference.preview import save_mip_preview  # noqa: E402
from vessel_seg.paths import dataset_name, raw_root, results_root  # noqa: E402
from vessel_seg.planners.pipeline import CPU_PLANS, plan_and_preprocess  # noqa: E402
from vessel_seg.trainers.settings import TrainingSettings  # noqa: E402
from vessel_seg.trainers.trainer import TrainingJob, train  # noqa: E402

log = logging.getLogger("vessel_seg.demo")


def run_demo(args: argparse.Namespace) -> Path:
    name = dataset_name(args.dataset, "Synthetic")
    start = time.perf_counter()
    if (raw_root() / name / "dataset.json").is_file():
        log.info("[1/5] reusing synthetic dataset %s", raw_root() / name)
    else:
        log.info("[1/5] generating %d training + %d test synthetic cases (%d^3 voxels)", args.cases, args.test_cases, args.size)
        generate_dataset(args.dataset, args.cases, num_test_cases=args.test_cases, size=args.size, seed=args.seed)

    out = results_root() / name / "demo_predictions"
    labels = raw_root() / name / "labelsTs"
    timings = {"zero_shot": _zero_shot(raw_root() / name / "imagesTs", labels, out / "zero_shot")}

    log.info("[2/5] verify, fingerprint, plans (-pl %s) and preprocessing of 3d_fullres", CPU_PLANS)
    plans = plan_and_preprocess(args.dataset, ["3d_fullres"], verify=True, num_workers=2, plans_name=CPU_PLANS).plans
    config = plans.configuration("3d_fullres")
    log.info("  3d_fullres: spacing %s, patch %s, batch %d", [round(s, 3) for s in config.spacing], config.patch_size, config.batch_size)

    log.info("[3/5] training 3d_fullres fold 0: %d epochs x %d iterations", args.epochs, args.iterations)
    settings = TrainingSettings(
        epochs=args.epochs, iterations_per_epoch=args.iterations, validation_iterations=5, num_workers=1,
        checkpoint_every=1, loss=args.loss,
    )
    result = train(TrainingJob(args.dataset, "3d_fullres", 0, CPU_PLANS, settings, resume=True))
    log.info("  model and training curves in %s", result.fold_dir)

    log.info("[4/5] predicting imagesTs with and without mirroring TTA")
    model = load_trained_model(result.fold_dir.parent, folds=[0])
    for tag, tta in (("tta", True), ("no_tta", False)):
        seconds = predict_folder(model, raw_root() / name / "imagesTs", out / tag, use_tta=tta)
        timings[tag] = sum(seconds.values())  # total seconds; the benchmark reports per case

    for image_path in sorted((raw_root() / name / "imagesTs").glob("*_0000.nii.gz")):
        case = image_path.name.removesuffix("_0000.nii.gz")
        image, geometry = read_array(image_path)
        seg, _ = read_array(out / "tta" / f"{case}.nii.gz")
        preview = save_mip_preview(image, seg, geometry, out / f"{case}_preview.png", title=f"{case}: MIP, prediction in red")
        log.info("  preview %s", preview)

    log.info("[5/5] evaluating against labelsTs")
    evaluation = evaluate_folders(labels, out / "tta", out / "tta")
    print(format_summary_table(evaluation))
    benchmark_methods(
        labels, {"tta": out / "tta", "no_tta": out / "no_tta", "zero_shot": out / "zero_shot"}, out / "benchmark",
        runtimes=timings,
    )
    print((out / "benchmark" / "benchmark.md").read_text())
    log.info("demo finished in %.0f s; predictions in %s", time.perf_counter() - start, out)
    return out


def _zero_shot(images: Path, labels: Path, out: Path) -> float:
    """The built-in model on the test images before any training; prints its scores, returns seconds."""
    log.info("[zero-shot] the built-in pretrained model on imagesTs, before any training")
    folder = builtin_model_dir()
    model = load_trained_model(folder)
    announce_builtin(folder, "make demo, zero-shot")
    seconds = predict_folder(model, images, out, use_tta=False)
    print(format_summary_table(evaluate_folders(labels, out, out)))
    return sum(seconds.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vessel_seg.demo", description=__doc__)
    parser.add_argument("--dataset", type=int, default=501)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--test-cases", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=30, help="training iterations per epoch")
    parser.add_argument("--loss", default=TrainingSettings.loss)
    args = parser.parse_args(argv)
    configure_logging()
    run_demo(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
