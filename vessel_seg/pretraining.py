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

import contextlib
import functools
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context
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
RUNS_FILE = "pretraining_runs.json"
RANDOMISER_VERSION = 2  # 1: session 6 (2026-11-30); 2: registered distractors and artefacts, radii to 12 voxels
# The built-in model learns *bright* vessels only; vs_predict inverts an image first when its vessels are dark
# (--vessel-polarity). Why: with both polarities the model took dark fat, air and cavities in CT and MR for
# dark vessels (dev-set tuning split, 2026-12-08: precision 0.12-0.34 on CT and MR); most angiography
# (CTA, TOF/CE-MRA, fluorescence, OCTA) shows vessels bright.
# Root radii stay at the v1 range (0.6-8 voxels): with radii to 12 voxels the foreground share of a case doubled
# (mean 4.0 % against 2.0 %, up to 23 %) and a snapshot took large bright tissue regions for vessels (dev-set
# tuning split, precision 0.07-0.14); wider vessels are reached by vs_predict --vessel-scale instead.
PRETRAIN_RANGES = RandomizationRanges(dark_vessel_probability=0.0, root_radius_voxels=(0.6, 8.0))


@dataclass(frozen=True)
class PretrainingRun:
    """One ``vs_pretrain`` run that shaped a model's weights (the model card lists them all, oldest first).

    ``iterations`` of batch ``batch`` at ``patch`` (voxels); ``wall_s`` seconds of the run's last invocation
    (data, preprocessing and training); ``init`` the folder it started from (None: random initialisation).
    """

    date: str
    machine: str
    cases: int
    seed: int
    randomiser: int
    iterations: int
    batch: int
    patch: list[int]
    wall_s: float
    init: str | None = None


def read_runs(model_dir: Path) -> list[PretrainingRun]:
    """The runs recorded in ``model_dir/pretraining_runs.json`` (none if absent; one-line error if malformed)."""
    path = Path(model_dir) / RUNS_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in fields(PretrainingRun)}
        runs = [PretrainingRun(**{k: v for k, v in entry.items() if k in names}) for entry in entries]
    except (ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a list of pretraining runs ({exc}); delete it or re-export the model") from exc
    if any(r.iterations < 0 or r.cases < 0 or r.wall_s < 0 for r in runs):
        raise DatasetError(f"{path}: negative counts or times in a pretraining run; re-export the model")
    return runs


def generate_randomized_dataset(
    dataset_id: int, num_cases: int, seed: int = 0, raw_root: Path | None = None,
    ranges: RandomizationRanges | None = None, num_workers: int = 1,
) -> Path:
    """Write (or finish writing) ``num_cases`` domain-randomised cases as ``DatasetNNN_VesselPretrain``.

    Cases are ``rand_0000`` ... (case ``k`` from ``case_rng(seed, k)``, the same whatever ``num_workers``
    processes write them). A complete dataset with the same settings is reused; a different one is an
    error (choose another id or delete it).
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
    todo = [k for k in range(num_cases) if not (staging / "labelsTr" / f"rand_{k:04d}{FILE_ENDING}").is_file()]
    # (the label is written last: a case with a label was written whole by an earlier run)
    write = functools.partial(_write_randomized_case, staging, seed, ranges)
    with contextlib.ExitStack() as stack:
        written = map(write, todo)
        if num_workers > 1 and len(todo) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(min(num_workers, len(todo)), mp_context=get_context("spawn")))
            written = pool.map(write, todo, chunksize=4)
        for done, _ in enumerate(written, 1):
            if done % 50 == 0:
                log.info("pretraining data: %d/%d cases (%.1f s)", done, len(todo), time.perf_counter() - start)
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


def _write_randomized_case(staging: Path, seed: int, ranges: RandomizationRanges | None, k: int) -> None:
    """Case ``k`` (image, then label) into the staging folder; run in worker processes too."""
    case = randomized_case(case_rng(seed, k), ranges)
    write_image(case.image, case.geometry, staging / "imagesTr" / f"rand_{k:04d}_0000{FILE_ENDING}")
    write_image(case.label, case.geometry, staging / "labelsTr" / f"rand_{k:04d}{FILE_ENDING}")


def pretrain(
    dataset_id: int, num_cases: int, settings, seed: int = 0, num_workers: int = 2, init: Path | None = None,
):
    """Generate (or reuse) the randomised data, plan and preprocess it, and train fold ``all`` (resuming).

    ``settings`` is a :class:`~vessel_seg.trainers.settings.TrainingSettings`; returns the
    :class:`~vessel_seg.trainers.trainer.TrainingResult` of the run. With ``init`` (a modality-free
    model folder, e.g. the built-in model) the data is preprocessed with that model's plans and the
    run starts from its weights, so pretraining budgets add up over runs and machines.
    """
    from vessel_seg.planners.pipeline import plan_and_preprocess
    from vessel_seg.trainers.trainer import TrainingJob, train

    generate_randomized_dataset(dataset_id, num_cases, seed, ranges=PRETRAIN_RANGES, num_workers=num_workers)
    plans_from = Plans.load(Path(init) / "plans.json") if init is not None else None
    plan_and_preprocess(dataset_id, ["3d_fullres"], num_workers=num_workers, plans_name=PRETRAIN_PLANS,
                        plans_from=plans_from)
    pretrained = Path(init) / "fold_all" / "checkpoint_final.pt" if init is not None else None
    return train(TrainingJob(dataset_id, "3d_fullres", "all", PRETRAIN_PLANS, settings, resume=True,
                             pretrained=pretrained))


def export_builtin_model(model_dir: Path, out_dir: Path, card: str, fold: str = "all",
                         runs: list[PretrainingRun] | None = None, checkpoint: str = "final") -> Path:
    """Write a trained modality-free model as a built-in model folder ``out_dir/vsTrainer__vs_builtin__3d_fullres``.

    The folder holds ``plans.json`` (renamed ``vs_builtin``), ``dataset.json``, ``fold_all/checkpoint_final.pt``
    (network weights in float16 and the metadata prediction needs, nothing else), ``MODEL_CARD.md`` and
    ``pretraining_runs.json`` (every run that shaped the weights). ``checkpoint``: ``final``, or ``latest``
    to look at a run still in progress.
    Written into a staging folder and moved into place.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    plans = Plans.load(model_dir / "plans.json")
    if any(c.spacing_mode != "finest_voxel" for c in plans.configurations.values()):
        raise DatasetError(f"{model_dir}: not a modality-free model (plans in mm); train it with -p {PRETRAIN_PLANS}")
    state = load_checkpoint(model_dir / f"fold_{fold}" / f"checkpoint_{checkpoint}.pt")
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
    (staging / RUNS_FILE).write_text(json.dumps([asdict(r) for r in runs or []], indent=1), encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    size_mb = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 2**20
    log.info("built-in model written to %s (%.1f MB)", target, size_mb)
    return target



def _training_data(runs: list[PretrainingRun]) -> str:
    """The training-data paragraph for the randomiser versions the runs used (each version described once)."""
    versions = sorted({run.randomiser for run in runs})
    return " ".join(V2_TEXT.format(r=PRETRAIN_RANGES) if v == 2 else V1_TEXT for v in versions if v in (1, 2))


V1_TEXT = ("Randomiser v1 (2026-11-30): cases from `vessel_seg.dataset_conversion.domain_randomization` with 1-3 "
           "random branching trees (root radius 0.8-8 voxels, thinnest 0.4-1.2 voxels, random tortuosity and "
           "branching) and, in 30 % of cases, a capillary-like mesh with loops; random backgrounds, textures and "
           "non-vessel distractors (blobs, plates, small spheres) kept a voxel off the lumen; bright or (30 %) dark "
           "vessels; Gaussian/Rician/Poisson noise, bias fields, anisotropic blur, thick slices, gamma, slice-gain and "
           "ghost artefacts.\n")
V2_TEXT = ("Randomiser v2 (2026-12-08, `vessel_seg.pretraining.PRETRAIN_RANGES`): 1-3 random branching trees (root "
           "radius {r.root_radius_voxels[0]:g}-{r.root_radius_voxels[1]:g} voxels, thinnest {r.min_radius_voxels[0]:g}-"
           "{r.min_radius_voxels[1]:g} voxels) and, in {r.mesh_probability:.0%} of cases, a capillary-like mesh; "
           "backgrounds and textures (inverted in {r.background_inversion_probability:.0%} of cases); label-0 "
           "distractors (blobs, plates, bone-like shells, small spheres, speckle; near the tree and far from it, in "
           "{r.vessel_like_distractor_probability:.0%} of draws as bright as the vessels); bright vessels only, painted "
           "or added; noise, bias, blur, thick slices, gamma, k-space spikes, Gibbs ringing, sharpening, histogram "
           "shifts, slice-gain and ghost artefacts.\n")
def _runs_table(runs: list[PretrainingRun]) -> str:
    lines = ["| # | date | machine | randomiser | cases (seed) | iterations x batch | patch | wall time | started from |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, r in enumerate(runs, 1):
        lines.append(f"| {k} | {r.date} | {r.machine} | v{r.randomiser} | {r.cases} ({r.seed}) | {r.iterations} x "
                     f"{r.batch} | {'x'.join(map(str, r.patch))} | {r.wall_s / 60:.0f} min | {r.init or 'random'} |")
    return "\n".join(lines)


def model_card(*, runs: list[PretrainingRun], parameters: int, measured: str = "") -> str:
    """The built-in model's card: what it was trained on, with what budget, how it measured, and its limits."""
    total = sum(run.iterations * run.batch for run in runs)
    r = PRETRAIN_RANGES
    return f"""# vessel_seg built-in vessel model

**What it is.** A ResU-Net (bottleneck residual blocks, {parameters / 1e6:.2f} M parameters, weights in float16)
that segments tubular structures (vessels) in single-channel 3D images of any modality, without training
on the user's data. It was trained only on synthetic, domain-randomised volumes.

**Input handling.** Each image is resampled to isotropic voxels of its own finest spacing
(`spacing_mode = finest_voxel`), each channel is clipped to its 0.5/99.5 percentiles and z-scored.
Predictions are resampled back to the input's own geometry.

**Training data.** {_training_data(runs)}
The styles and generators of the zero-shot benchmarks were never used.

**Runs** (each continues from the one before; {total} patches seen in all; reproduce with `vs_pretrain`,
see docs/pretraining.md):

{_runs_table(runs)}

**Measured.** {measured or "see docs/pretraining.md and docs/benchmarks.md (zero-shot and few-shot tables)."}

**Limits.** Synthetic training only: no real angiogram has been seen. Vessels wider than ~{r.root_radius_voxels[1]:g} voxels in
radius are outside the training range: `vs_predict --vessel-scale multi` adds passes on 2x and 4x coarser
grids that count only inside wide vessels; vessels thinner than about half a voxel are not resolved.
It segments every tubular structure it sees (also airways or nerves if they look like vessels) and has a
single foreground label. Fine-tune on labelled cases (`vs_train ... --pretrained builtin`) for clinical use.
"""
