"""Section ``infer``: seconds per case, peak memory and Dice/clDice on held-out cases, with and without TTA.

Uses the fold-0 models of the training section's same-settings runs (ours ``-pl cpu``
3d_fullres, nnU-Net ``3d_vs``), so both had the same training budget. Each framework predicts
``imagesTs`` of the synthetic dataset in a fresh process, once with mirroring test-time
augmentation (8 flips in 3D) and once without. Reported per run:

- ``s_per_case``: model set-up plus prediction of all cases, divided by the number of cases, timed
  inside the process (interpreter and library import excluded; ``wall_s`` includes them).
- ``dice``, ``cldice``: means over test cases and foreground labels, scored by vessel_seg's
  evaluator (same code for both frameworks) against ``labelsTs``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from bench_common import HERE, BenchmarkContext, Measurement, measure, not_run, read_json
from bench_training import NNUNET_PLANS, NNUNET_SAME_CONFIGURATION, OURS_SAME_PLANS

from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.evaluate import evaluate_folders
from vessel_seg.model_folder import DEFAULT_TRAINER, checkpoint_path

VARIANTS = (("tta", []), ("notta", ["--disable-tta"]))


def _test_folders(ctx: BenchmarkContext) -> tuple[Path, Path]:
    raw = ctx.work / "vs_raw" / ctx.dataset
    images, labels = raw / "imagesTs", raw / "labelsTs"
    if not any(images.glob("*_0000.*")):
        raise VesselSegError(f"{images}: no test images; run with --test-cases 1 or more")
    return images, labels


def _finish(m: Measurement, timings: Path, output: Path, labels: Path) -> Measurement:
    t = read_json(timings)
    if t.get("num_cases"):
        m.metrics["s_per_case"] = round(t["predict_s"] / t["num_cases"], 3)
        m.metrics["wall_s_per_case"] = round(m.wall_s / t["num_cases"], 3)
        m.metrics["num_cases"] = t["num_cases"]
    if m.returncode == 0:
        result = evaluate_folders(labels, output)
        m.metrics["dice"] = round(result.mean("dice"), 4)
        m.metrics["cldice"] = round(result.mean("cldice"), 4)
        print(f"    {m.metrics.get('s_per_case', float('nan')):.2f} s/case, Dice {m.metrics['dice']:.4f}, "
              f"clDice {m.metrics['cldice']:.4f}", flush=True)
    return m


def _paths(ctx: BenchmarkContext, name: str) -> tuple[Path, Path]:
    output = ctx.work / "predictions" / name
    shutil.rmtree(output, ignore_errors=True)
    timings = ctx.work / "timings" / f"{name}.json"
    timings.unlink(missing_ok=True)
    return output, timings


def predict_ours(ctx: BenchmarkContext, variant: str, flags: list[str]) -> Measurement:
    images, labels = _test_folders(ctx)
    model = ctx.work / "vs_results" / ctx.dataset / f"{DEFAULT_TRAINER}__{OURS_SAME_PLANS}__3d_fullres" / "fold_0"
    name = f"ours_infer_{variant}"
    if not checkpoint_path(model, "final").is_file():
        return not_run(name, "vessel_seg", "infer", f"{model}: no trained model; run the train section first")
    output, timings = _paths(ctx, name)
    command = [sys.executable, str(HERE / "vs_driver.py"), "--timings", str(timings), "predict", "-i", str(images),
               "-o", str(output), "-d", str(ctx.dataset_id), "-c", "3d_fullres", "-pl", OURS_SAME_PLANS, "-f", "0",
               "--device", "cpu", *flags]
    return _finish(measure(ctx, name, "vessel_seg", "infer", command, ctx.ours_env()), timings, output, labels)


def predict_nnunet(ctx: BenchmarkContext, variant: str, flags: list[str]) -> Measurement:
    assert ctx.nnunet_python is not None
    images, labels = _test_folders(ctx)
    model = (ctx.work / "nnUNet_results" / ctx.dataset / f"nnUNetTrainer__{NNUNET_PLANS}__{NNUNET_SAME_CONFIGURATION}"
             / "fold_0" / "checkpoint_final.pth")
    name = f"nnunet_infer_{variant}"
    if not model.is_file():
        return not_run(name, "nnunetv2", "infer", f"{model}: no trained nnU-Net model; run the train section first")
    output, timings = _paths(ctx, name)
    command = [ctx.nnunet_python, str(HERE / "nnunet_driver.py"), "predict", "-d", str(ctx.dataset_id),
               "-c", NNUNET_SAME_CONFIGURATION, "-i", str(images), "-o", str(output), "-np", str(ctx.num_processes),
               "--timings", str(timings), *flags]
    return _finish(measure(ctx, name, "nnunetv2", "infer", command, ctx.nnunet_env()), timings, output, labels)


def run_inference_section(ctx: BenchmarkContext) -> list[Measurement]:
    """Ours and nnU-Net, with then without TTA."""
    results = []
    for variant, flags in VARIANTS:
        results.append(predict_ours(ctx, variant, flags))
        if ctx.nnunet_python:
            results.append(predict_nnunet(ctx, variant, flags))
    return results
