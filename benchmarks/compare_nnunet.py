"""Side-by-side benchmark of vessel_seg against nnU-Net v2 on the same synthetic data and machine.

Usage::

    .venv/bin/python benchmarks/compare_nnunet.py --cases 12 --size 96 \\
        --nnunet-python /tmp/nnunet_venv/bin/python [--sections plan,train,infer] [--verify] [--repeats 2]
    .venv/bin/python benchmarks/compare_nnunet.py --skip-nnunet     # our side only

One synthetic dataset (vessel_seg's generator, training and held-out test cases) is written to
``<work>/vs_raw``; its training files (``dataset.json``, ``imagesTr``, ``labelsTr``) are copied
unchanged into ``<work>/nnUNet_raw``: the layouts are identical. Every measured command runs in a
fresh subprocess, timed and memory-sampled as a whole process tree (see ``bench_common``).

Sections (one module each):

- ``plan`` (``bench_plan``): plan and preprocess from scratch, wall/CPU time and peak memory.
- ``train`` (``bench_training``): seconds per iteration, data wait and peak memory at the same
  patch size, batch size and network width, and at each framework's default plan.
- ``infer`` (``bench_inference``): seconds per case and peak memory with and without mirroring
  TTA, and Dice/clDice of the same-settings models on the test cases.

nnU-Net is driven through ``nnunet_driver.py`` (run with nnU-Net's interpreter), ours through
``vs_driver.py``. Results go to ``<out>/<YYYY-MM-DD>-<hostname>.json`` and ``.md`` (see
``bench_report``), with ratios ours / nnU-Net and the issue's targets marked PASS or MISS.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules; benchmarks/ is not a package
from bench_common import (  # noqa: E402
    SAMPLE_INTERVAL_S,
    BenchmarkContext,
    BenchmarkReport,
    Measurement,
    machine_info,
    nnunet_command,
    ours_command,
    probe_nnunet,
    run_measured,
)
from bench_inference import run_inference_section  # noqa: E402
from bench_plan import run_plan_and_preprocess_section  # noqa: E402
from bench_report import check_targets, compute_ratios, render_markdown, summarise, write_report  # noqa: E402
from bench_training import TrainingBudget, run_training_section  # noqa: E402

from vessel_seg.cli import run_cli  # noqa: E402
from vessel_seg.dataset_conversion.synthetic import generate_dataset  # noqa: E402
from vessel_seg.errors import VesselSegError  # noqa: E402

__all__ = ["Measurement", "VesselSegError", "compute_ratios", "main", "nnunet_command", "run_measured", "summarise"]
SECTIONS = ("plan", "train", "infer")


def prepare_dataset(ctx: BenchmarkContext, cases: int, test_cases: int, size: int, seed: int,
                    spacing: tuple[float, float, float]) -> None:
    """Generate the synthetic dataset into ``<work>/vs_raw`` and copy its training part into ``<work>/nnUNet_raw``."""
    vs_dir = generate_dataset(ctx.dataset_id, cases, num_test_cases=test_cases, size=size, seed=seed,
                              raw_root=ctx.work / "vs_raw", overwrite=True, spacing=spacing)
    nn_dir = ctx.work / "nnUNet_raw" / ctx.dataset
    shutil.rmtree(nn_dir, ignore_errors=True)
    nn_dir.mkdir(parents=True)
    shutil.copyfile(vs_dir / "dataset.json", nn_dir / "dataset.json")
    for sub in ("imagesTr", "labelsTr"):
        shutil.copytree(vs_dir / sub, nn_dir / sub)


def parse_sections(text: str) -> list[str]:
    sections = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        raise VesselSegError(f"--sections {text!r}: use a comma-separated subset of {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in sections]


def build_parser() -> argparse.ArgumentParser:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Benchmark vessel_seg against nnU-Net v2: plan+preprocess, training, "
                                     "inference.")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of plan,train,infer (default all)")
    parser.add_argument("--cases", type=int, default=12, help="synthetic training cases (default 12)")
    parser.add_argument("--test-cases", type=int, default=2, help="held-out test cases for the infer section (default 2)")
    parser.add_argument("--size", type=int, default=96, help="edge length of the cubic volumes in voxels (default 96)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.5, 0.5), help="voxel size z y x in mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset-id", type=int, default=501)
    parser.add_argument("-np", "--num-processes", type=int, default=2,
                        help="worker processes for both tools: preprocessing, data augmentation, nnU-Net's export (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="measure every plan+preprocess command this many times (default 1)")
    parser.add_argument("--verify", action="store_true", help="also time the dataset-verification variants of planning")
    parser.add_argument("--train-epochs", type=int, default=10, help="epochs of the same-settings training (default 10)")
    parser.add_argument("--train-iterations", type=int, default=50, help="iterations per epoch of the same-settings training (default 50)")
    parser.add_argument("--val-iterations", type=int, default=2, help="validation batches per epoch (default 2)")
    parser.add_argument("--default-iterations", type=int, default=3,
                        help="iterations of each framework's default 3d_fullres plan (default 3; 0 skips; the first is warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="iterations dropped from the start of each training run (default 1)")
    parser.add_argument("--ours-no-amp", action="store_true",
                        help="train ours in float32 like nnU-Net on the CPU (default: bf16 autocast where the CPU supports it)")
    parser.add_argument("--nnunet-python", help="interpreter of an environment with nnunetv2 (default: nnU-Net on PATH)")
    parser.add_argument("--skip-nnunet", action="store_true", help="measure our side only")
    parser.add_argument("--work", type=Path, default=here / "work", help="scratch folder (default benchmarks/work)")
    parser.add_argument("--out", type=Path, default=here / "results", help="results folder (default benchmarks/results)")
    return parser


def _validate(args: argparse.Namespace, sections: list[str]) -> None:
    if args.cases < 1 or args.size < 16 or args.repeats < 1 or args.num_processes < 1:
        raise VesselSegError("--cases, --repeats and -np must be at least 1 and --size at least 16")
    if "train" in sections and (args.train_epochs < 1 or args.train_iterations < 1 or args.val_iterations < 1
                                or args.warmup < 0 or args.train_epochs * args.train_iterations <= args.warmup):
        raise VesselSegError("--train-epochs, --train-iterations and --val-iterations must be at least 1, and "
                             "epochs x iterations more than --warmup")
    if "infer" in sections and args.test_cases < 1:
        raise VesselSegError("the infer section needs --test-cases 1 or more")


def _notes(args: argparse.Namespace, sections: list[str], nn_notes: list[str]) -> list[str]:
    notes = list(nn_notes)
    if "train" in sections:
        notes += ["Same settings: nnU-Net's configuration `3d_vs` is its 3d_fullres (PlainConvUNet, 2 convolutions per "
                  "stage) with our -pl cpu 3d_fullres patch, batch, spacing, stages, features, kernels and strides; ours "
                  "is a residual U-Net with the same widths, so the networks are not identical.",
                  "nnU-Net trains in float32 on the CPU (it enables autocast on CUDA only); ours "
                  + ("also ran in float32 (--ours-no-amp)." if args.ours_no_amp
                     else "uses bf16 autocast where the CPU supports it natively (see --ours-no-amp).")]
    return notes


def _command(args: argparse.Namespace) -> int:
    sections = parse_sections(args.sections)
    _validate(args, sections)
    nn_python, nn_cmd = (None, None) if args.skip_nnunet else nnunet_command(args.nnunet_python)
    work = args.work.resolve()
    ctx = BenchmarkContext(work=work, dataset_id=args.dataset_id, num_processes=args.num_processes,
                           ours_command=ours_command(), nnunet_command=nn_cmd, nnunet_python=nn_python)
    budget = TrainingBudget(epochs=args.train_epochs, iterations=args.train_iterations, val_iterations=args.val_iterations,
                            default_iterations=args.default_iterations, warmup=args.warmup, ours_amp=not args.ours_no_amp)
    settings: dict[str, object] = {"sections": sections, "cases": args.cases, "test_cases": args.test_cases,
                                   "size": args.size, "spacing": list(args.spacing), "seed": args.seed,
                                   "dataset_id": args.dataset_id, "num_processes": args.num_processes,
                                   "repeats": args.repeats, "sample_interval_s": SAMPLE_INTERVAL_S}
    if "train" in sections:
        settings["training"] = vars(budget)
    nn_notes: list[str] = []
    if nn_python:
        settings["nnunet_versions"], nn_notes = probe_nnunet(nn_python)
    print(f"generating {args.cases} + {args.test_cases} cases of {args.size}^3 into {work}", flush=True)
    prepare_dataset(ctx, args.cases, args.test_cases, args.size, args.seed, tuple(args.spacing))
    measurements: list[Measurement] = []
    if "plan" in sections:
        measurements += run_plan_and_preprocess_section(ctx, args.repeats, args.verify)
    if "train" in sections:
        measurements += run_training_section(ctx, budget)
    if "infer" in sections:
        measurements += run_inference_section(ctx)
    summary = summarise(measurements)
    ratios = compute_ratios(summary)
    report = BenchmarkReport(date=datetime.date.today().isoformat(), host=socket.gethostname(), machine=machine_info(),
                             settings=settings, measurements=measurements, summary=summary, ratios=ratios,
                             targets=check_targets(ratios) if ratios else [], notes=_notes(args, sections, nn_notes))
    report.notes += [f"{m.name} #{m.repeat} failed (rc {m.returncode}); log {m.log}" for m in measurements if m.returncode]
    json_path, md_path = write_report(report, args.out)
    print(render_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any(m.returncode for m in measurements) else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
