"""Shared helpers for tests that train tiny models (imported by the test modules)."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vessel_seg.dataset import DatasetInfo
from vessel_seg.inference.predictor import TrainedModel
from vessel_seg.planners.plans import ChannelIntensity, ConfigurationPlan, NetworkTopology, Plans
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


# ------------------------------------------------------------------ a hand-built model (no training)


class ThresholdNet(nn.Module):
    """Mean of the 3x3x3 neighbourhood ``s`` -> logits (0, 4 (s - 0.5), 8 (s - 1.5)): three intensity classes."""

    def __init__(self):
        super().__init__()
        self.smooth = nn.Conv3d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.smooth.weight, 1.0 / 27)

    def forward(self, x):
        s = self.smooth(x)
        return torch.cat([torch.zeros_like(s), 4 * (s - 0.5), 8 * (s - 1.5)], dim=1)


def threshold_model(order: int = 3, label_values=(0, 1, 5), patch=(16, 24, 24), network=None) -> TrainedModel:
    """A hand-built 3d_fullres model at 1 mm (CT normalisation: intensity / 100) around ``network``."""
    topology = NetworkTopology(3, [4], [[3, 3, 3]], [[1, 1, 1]], [1], [], deep_supervision=False)
    labels = {"background": 0, **{f"l{v}": int(v) for v in label_values[1:]}}
    config = ConfigurationPlan(
        "3d_fullres", "t_3d_fullres", [1.0, 1.0, 1.0], [30, 40, 40], list(patch), 2, ["ct"], topology,
        resampling_order_image=order,
    )
    stats = {"0": ChannelIntensity(mean=0.0, std=100.0, percentile_00_5=-1000.0, percentile_99_5=1000.0)}
    plans = Plans("Dataset009_T", "t", "cpu", 8.0, [1.0] * 3, [30, 40, 40], labels, {"0": "CT"}, ".nii.gz", stats,
                  {"3d_fullres": config})
    info = DatasetInfo({"0": "CT"}, labels, 1, ".nii.gz")
    net = (network or ThresholdNet()).eval()
    return TrainedModel(Path("/models/vsTrainer__t__3d_fullres"), plans, config, info, [net], ["0"], (0, 1, 2),
                        torch.device("cpu"), list(label_values))


def read_vtp(path) -> dict[str, np.ndarray]:
    """Minimal reader for our inline-binary VTP files (UInt64 header, uncompressed)."""
    arrays = {}
    types = {"Float32": "<f4", "Float64": "<f8", "Int64": "<i8", "Int32": "<i4"}
    for node in ET.parse(path).getroot().iter("DataArray"):
        text = node.text.strip()
        size = np.frombuffer(base64.b64decode(text[:12]), "<u8")[0]
        data = np.frombuffer(base64.b64decode(text[12:]), types[node.get("type")])
        assert data.nbytes == size
        arrays[node.get("Name")] = data.reshape(-1, int(node.get("NumberOfComponents", 1)))
    return arrays
