"""Pretraining a modality-free vessel model on domain-randomised volumes, and exporting it as the built-in model.

Three resumable steps (``vs_pretrain`` runs them in order; each skips work already done):

1. :func:`generate_randomized_dataset`: ``DatasetNNN_VesselPretrain`` in nnU-Net's raw layout, cases from
   :mod:`vessel_seg.dataset_conversion.domain_randomization` (written into a hidden staging folder
   case by case, so a killed run continues where it stopped, then moved into place);
2. planning with the ``pretrain`` preset (:func:`vessel_seg.planners.planner.modality_free_plans`:
   spacing in multiples of each image's finest voxel, per-image percentile normalisation) and
   preprocessing; then training fold ``all`` (``vs_train NNN 3d_fullres all -p pretrain --c``);
3. :func:`export_builtin_model`: the final weights in float16 (small, loaded with ``weights_only=True``),
   the plans, ``dataset.json`` and a model card, as a model folder that ``vs_predict -m`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from vessel_seg.checkpoint import load_checkpoint, save_checkpoint
from vessel_seg.dataset import DatasetInfo
from vessel_seg.dataset_conversion.domain_randomization import RandomizationRanges, randomized_case
from vessel_seg.dataset_conversion.synthetic import case_rng
from vessel_seg.errors import DatasetError
from vessel_seg.imageio import write_image
from vessel_seg.paths import dataset_name
from vessel_seg.paths import raw_root as default_raw_root
from vessel_seg.planners.plans import Plans

log = logging.getLogger(__name__)

PRETRAIN_NAME = "VesselPretrain"
PRETRAIN_PLANS = "pretrain"
FILE_ENDING = ".nii.gz"
BUILTIN_FOLDER_NAME = "vsTrainer__vs_builtin__3d_fullres"


def generate_randomized_dataset(
    dataset_id: int, num_cases: int, seed: int = 0, raw_root: Path | None = None,
    ranges: RandomizationRanges | None = None,
) -> Path:
    """Write (or finish writing) ``num_cases`` domain-randomised cases as ``DatasetNNN_VesselPretrain``.

    Cases are ``rand_0000`` ... (case ``k`` from ``case_rng(seed, k)``). A complete dataset with the
    same settings is reused; a different one is an error (choose another id or delete it).
    """
    if num_cases < 2:
        raise DatasetError(f"pretraining needs at least 2 cases, got {num_cases}")
    root = Path(raw_root) if raw_root is not None else default_raw_root()
    name = dataset_name(dataset_id, PRETRAIN_NAME)
    target, staging = root / name, root / f".{name}.partial"
    settings = {"seed": seed, "num_cases": num_cases, "ranges": asdict(ranges or RandomizationRanges())}
    if (target / "dataset.json").is_file():
        found = DatasetInfo.load(target / "dataset.json").extra.get("generator")
        if found != json.loads(json.dumps(settings)):
            raise DatasetError(f"{target}: holds another pretraining set ({found}); delete it or choose another id")
        log.info("pretraining data: reusing %s", target)
        return target
    for sub in ("imagesTr", "labelsTr"):
        (staging / sub).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for k in range(num_cases):
        label_path = staging / "labelsTr" / f"rand_{k:04d}{FILE_ENDING}"
        if label_path.is_file():
            continue  # written by an earlier run (the label is written last)
        case = randomized_case(case_rng(seed, k), ranges)
        write_image(case.image, case.geometry, staging / "imagesTr" / f"rand_{k:04d}_0000{FILE_ENDING}")
        write_image(case.label, case.geometry, label_path)
        if (k + 1) % 50 == 0:
            log.info("pretraining data: %d/%d cases (%.1f s)", k + 1, num_cases, time.perf_counter() - start)
    DatasetInfo(
        channel_names={"0": "any"}, labels={"background": 0, "vessel": 1}, num_training=num_cases,
        file_ending=FILE_ENDING, name=name,
        description="Domain-randomised tubular networks (vessel_seg.dataset_conversion.domain_randomization)",
        extra={"generator": settings},
    ).save(staging / "dataset.json")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    log.info("pretraining data: wrote %s", target)
    return target


def pretrain(
    dataset_id: int, num_cases: int, settings, seed: int = 0, num_workers: int = 2,
):
    """Generate (or reuse) the randomised data, plan and preprocess it, and train fold ``all`` (resuming).

    ``settings`` is a :class:`~vessel_seg.trainers.settings.TrainingSettings`; returns the
    :class:`~vessel_seg.trainers.trainer.TrainingResult` of the run.
    """
    from vessel_seg.planners.pipeline import plan_and_preprocess
    from vessel_seg.trainers.trainer import TrainingJob, train

    generate_randomized_dataset(dataset_id, num_cases, seed)
    plan_and_preprocess(dataset_id, ["3d_fullres"], num_workers=num_workers, plans_name=PRETRAIN_PLANS)
    return train(TrainingJob(dataset_id, "3d_fullres", "all", PRETRAIN_PLANS, settings, resume=True))


def export_builtin_model(model_dir: Path, out_dir: Path, card: str, fold: str = "all") -> Path:
    """Write a trained modality-free model as a built-in model folder ``out_dir/vsTrainer__vs_builtin__3d_fullres``.

    The folder holds ``plans.json`` (renamed ``vs_builtin``), ``dataset.json``, ``fold_all/checkpoint_final.pt``
    (network weights in float16 and the metadata prediction needs, nothing else) and ``MODEL_CARD.md``.
    Written into a staging folder and moved into place.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    plans = Plans.load(model_dir / "plans.json")
    if any(c.spacing_mode != "finest_voxel" for c in plans.configurations.values()):
        raise DatasetError(f"{model_dir}: not a modality-free model (plans in mm); train it with -p {PRETRAIN_PLANS}")
    state = load_checkpoint(model_dir / f"fold_{fold}" / "checkpoint_final.pt")
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in state["network_weights"].items()}
    metadata = {k: state.get("metadata", {})[k] for k in ("in_channels", "num_classes", "mirror_axes")
                if k in state.get("metadata", {})}
    target = out_dir / BUILTIN_FOLDER_NAME
    staging = out_dir / f".{BUILTIN_FOLDER_NAME}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "fold_all").mkdir(parents=True)
    plans.plans_name = "vs_builtin"
    plans.configurations = {"3d_fullres": plans.configuration("3d_fullres")}  # the one configuration trained
    for config in plans.configurations.values():
        config.data_identifier = f"vs_builtin_{config.name}"
    plans.save(staging / "plans.json")
    shutil.copyfile(model_dir / "dataset.json", staging / "dataset.json")
    save_checkpoint({"network_weights": weights, "metadata": metadata}, staging / "fold_all" / "checkpoint_final.pt")
    (staging / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    size_mb = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 2**20
    log.info("built-in model written to %s (%.1f MB)", target, size_mb)
    return target



def model_card(*, num_cases: int, seed: int, iterations: int, patch: list[int], batch: int, device: str,
               parameters: int, measured: str = "") -> str:
    """The built-in model's card: what it was trained on, with what budget, how it measured, and its limits."""
    return f"""# vessel_seg built-in vessel model

**What it is.** A ResU-Net (bottleneck residual blocks, {parameters / 1e6:.2f} M parameters, weights in float16)
that segments tubular structures (vessels) in single-channel 3D images of any modality, without training
on the user's data. It was trained only on synthetic, domain-randomised volumes.

**Input handling.** Each image is resampled to isotropic voxels of its own finest spacing
(`spacing_mode = finest_voxel`), each channel is clipped to its 0.5/99.5 percentiles and z-scored.
Predictions are resampled back to the input's own geometry.

**Training data.** {num_cases} cases from `vessel_seg.dataset_conversion.domain_randomization` (seed {seed}):
1-3 random branching trees (root radius 0.8-8 voxels, thinnest 0.4-1.2 voxels, random tortuosity and
branching) and, in 30 % of cases, a capillary-like mesh with loops; random backgrounds, textures and
non-vessel distractors (blobs, plates, small spheres); bright or dark vessels; Gaussian/Rician/Poisson
noise, bias fields, anisotropic blur, thick slices, gamma, slice-gain and ghost artefacts.
The CT-, MR- and microscopy-like styles of the zero-shot benchmark were never used.

**Budget.** {iterations} iterations of batch {batch}, patch {patch}, on {device}; reproduce with
`vs_pretrain` (see docs/pretraining.md).

**Measured.** {measured or "see docs/benchmarks.md (zero-shot and few-shot tables)."}

**Limits.** Synthetic training only: no real angiogram has been seen. Vessels wider than ~8 voxels in
radius are outside the training range (resample the image coarser first); vessels thinner than about
half a voxel are not resolved. It segments every tubular structure it sees (also airways or nerves if
they look like vessels) and has a single foreground label. Fine-tune on labelled cases
(`vs_train ... --pretrained builtin`) for clinical use.
"""
