"""Train SeqSeg's local nnU-Net model on a vessel_seg raw dataset with SeqSeg's own commands (resumable).

Usage (SeqSeg installed in the nnU-Net environment: ``pip install -c torch-pin.txt seqseg==2.1.9``)::

    .venv/bin/python benchmarks/seqseg_train.py --raw VS_RAW/Dataset520_Synthetic \\
        --seqseg /tmp/nnunet_venv/bin/seqseg --work benchmarks/work/seqseg [--dataset-id 900] \\
        [--trainer nnUNetTrainer_5epochs] [--num-cores 2]

Steps, each skipped when its output exists:

1. ``vessel_seg.evaluation.seqseg_data.write_seqseg_training_data``: ``images/``, ``truths/`` and
   ``centerlines/*.vtp`` (centrelines extracted from the labels, mm, with a ``radius`` array);
2. ``seqseg train prepare --data-dir ... --config-name default_mm``: SeqSeg samples its patches along
   the centrelines and plans/preprocesses them as nnU-Net ``Dataset{id}_SYNTHCT``;
3. ``seqseg train nnunet --fold all --trainer TRAINER`` (``--c`` when a checkpoint exists): a budget
   variant of nnU-Net's trainer fits a CPU session;
4. the trained folder is linked as ``weights/Dataset{id}_SYNTHCT/nnUNetTrainer__nnUNetPlans__3d_fullres``,
   the name SeqSeg's tracer looks for.

It prints the ``--seqseg-weights`` / ``--seqseg-dataset`` arguments that ``tracking_benchmark.py`` and
``vs_benchmark --run-seqseg`` take. With SeqSeg's published weights, skip this script and pass their folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from vessel_seg.evaluation.seqseg_data import write_seqseg_training_data


def nnunet_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("raw", "preprocessed", "results"):
        (work / f"nnUNet_{name}").mkdir(parents=True, exist_ok=True)
        env[f"nnUNet_{name}"] = str(work / f"nnUNet_{name}")
    return env


def run(command: list[str], env: dict[str, str], log: Path) -> None:
    print("$", " ".join(command), flush=True)
    with open(log, "a") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed (exit {done.returncode}); see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, required=True, help="raw dataset folder (imagesTr, labelsTr)")
    parser.add_argument("--seqseg", default="seqseg", help="the seqseg executable (in the nnU-Net environment)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/seqseg"))
    parser.add_argument("--dataset-id", type=int, default=900)
    parser.add_argument("--trainer", default="nnUNetTrainer_5epochs")
    parser.add_argument("--num-cores", type=int, default=2)
    args = parser.parse_args(argv)
    work = args.work.resolve()
    env, log = nnunet_env(work), work / "seqseg_train.log"
    data = work / "data"
    write_seqseg_training_data(args.raw, data)
    name = f"Dataset{args.dataset_id:03d}_SYNTHCT"
    if not (work / "nnUNet_preprocessed" / name / "nnUNetPlans.json").is_file():
        run([args.seqseg, "train", "prepare", "--data-dir", str(data), "--name", "SYNTH", "--dataset-id",
             str(args.dataset_id), "--modality", "CT", "--config-name", "default_mm", "--img-ext", ".nii.gz",
             "--nnunet-raw", env["nnUNet_raw"], "--num-cores", str(args.num_cores)], env, log)
    trained = work / "nnUNet_results" / name / f"{args.trainer}__nnUNetPlans__3d_fullres"
    if not (trained / "fold_all" / "checkpoint_final.pth").is_file():
        resume = ["--c"] if (trained / "fold_all" / "checkpoint_latest.pth").is_file() else []
        run([args.seqseg, "train", "nnunet", "--dataset-id", str(args.dataset_id), "--fold", "all",
             "--trainer", args.trainer, *resume], env, log)
    link = work / "weights" / name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(trained, target_is_directory=True)
    print(f"--seqseg-weights {work / 'weights'} --seqseg-dataset {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
