"""Predicting raw images with a trained model: preprocess exactly as in training, sliding window,
fold ensemble, and export in the input's own geometry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vessel_seg.checkpoint import load_checkpoint
from vessel_seg.dataset import DatasetInfo, list_cases
from vessel_seg.device import mixed_precision_enabled, select_device
from vessel_seg.errors import CheckpointError, VesselSegError
from vessel_seg.imageio import ImageGeometry, read_image, write_image
from vessel_seg.inference.case_prediction import labels_from_probabilities, predict_probabilities
from vessel_seg.model_folder import checkpoint_path, fold_name
from vessel_seg.networks.resunet import build_network
from vessel_seg.planners.plans import ConfigurationPlan, Plans
from vessel_seg.planners.preprocessing import preprocess_case, restore_to_original

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """Networks of one configuration (one per fold) with the plans they were trained with."""

    model_dir: Path
    plans: Plans
    config: ConfigurationPlan
    info: DatasetInfo
    networks: list[nn.Module]
    folds: list[str]
    mirror_axes: tuple[int, ...]
    device: torch.device
    label_values: list[int] = field(default_factory=list)


def available_folds(model_dir: Path, which: str = "final") -> list[str]:
    """Fold names (``"0"``, ``"all"``, ...) that have the requested checkpoint."""
    return sorted(p.parent.name.removeprefix("fold_") for p in model_dir.glob(f"fold_*/checkpoint_{which}.pt"))


def load_trained_model(
    model_dir: str | Path, folds: Sequence[str | int] | None = None, checkpoint: str = "final", device: str = "auto"
) -> TrainedModel:
    """Load the plans and the networks of ``folds`` (default: every fold with that checkpoint)."""
    model_dir = Path(model_dir)
    if not (model_dir / "plans.json").is_file():
        raise VesselSegError(f"{model_dir}: not a trained model folder (no plans.json); train with vs_train first")
    plans = Plans.load(model_dir / "plans.json")
    config_name = model_dir.name.split("__")[-1]
    config = plans.configuration(config_name)
    info = DatasetInfo.load(model_dir / "dataset.json")
    fold_list = [str(f) for f in folds] if folds else available_folds(model_dir, checkpoint)
    if not fold_list:
        raise CheckpointError(f"{model_dir}: no fold has checkpoint_{checkpoint}.pt; train a fold first")
    torch_device = select_device(device)
    networks, mirror_axes = [], ()
    for fold in fold_list:
        state = load_checkpoint(checkpoint_path(model_dir / fold_name(fold), checkpoint), map_location="cpu")
        meta = state.get("metadata", {})
        network = build_network(config.network, int(meta["in_channels"]), int(meta["num_classes"]))
        network.load_state_dict(state["network_weights"])
        network.deep_supervision = False
        networks.append(network.to(torch_device).eval())
        mirror_axes = tuple(int(a) for a in meta.get("mirror_axes", ()))
    return TrainedModel(
        model_dir, plans, config, info, networks, fold_list, mirror_axes, torch_device, sorted(plans.labels.values())
    )


def predict_image(
    model: TrainedModel, images: np.ndarray, geometry: ImageGeometry, case_id: str = "case",
    use_tta: bool = True, extra_channels: np.ndarray | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """Segment one raw image ``(C, Z, Y, X)``; returns the label map in the input geometry and the
    class probabilities in preprocessed space."""
    if images.shape[0] != model.info.num_channels:
        raise VesselSegError(
            f"{case_id}: the model expects {model.info.num_channels} channel(s), the image has {images.shape[0]}"
        )
    if geometry.ndim == 2 and model.config.dim == 3:
        raise VesselSegError(f"{case_id}: a 2D image cannot be segmented by a 3D model; use a 2d configuration")
    data, _, props = preprocess_case(images, None, geometry, model.plans, model.config, case_id)
    if extra_channels is not None:
        data = np.concatenate([data, extra_channels])
    probs = predict_probabilities(
        model.networks, data, model.config, len(model.label_values), model.mirror_axes if use_tta else (),
        model.device, amp=mixed_precision_enabled(model.device, True),
    )
    seg = labels_from_probabilities(probs, model.label_values)
    restored = restore_to_original(seg, props, is_label=True, labels=model.label_values[1:])
    return restored, probs


def predict_folder(
    model: TrainedModel, input_dir: str | Path, output_dir: str | Path, use_tta: bool = True, overwrite: bool = False
) -> dict[str, float]:
    """Segment every case in a folder named like nnU-Net's ``imagesTs``; returns seconds per case.

    Cases whose output already exists are skipped unless ``overwrite``; each output is written
    atomically, so a killed run leaves only complete files and a rerun finishes the rest.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for case in list_cases(input_dir, model.info):
        target = output_dir / f"{case.case_id}{model.info.file_ending}"
        if target.exists() and not overwrite:
            log.info("%s exists, skipped", target)
            continue
        start = time.perf_counter()
        images, geometry = read_image(case.images)
        seg, _ = predict_image(model, images, geometry, case.case_id, use_tta)
        write_image(seg, geometry, target)
        seconds[case.case_id] = time.perf_counter() - start
        log.info("%s: %.1f s", case.case_id, seconds[case.case_id])
    return seconds
