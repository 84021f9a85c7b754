"""Section ``plan``: ``vs_plan_and_preprocess`` against ``nnUNetv2_plan_and_preprocess``, each from scratch.

Also provides :func:`ensure_ours_preprocessed` and :func:`ensure_nnunet_preprocessed`, which the
training section uses to get preprocessed data (unmeasured) when the plan section did not run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from bench_common import MIB, BenchmarkContext, Measurement, measure

from vessel_seg.errors import VesselSegError


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MIB if path.is_dir() else 0.0


def plans_summary(plans_path: Path) -> dict[str, dict]:
    """Spacing, patch size, batch size and features per configuration of an ours or nnU-Net plans file."""
    if not plans_path.is_file():
        return {}
    configurations = json.loads(plans_path.read_text()).get("configurations", {})
    summary = {}
    for name, config in configurations.items():
        if "patch_size" not in config:  # nnU-Net's cascade entry only inherits from another
            continue
        network = config.get("network") or config.get("architecture", {}).get("arch_kwargs", {})
        summary[name] = {"spacing": [round(s, 3) for s in config.get("spacing", [])], "patch_size": config["patch_size"],
                         "batch_size": config.get("batch_size"), "features": network.get("features_per_stage")}
    return summary


def _measure_plan(ctx: BenchmarkContext, name: str, tool: str, repeat: int, command: list[str], env: dict[str, str],
                  preprocessed: Path, plans_file: str) -> Measurement:
    shutil.rmtree(preprocessed, ignore_errors=True)  # fresh: no reused fingerprint or cases
    preprocessed.mkdir(parents=True)
    m = measure(ctx, name, tool, "plan_and_preprocess", command, env, repeat)
    out_dir = preprocessed / ctx.dataset
    m.output_mb = round(_folder_mb(out_dir), 2)
    m.configurations = sorted(p.name for p in out_dir.iterdir() if p.is_dir()) if out_dir.is_dir() else []
    m.plans = plans_summary(out_dir / plans_file)
    return m


def ours_plan_command(ctx: BenchmarkContext, extra: list[str]) -> list[str]:
    return [*ctx.ours_command, "-d", str(ctx.dataset_id), "-np", str(ctx.num_processes), *extra]


def nnunet_plan_command(ctx: BenchmarkContext, configurations: list[str], extra: list[str]) -> list[str]:
    """``nnUNetv2_plan_and_preprocess -d ID -np N -npfp N -c CONFIGS``: ``-npfp`` (fingerprint workers,
    default 8 in nnU-Net) equals ``-np`` so both tools use the same number of processes in every step."""
    assert ctx.nnunet_command is not None
    return [*ctx.nnunet_command, "-d", str(ctx.dataset_id), "-np", str(ctx.num_processes),
            "-npfp", str(ctx.num_processes), "-c", *configurations, *extra]


def measure_ours_plan_and_preprocess(ctx: BenchmarkContext, name: str, repeat: int, extra: list[str]) -> Measurement:
    """Time ``vs_plan_and_preprocess -d ID -np N`` plus ``extra`` (e.g. ``-pl cpu``) from scratch."""
    plans_file = f"{extra[extra.index('-pl') + 1]}.json" if "-pl" in extra else "vs_plans.json"
    return _measure_plan(ctx, name, "vessel_seg", repeat, ours_plan_command(ctx, extra), ctx.ours_env(),
                         ctx.work / "vs_preprocessed", plans_file)


def measure_nnunet_plan_and_preprocess(ctx: BenchmarkContext, name: str, repeat: int, extra: list[str]) -> Measurement:
    """Time ``nnUNetv2_plan_and_preprocess ... -c 3d_fullres 2d`` plus ``extra`` from scratch."""
    return _measure_plan(ctx, name, "nnunetv2", repeat, nnunet_plan_command(ctx, ["3d_fullres", "2d"], extra),
                         ctx.nnunet_env(), ctx.work / "nnUNet_preprocessed", "nnUNetPlans.json")


def run_plan_and_preprocess_section(ctx: BenchmarkContext, repeats: int, verify: bool) -> list[Measurement]:
    """Ours (cpu and default gpu plans) and nnU-Net, interleaved per repeat so drifts in load hit both.

    Every run empties its tool's preprocessed folder first, so only the last run's data is left;
    the training section preprocesses whatever else it needs (unmeasured).
    """
    results = []
    for repeat in range(1, repeats + 1):
        results.append(measure_ours_plan_and_preprocess(ctx, "ours_cpu", repeat, ["-pl", "cpu"]))
        results.append(measure_ours_plan_and_preprocess(ctx, "ours_gpu", repeat, []))
        if ctx.nnunet_command:
            results.append(measure_nnunet_plan_and_preprocess(ctx, "nnunet", repeat, []))
        if verify:
            results.append(measure_ours_plan_and_preprocess(ctx, "ours_cpu_verify", repeat, ["-pl", "cpu", "--verify"]))
            if ctx.nnunet_command:
                results.append(measure_nnunet_plan_and_preprocess(ctx, "nnunet_verify", repeat, ["--verify_dataset_integrity"]))
    return results


def run_unmeasured(command: list[str], env: dict[str, str], log: Path, what: str) -> None:
    print(f"[setup] {what}: {' '.join(command)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise VesselSegError(f"{log}: {what} failed (rc {done.returncode}); read the log and fix the environment")


def ensure_ours_preprocessed(ctx: BenchmarkContext, plans_name: str) -> Path:
    """Our ``<plans_name>.json`` for the dataset, planning and preprocessing it first when absent."""
    plans = ctx.work / "vs_preprocessed" / ctx.dataset / f"{plans_name}.json"
    if not (plans.is_file() and (plans.parent / f"{plans_name}_3d_fullres").is_dir()):
        extra = [] if plans_name == "vs_plans" else ["-pl", plans_name]
        run_unmeasured(ours_plan_command(ctx, [*extra, "-c", "3d_fullres"]), ctx.ours_env(),
                        ctx.work / "logs" / f"setup_ours_{plans_name}.log", f"our {plans_name} preprocessing")
    return plans


def ensure_nnunet_preprocessed(ctx: BenchmarkContext) -> Path:
    """nnU-Net's ``nnUNetPlans.json`` with its 3d_fullres data, planned and preprocessed first when absent."""
    plans = ctx.work / "nnUNet_preprocessed" / ctx.dataset / "nnUNetPlans.json"
    if not (plans.is_file() and (plans.parent / "nnUNetPlans_3d_fullres").is_dir()):
        run_unmeasured(nnunet_plan_command(ctx, ["3d_fullres"], []), ctx.nnunet_env(),
                        ctx.work / "logs" / "setup_nnunet_plans.log", "nnU-Net preprocessing")
    return plans
