"""Train SeqSeg's local nnU-Net model on a vessel_seg raw dataset with SeqSeg's own commands (resumable).

Usage (SeqSeg installed in the nnU-Net environment: ``pip install -c torch-pin.txt seqseg==2.1.9``)::

    .venv/bin/python benchmarks/seqseg_train.py --raw VS_RAW/Dataset520_Synthetic \\
        --seqseg /tmp/nnunet_venv/bin/seqseg --work benchmarks/work/seqseg [--dataset-id 900] \\
        [--epochs 5] [--iterations 50] [--num-cores 2] [--max-cases N]

Steps, each skipped when its output exists:

1. ``vessel_seg.evaluation.seqseg_data.write_seqseg_training_data``: ``images/``, ``truths/`` and
   ``centerlines/*.vtp`` (centrelines extracted from the labels, mm, with a ``radius`` array);
2. ``seqseg train prepare --data-dir ... --config-name SAMPLER``: SeqSeg samples its patches along the
   centrelines and plans/preprocesses them as nnU-Net ``Dataset{id}_SYNTHCT``. The default sampler config,
   ``seqseg_configs/thin_vessels_sampler.yaml``, crops 12 local radii instead of SeqSeg's 5: our synthetic
   vessels are 1-3 voxels in radius, and 5-radius crops (5x7x7 voxels) make nnU-Net plan a one-pooling
   network whose deep supervision cannot be set up. Pass ``--sampler-config default_mm`` for real data;
3. nnU-Net's ``nnUNetTrainer`` on that dataset, fold ``all``, for ``--epochs`` x ``--iterations`` (a budget that
   fits a CPU session), through ``benchmarks/nnunet_driver.py``: ``seqseg train nnunet`` calls ``nnUNetv2_train``,
   whose trainer lookup by name imports every trainer variant and fails where torchvision is broken (the registry's
   torchvision 0.28.0 is the CUDA build beside the CPU torch here); the driver imports ``nnUNetTrainer`` directly.
   The result is the folder SeqSeg's tracer reads, ``Dataset{id}_SYNTHCT/nnUNetTrainer__nnUNetPlans__3d_fullres``
   (its predictor finds ``nnUNetTrainer`` in the first module it imports, before any variant).

4. SeqSeg's packaged ``global.yaml`` with the keys of ``--tracing-overrides`` replaced
   (``seqseg_configs/thin_vessels_tracing.yaml``: the same 12-radius crops, a stopping radius below the
   thinnest synthetic vessels) is written to ``WORK/seqseg_tracing.yaml``.

It prints the ``--seqseg-weights`` / ``--seqseg-dataset`` / ``--seqseg-config`` arguments that
``tracking_benchmark.py`` and ``vs_benchmark --run-seqseg`` take. With SeqSeg's published weights, skip this script and pass their folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from vessel_seg.evaluation.seqseg_data import write_seqseg_training_data

CONFIGS = Path(__file__).resolve().parent / "seqseg_configs"


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


# Run by SeqSeg's own Python (it has PyYAML; vessel_seg does not need it): argv = overrides file, output file.
MERGE_TRACING_CONFIG = """
import importlib.resources as r, sys, yaml
found = r.files('seqseg.config').joinpath('global.yaml')
config = yaml.safe_load(found.read_text())
changes = yaml.safe_load(open(sys.argv[1]).read()) or {}
unknown = sorted(set(changes) - set(config))
if unknown:
    sys.exit(sys.argv[1] + ': ' + ', '.join(unknown) + ' not in ' + str(found) + '; check the key names')
config.update(changes)
open(sys.argv[2], 'w').write('# ' + str(found) + ' with the keys of ' + sys.argv[1] + ' replaced' + chr(10)
                             + yaml.safe_dump(config, sort_keys=False))
"""


def write_tracing_config(python: str, overrides: Path, out: Path) -> str:
    """SeqSeg's installed ``global.yaml`` with ``overrides``' keys replaced, written to ``out``; returns the
    ``-config_name`` for it (SeqSeg appends ``.yaml`` to the name and accepts an absolute path)."""
    done = subprocess.run([python, "-c", MERGE_TRACING_CONFIG, str(overrides), str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"{python}: config merge failed")
    return str(out.with_suffix(""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, required=True, help="raw dataset folder (imagesTr, labelsTr)")
    parser.add_argument("--seqseg", default="seqseg", help="the seqseg executable (in the nnU-Net environment)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/seqseg"))
    parser.add_argument("--dataset-id", type=int, default=900)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--num-cores", type=int, default=2)
    parser.add_argument("--sampler-config", default=str(CONFIGS / "thin_vessels_sampler.yaml"),
                        help="vascular-segment-sampler YAML (name or path); patches are MU_SIZE local radii wide")
    parser.add_argument("--tracing-overrides", type=Path, default=CONFIGS / "thin_vessels_tracing.yaml",
                        help="keys replaced in SeqSeg's global.yaml for tracing (crop ratio matching MU_SIZE)")
    parser.add_argument("--max-cases", type=int, default=None, help="train on the first N labelled cases only")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    env, log = nnunet_env(work), work / "seqseg_train.log"
    data = work / "data"
    write_seqseg_training_data(args.raw, data, max_cases=args.max_cases)
    name = f"Dataset{args.dataset_id:03d}_SYNTHCT"
    if not (work / "nnUNet_preprocessed" / name / "nnUNetPlans.json").is_file():
        run([args.seqseg, "train", "prepare", "--data-dir", str(data), "--name", "SYNTH", "--dataset-id",
             str(args.dataset_id), "--modality", "CT", "--config-name", args.sampler_config, "--img-ext", ".nii.gz",
             "--nnunet-raw", env["nnUNet_raw"], "--num-cores", str(args.num_cores)], env, log)
    trained = work / "nnUNet_results" / name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    python = str(Path(args.seqseg).resolve().parent / "python")
    if not (trained / "fold_all" / "checkpoint_final.pth").is_file():
        driver = str(Path(__file__).resolve().parent / "nnunet_driver.py")
        run([python, driver, "train", "-d", str(args.dataset_id), "-c", "3d_fullres", "-f", "all", "--epochs",
             str(args.epochs), "--iterations", str(args.iterations), "--timings", str(work / "train_timings.json")],
            env, log)
    config = write_tracing_config(python, args.tracing_overrides, work / "seqseg_tracing.yaml")
    print(f"--seqseg-weights {work / 'nnUNet_results'} --seqseg-dataset {name} --seqseg-config {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
