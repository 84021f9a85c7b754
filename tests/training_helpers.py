"""Shared helpers for tests that train tiny models (imported by the test modules)."""

from __future__ import annotations

from pathlib import Path

from vessel_seg.planners.plans import Plans
from vessel_seg.trainers.settings import TrainingSettings


def quick(**overrides) -> TrainingSettings:
    """A few iterations in-process: enough to exercise every step of training."""
    values = dict(epochs=1, iterations_per_epoch=2, validation_iterations=1, num_workers=0, checkpoint_every=1)
    values.update(overrides)
    return TrainingSettings(**values)


def add_cascade_plans(preprocessed_dataset_dir: Path, source: str = "cpu", name: str = "cascade") -> Plans:
    """Plans ``name`` with 3d_lowres and 3d_cascade_fullres copied from ``source``'s 3d_fullres.

    Both stages share 3d_fullres's preprocessed data, so a tiny dataset can test the cascade.
    """
    plans = Plans.load(preprocessed_dataset_dir / f"{source}.json")
    low = Plans.load(preprocessed_dataset_dir / f"{source}.json").configuration("3d_fullres")
    low.name, low.next_stage = "3d_lowres", "3d_cascade_fullres"
    cascade = Plans.load(preprocessed_dataset_dir / f"{source}.json").configuration("3d_fullres")
    cascade.name, cascade.previous_stage = "3d_cascade_fullres", "3d_lowres"
    plans.configurations.update({"3d_lowres": low, "3d_cascade_fullres": cascade})
    plans.plans_name = name
    plans.save(preprocessed_dataset_dir / f"{name}.json")
    return plans
