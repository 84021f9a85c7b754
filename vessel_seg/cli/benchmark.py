"""``vs_benchmark``: compare segmentation methods side by side on one test set.

Examples::

    vs_benchmark -ref labelsTs ours=pred_ours nnunet=pred_nnunet -o bench --runtime ours=310 nnunet=1260
    vs_benchmark -ref labelsTs ours=pred_ours -o bench --images imagesTs \\
        --run-nnunet 12 --nnunet-results nnUNet_results --nnunet-device cpu \\
        --run-vesselfm --vesselfm-weights vesselFM_base.pt
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vessel_seg.cli import run_cli
from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.benchmark import benchmark_methods
from vessel_seg.evaluation.runners import RunnerResult, run_nnunet, run_vesselfm
from vessel_seg.evaluation.seqseg_runner import SeqSegSettings, run_seqseg


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _runtime(text: str) -> tuple[str, float]:
    name, value = _assignment(text)
    try:
        seconds = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"runtime of {name!r} must be seconds, got {value!r}") from exc
    return name, seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_benchmark",
        description="Score several methods' predictions against one ground truth; write Markdown and CSV tables "
        "(per case and mean, paired Wilcoxon tests against the first method) and box plots.",
    )
    parser.add_argument("methods", nargs="*", type=_assignment, metavar="NAME=PRED_DIR", help="prediction folders")
    parser.add_argument("-ref", required=True, type=Path, help="folder of ground-truth label maps")
    parser.add_argument("-o", required=True, type=Path, help="output folder")
    parser.add_argument("--labels", type=int, nargs="+", default=None, help="labels to score (default: all in REF)")
    parser.add_argument("--reference", default=None, help="method the others are compared with (default: first)")
    parser.add_argument(
        "--runtime", type=_runtime, nargs="+", default=[], metavar="NAME=SECONDS", help="wall time per method"
    )
    parser.add_argument("-np", type=int, default=1, dest="num_workers", help="worker processes for scoring")
    parser.add_argument("--images", type=Path, default=None, help="test images (CASE_0000.ext), needed by --run-*")

    nnunet = parser.add_argument_group("nnU-Net v2 (nnUNetv2_predict)")
    nnunet.add_argument("--run-nnunet", metavar="DATASET_ID", default=None, help="predict with this trained dataset")
    nnunet.add_argument("--nnunet-config", default="3d_fullres")
    nnunet.add_argument("--nnunet-folds", nargs="+", default=["0", "1", "2", "3", "4"])
    nnunet.add_argument("--nnunet-trainer", default=None)
    nnunet.add_argument("--nnunet-plans", default=None)
    nnunet.add_argument("--nnunet-checkpoint", default=None, help="e.g. checkpoint_best.pth")
    nnunet.add_argument("--nnunet-device", default=None, help="cuda, cpu or mps")
    nnunet.add_argument("--nnunet-disable-tta", action="store_true")
    nnunet.add_argument(
        "--nnunet-results", type=Path, default=None, help="nnUNet_results folder (default: $nnUNet_results)"
    )

    seqseg = parser.add_argument_group("SeqSeg (seeded from the ground truth's centreline root)")
    seqseg.add_argument("--run-seqseg", action="store_true")
    seqseg.add_argument("--seqseg-weights", type=Path, default=None, help="folder holding DatasetNNN_Name/ of SeqSeg")
    seqseg.add_argument("--seqseg-dataset", default="Dataset005_SEQAORTANDFEMOMR", help="SeqSeg training dataset name")
    seqseg.add_argument("--seqseg-type", default="3d_fullres")
    seqseg.add_argument("--seqseg-fold", default="all")
    seqseg.add_argument("--seqseg-config", default="global", help="SeqSeg config name")
    seqseg.add_argument("--seqseg-scale", type=float, default=1.0, help="0.1 for models trained in cm")
    seqseg.add_argument("--seqseg-seed-inset", type=float, default=0.0,
                        help="seed this many root radii along the reference centreline into the tree (0: the root); "
                        "SeqSeg stops at once when its first crop meets the image border")
    seqseg.add_argument("--seqseg-resample-spacing", type=float, nargs="+", default=None, metavar="MM",
                        help="SeqSeg resamples each image to this spacing first (one value or x y z), e.g. for vessels "
                        "only 1-2 voxels in radius")

    vesselfm = parser.add_argument_group("vesselFM (zero-shot)")
    vesselfm.add_argument("--run-vesselfm", action="store_true")
    vesselfm.add_argument("--vesselfm-weights", type=Path, default=None, help="vesselFM_base.pt")
    vesselfm.add_argument("--vesselfm-config", type=Path, default=None, help="inference.yaml to use")
    vesselfm.add_argument("--vesselfm-device", default=None, help="e.g. cuda:0 or cpu")
    vesselfm.add_argument("--vesselfm-python", default=None, help="Python interpreter that has vesselFM installed")
    return parser


def _run_external(args: argparse.Namespace) -> list[RunnerResult]:
    wanted = args.run_nnunet is not None or args.run_seqseg or args.run_vesselfm
    if not wanted:
        return []
    if args.images is None:
        raise VesselSegError("--images IMAGES_DIR (the test images, CASE_0000.ext) is needed to run other methods")
    runs = []
    if args.run_nnunet is not None:
        runs.append(
            run_nnunet(
                args.images,
                args.o,
                dataset=args.run_nnunet,
                configuration=args.nnunet_config,
                folds=args.nnunet_folds,
                trainer=args.nnunet_trainer,
                plans=args.nnunet_plans,
                checkpoint=args.nnunet_checkpoint,
                device=args.nnunet_device,
                disable_tta=args.nnunet_disable_tta,
                results_dir=args.nnunet_results,
            )
        )
    if args.run_seqseg:
        runs.append(
            run_seqseg(
                args.images,
                args.ref,
                args.o,
                weights_dir=args.seqseg_weights,
                train_dataset=args.seqseg_dataset,
                settings=SeqSegSettings(
                    nnunet_type=args.seqseg_type,
                    fold=args.seqseg_fold,
                    config_name=args.seqseg_config,
                    scale=args.seqseg_scale,
                    resample_spacing=args.seqseg_resample_spacing,
                    seed_inset_radii=args.seqseg_seed_inset,
                ),
            )
        )
    if args.run_vesselfm:
        runs.append(
            run_vesselfm(
                args.images,
                args.o,
                weights=args.vesselfm_weights,
                config=args.vesselfm_config,
                device=args.vesselfm_device,
                python=args.vesselfm_python,
            )
        )
    return runs


def _command(args: argparse.Namespace) -> int:
    methods = dict(args.methods)
    if len(methods) != len(args.methods):
        raise VesselSegError("method names must be unique")
    runtimes = dict(args.runtime)
    for run in _run_external(args):
        if run.name in methods:
            raise VesselSegError(f"method {run.name!r} is given as NAME=DIR and run with --run-{run.name}; pick one")
        methods[run.name] = run.pred_dir
        runtimes.setdefault(run.name, run.runtime_s)
        print(f"{run.name}: {run.runtime_s:.1f} s, masks in {run.pred_dir}")
    unknown = sorted(set(runtimes) - set(methods))
    if unknown:
        raise VesselSegError(f"--runtime names unknown methods: {', '.join(unknown)}")
    result = benchmark_methods(args.ref, methods, args.o, args.labels, args.reference, runtimes, args.num_workers)
    print((args.o / "benchmark.md").read_text().split("\n### ")[0].rstrip())
    print(f"reports in {args.o}: " + ", ".join(sorted(result.files)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
