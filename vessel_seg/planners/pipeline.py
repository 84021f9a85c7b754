"""The restartable planning pipeline: verify -> fingerprint -> plans -> preprocessed cases."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from vessel_seg.atomic import check_writable_location
from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import DatasetError
from vessel_seg.model_folder import check_name_part
from vessel_seg.paths import preprocessed_root, raw_root, resolve_dataset
from vessel_seg.planners.fingerprint import DatasetFingerprint, extract_fingerprint
from vessel_seg.planners.planner import PRESETS, plan_experiment
from vessel_seg.planners.plans import Plans
from vessel_seg.planners.plans_transfer import transferred_plans
from vessel_seg.planners.preprocessing import preprocess_dataset
from vessel_seg.planners.verify import verify_dataset

log = logging.getLogger(__name__)

DEFAULT_PLANS = "vs_plans"
CPU_PLANS = "cpu"


class DatasetProblems(DatasetError):
    """Verification found problems; ``problems`` holds one line per problem."""

    def __init__(self, dataset_dir: Path, problems: list[str]):
        self.problems = problems
        super().__init__(f"{dataset_dir}: {len(problems)} problem(s) found by --verify; fix them and run again")


@dataclass
class PipelineResult:
    plans: Plans
    plans_path: Path
    fingerprint_path: Path
    preprocessed_dirs: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def preset_for(plans_name: str, preset: str | None) -> str:
    """The explicit preset; else the preset named like the plans (``-pl cpu``: the CPU preset); else ``gpu``."""
    if preset is not None:
        return preset
    return plans_name if plans_name in PRESETS else "gpu"


def plan_and_preprocess(
    dataset: str | int,
    configurations: list[str] | None = None,
    verify: bool = False,
    num_workers: int = 1,
    plans_name: str = DEFAULT_PLANS,
    gpu_memory_gb: float = 8.0,
    preset: str | None = None,
    preprocess: bool = True,
    plans_from: Plans | None = None,
) -> PipelineResult:
    """Run the planning pipeline for one raw dataset.

    The fingerprint is reused when ``fingerprint.json`` already exists (delete it to recompute);
    preprocessing skips cases that are already complete, so an interrupted run resumes. With
    ``plans_from``, that model's configurations are used instead of planning (fine-tuning it).
    """
    check_name_part(plans_name, "-pl")  # the plans file is named after it
    name = resolve_dataset(dataset, [raw_root()])
    raw_dir = raw_root() / name
    out_dir = check_writable_location(preprocessed_root() / name)  # before the fingerprint's minutes of work
    seconds: dict[str, float] = {}
    if verify:
        start = time.perf_counter()
        problems = verify_dataset(raw_dir)
        seconds["verify"] = time.perf_counter() - start
        if problems:
            raise DatasetProblems(raw_dir, problems)
        log.info("verify: %s is consistent (%.1f s)", name, seconds["verify"])
    info = DatasetInfo.load(raw_dir / "dataset.json")
    found = len(list((raw_dir / "labelsTr").glob(f"*{info.file_ending}")))
    if found != info.num_training:
        log.warning("%s: numTraining is %d but labelsTr holds %d case(s); planning uses the %d found (fix dataset.json, "
                    "or run with --verify to see every inconsistency)", raw_dir / "dataset.json", info.num_training,
                    found, found)
    fingerprint_path = out_dir / "fingerprint.json"
    start = time.perf_counter()
    if fingerprint_path.is_file():
        fingerprint = DatasetFingerprint.load(fingerprint_path)
        log.info("fingerprint: reusing %s", fingerprint_path)
    else:
        # Reads and checks every case; the output folder appears only once the dataset passed.
        fingerprint = extract_fingerprint(raw_dir, num_workers=num_workers)
        out_dir.mkdir(parents=True, exist_ok=True)
        fingerprint.save(fingerprint_path)
    seconds["fingerprint"] = time.perf_counter() - start
    shutil.copyfile(raw_dir / "dataset.json", out_dir / "dataset.json")

    start = time.perf_counter()
    if plans_from is not None:
        plans = transferred_plans(plans_from, fingerprint, info, name, plans_name)
    else:
        plans = plan_experiment(
            fingerprint, info, name, plans_name=plans_name, preset=preset_for(plans_name, preset),
            gpu_memory_gb=gpu_memory_gb,
        )
    plans_path = plans.save(out_dir / f"{plans_name}.json")
    seconds["plan"] = time.perf_counter() - start
    for config in plans.configurations.values():
        log.info(
            "plan %s: spacing %s, patch %s, batch %d, features %s",
            config.name, [round(s, 3) for s in config.spacing], config.patch_size, config.batch_size,
            config.network.features_per_stage,
        )
    for note in plans.notes:
        log.info("plan note: %s", note)

    result = PipelineResult(plans, plans_path, fingerprint_path, seconds=seconds)
    if preprocess:
        wanted = configurations or list(plans.configurations)
        for config_name in wanted:
            plans.configuration(config_name)  # clear error for an unknown configuration
        start = time.perf_counter()
        result.preprocessed_dirs = preprocess_dataset(raw_dir, out_dir, plans, wanted, num_workers=num_workers)
        seconds["preprocess"] = time.perf_counter() - start
    return result
