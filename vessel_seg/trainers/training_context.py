"""What one training job works on: its request, resolved paths, plans, cases and model folder."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from vessel_seg.case_store import list_cases
from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import DatasetError, PlansError, VesselSegError
from vessel_seg.model_folder import DEFAULT_TRAINER, check_name_part, fold_name, model_dir
from vessel_seg.paths import preprocessed_root, raw_root, resolve_dataset
from vessel_seg.planners.plans import ConfigurationPlan, Plans
from vessel_seg.trainers.settings import TrainingSettings


@dataclass
class TrainingJob:
    dataset: str | int
    configuration: str
    fold: int | str
    plans_name: str = "vs_plans"
    settings: TrainingSettings | None = None
    resume: bool = False
    pretrained: Path | None = None
    trainer_name: str = DEFAULT_TRAINER
    # "final" or "best": no training, only the final full-volume validation of that checkpoint (nnU-Net's --val).
    validate_only: str | None = None


class TrainingContext:
    """Resolved paths, plans and data folders of one job."""

    def __init__(self, job: TrainingJob):
        check_name_part(job.plans_name, "-pl")  # joined into paths below: never '..' or a separator
        check_name_part(job.trainer_name, "-tr")
        self.dataset_name = resolve_dataset(job.dataset, [preprocessed_root(), raw_root()])
        self.preprocessed_dir = preprocessed_root() / self.dataset_name
        self.plans = Plans.load(self.preprocessed_dir / f"{job.plans_name}.json")
        self.config: ConfigurationPlan = self.plans.configuration(job.configuration)
        self.info = DatasetInfo.load(self.preprocessed_dir / "dataset.json")
        if self.plans.labels != self.info.labels:
            raise PlansError(
                f"{self.preprocessed_dir / f'{job.plans_name}.json'}: labels {self.plans.labels} differ from "
                f"dataset.json's {self.info.labels}; re-run vs_plan_and_preprocess"
            )
        self.data_dir = self.preprocessed_dir / self.config.data_identifier
        self.case_ids = list_cases(self.data_dir)
        if not self.case_ids:
            raise DatasetError(
                f"{self.data_dir}: no preprocessed cases; run vs_plan_and_preprocess -d {job.dataset} "
                f"-pl {job.plans_name} -c {job.configuration}"
            )
        self.model_dir = model_dir(self.dataset_name, job.configuration, job.plans_name, job.trainer_name)
        self.fold_dir = self.model_dir / fold_name(job.fold)
        self.label_values = sorted(self.plans.labels.values())
        self.previous_stage_dir = self._previous_stage_dir(job)

    def _previous_stage_dir(self, job: TrainingJob) -> Path | None:
        previous = self.config.previous_stage
        if previous is None:
            return None
        folder = (
            model_dir(self.dataset_name, previous, job.plans_name, job.trainer_name)
            / fold_name(job.fold) / "predicted_next_stage" / self.config.name
        )
        missing = [c for c in self.case_ids if not (folder / f"{c}.npy").is_file()]
        if missing:
            raise VesselSegError(
                f"{folder}: the {previous} predictions of fold {job.fold} are missing for {len(missing)} case(s) "
                f"(e.g. {missing[0]}); train the previous stage first: vs_train {job.dataset} {previous} {job.fold}"
            )
        return folder


def copy_model_files(ctx: TrainingContext) -> None:
    """Plans, dataset.json and fingerprint.json into the model folder, so it predicts on its own."""
    ctx.model_dir.mkdir(parents=True, exist_ok=True)
    ctx.plans.save(ctx.model_dir / "plans.json")
    for name in ("dataset.json", "fingerprint.json"):
        if (ctx.preprocessed_dir / name).is_file():
            shutil.copyfile(ctx.preprocessed_dir / name, ctx.model_dir / name)
