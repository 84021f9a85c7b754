"""Predicting raw images with a trained model: preprocess exactly as in training, sliding window,
fold ensemble, cascade, and export in the input's own geometry.

A fold ensemble averages the softmax probabilities of the fold networks (nnU-Net's choice). For
``3d_cascade_fullres`` the ``3d_lowres`` model of the same folds runs first; its segmentation is
resampled onto the full-resolution preprocessed grid and appended as one-hot input channels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vessel_seg.case_store import CaseProperties
from vessel_seg.checkpoint import load_checkpoint
from vessel_seg.dataset import DatasetInfo
from vessel_seg.device import configure_backends, mixed_precision_enabled, select_device
from vessel_seg.errors import CheckpointError, VesselSegError
from vessel_seg.imageio import ImageGeometry
from vessel_seg.inference.cascade import previous_stage_onehot, resample_for_next_stage
from vessel_seg.inference.case_prediction import labels_from_probabilities, predict_labels, predict_probabilities
from vessel_seg.inference.device_prediction import forward_batch_for, plan_prediction, predict_image_on_device
from vessel_seg.model_check import check_weights_match_plans
from vessel_seg.model_folder import checkpoint_path, fold_name
from vessel_seg.networks.resunet import build_network
from vessel_seg.planners.plans import ConfigurationPlan, Plans
from vessel_seg.planners.preprocessing import preprocess_case, restore_to_original

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """Networks of one configuration (one per fold) with the plans they were trained with.

    ``previous_stage`` is the ``3d_lowres`` model (same folds) when this is a cascade stage.
    """

    model_dir: Path
    plans: Plans
    config: ConfigurationPlan
    info: DatasetInfo
    networks: list[nn.Module]
    folds: list[str]
    mirror_axes: tuple[int, ...]
    device: torch.device
    label_values: list[int] = field(default_factory=list)
    previous_stage: TrainedModel | None = None

    @property
    def name(self) -> str:
        """The model folder's name, ``<trainer>__<plans>__<configuration>``."""
        return self.model_dir.name


def available_folds(model_dir: Path, which: str = "final") -> list[str]:
    """Fold names (``"0"``, ``"all"``, ...) that have the requested checkpoint."""
    return sorted(p.parent.name.removeprefix("fold_") for p in Path(model_dir).glob(f"fold_*/checkpoint_{which}.pt"))


def load_trained_model(
    model_dir: str | Path, folds: Sequence[str | int] | None = None, checkpoint: str = "final", device: str = "auto"
) -> TrainedModel:
    """Load the plans and the networks of ``folds`` (default: every fold with that checkpoint).

    A cascade stage also loads its previous stage (sibling folder, same folds and checkpoint).
    Raises :class:`CheckpointError` naming the fold and the model folder when a fold was never trained.
    """
    model_dir = Path(model_dir)
    checkpoint_path(model_dir, checkpoint)  # the name is checked (final/best/latest/epochNNNN) before it is globbed
    if not (model_dir / "plans.json").is_file():
        raise VesselSegError(f"{model_dir}: not a trained model folder (no plans.json); train with vs_train first")
    plans = Plans.load(model_dir / "plans.json")
    config = plans.configuration(model_dir.name.split("__")[-1])
    info = DatasetInfo.load(model_dir / "dataset.json")
    fold_list = [str(f) for f in folds] if folds else available_folds(model_dir, checkpoint)
    if not fold_list:
        raise CheckpointError(f"{model_dir}: no fold has checkpoint_{checkpoint}.pt; train a fold first")
    for fold in fold_list:
        path = checkpoint_path(model_dir / fold_name(fold), checkpoint)
        if not path.is_file():
            trained = ", ".join(available_folds(model_dir, checkpoint)) or "none"
            raise CheckpointError(
                f"{path}: fold {fold} of {model_dir} has no checkpoint_{checkpoint}.pt (trained folds: {trained}); "
                f"train it or choose other folds with -f"
            )
    torch_device = select_device(device)
    configure_backends(torch_device)  # cuDNN autotuning: every tile has the same shape
    networks, mirror_axes = [], ()
    for fold in fold_list:
        path = checkpoint_path(model_dir / fold_name(fold), checkpoint)
        state = load_checkpoint(path, map_location="cpu")
        check_weights_match_plans(config.network, state, path, model_dir / "plans.json")  # on the meta device first
        meta = state["metadata"]
        network = build_network(config.network, int(meta["in_channels"]), int(meta["num_classes"]))
        network.load_state_dict(state["network_weights"])
        network.deep_supervision = False
        networks.append(network.to(torch_device).eval())
        mirror_axes = tuple(int(a) for a in meta.get("mirror_axes", ()))
    previous = None
    if config.previous_stage is not None:
        trainer, plans_name, _ = model_dir.name.split("__")
        previous_dir = model_dir.parent / f"{trainer}__{plans_name}__{config.previous_stage}"
        if not previous_dir.is_dir():
            raise CheckpointError(
                f"{previous_dir}: {config.name} needs the {config.previous_stage} model, which is missing; "
                f"train {config.previous_stage} with the same folds first"
            )
        previous = load_trained_model(previous_dir, fold_list, checkpoint, device)
    return TrainedModel(
        model_dir, plans, config, info, networks, fold_list, mirror_axes, torch_device,
        sorted(plans.labels.values()), previous,
    )


def check_input(model: TrainedModel, images: np.ndarray, geometry: ImageGeometry, case_id: str) -> None:
    """One-line errors for images the model cannot take (channel count, 2D image into a 3D model)."""
    if images.shape[0] != model.info.num_channels:
        raise VesselSegError(
            f"{case_id}: the model {model.name} expects {model.info.num_channels} channel(s), "
            f"the image has {images.shape[0]}; give one file per channel (CASE_0000, CASE_0001, ...)"
        )
    if geometry.ndim == 2 and model.config.dim == 3:
        raise VesselSegError(
            f"{case_id}: a 2D image cannot be segmented by the 3D model {model.name}; use a 2d configuration (-c 2d)"
        )


def preprocess_for_model(
    model: TrainedModel, images: np.ndarray, geometry: ImageGeometry, case_id: str = "case", use_tta: bool = True,
    step: float = 0.5,
) -> tuple[np.ndarray, CaseProperties]:
    """The network input of one raw image: preprocessed channels, plus for a cascade stage the
    one-hot segmentation of the previous stage (predicted here, label map only).

    Returns the float32 ``(C', Z', Y', X')`` input and the properties that map a prediction back.
    ``images`` is only read; nothing here keeps a reference to it.
    """
    check_input(model, images, geometry, case_id)
    data, _, props = preprocess_case(images, None, geometry, model.plans, model.config, case_id)
    if model.previous_stage is not None:
        low = model.previous_stage
        low_data, low_props = preprocess_for_model(low, images, geometry, case_id, use_tta, step)
        low_seg = _predict_labels(low, low_data, use_tta, step)
        del low_data
        seg = resample_for_next_stage(
            low_seg, low_props.spacing, props.shape_after_resampling, props.spacing, model.label_values
        )
        del low_seg
        data = np.concatenate([data, previous_stage_onehot(seg, model.label_values)])
    return data, props


def _predict_labels(
    model: TrainedModel, data: np.ndarray, use_tta: bool, step: float = 0.5, foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Label map in preprocessed space, streamed: no probability volume is allocated (``foreground``: see predict_labels)."""
    tiles, samples = forward_batch_for(model, data.shape[0], use_tta)
    return predict_labels(
        model.networks, data, model.config, model.label_values, model.mirror_axes if use_tta else (),
        model.device, amp=mixed_precision_enabled(model.device, True), step=step, tiles_per_batch=tiles,
        samples_per_forward=samples, foreground=foreground,
    )


# Refines a label map in the input geometry with the uint8 foreground probability kept beside it (restored):
# refine(labels, foreground_uint8, spacing_mm) -> labels (e.g. gap bridging of a recipe).
Refinement = Callable[[np.ndarray, np.ndarray, Sequence[float]], np.ndarray]


def predict_preprocessed(
    model: TrainedModel, images: np.ndarray, geometry: ImageGeometry, case_id: str = "case", use_tta: bool = True,
    step: float = 0.5,
) -> tuple[torch.Tensor, CaseProperties]:
    """Class probabilities of one raw image in the model's preprocessed space.

    Parameters
    ----------
    model : TrainedModel
    images : ndarray, (C, Z, Y, X)
        Raw intensities in the original array order.
    geometry : ImageGeometry
        Geometry of ``images``.
    case_id : str
        Used in messages only.
    use_tta : bool
        Mirror along the axes the model was trained to be invariant to.
    step : float
        Sliding-window step as a fraction of the patch, in ``(0, 1]`` (``vs_predict --step-size``).

    Returns
    -------
    probabilities : Tensor, (K, Z', Y', X'), float16
        Fold-averaged softmax probabilities, one channel per label value in ascending order,
        written slab by slab (no float32 volume is allocated).
    props : CaseProperties
        What it takes to map them back (see :func:`restore_to_original`).
    """
    data, props = preprocess_for_model(model, images, geometry, case_id, use_tta, step)
    del images  # freed here when the caller passed its only reference
    return _predict_probabilities(model, data, use_tta, step), props


def _predict_probabilities(model: TrainedModel, data: np.ndarray, use_tta: bool, step: float = 0.5) -> torch.Tensor:
    """Fold-averaged float16 probabilities in preprocessed space, written slab by slab."""
    tiles, samples = forward_batch_for(model, data.shape[0], use_tta)
    return predict_probabilities(
        model.networks, data, model.config, len(model.label_values), model.mirror_axes if use_tta else (),
        model.device, amp=mixed_precision_enabled(model.device, True), step=step, tiles_per_batch=tiles,
        dtype=torch.float16, samples_per_forward=samples,
    )


def predict_image(
    model: TrainedModel, images: np.ndarray, geometry: ImageGeometry, case_id: str = "case", use_tta: bool = True,
    keep_probabilities: bool = True, step: float = 0.5, refine: Refinement | None = None,
) -> tuple[np.ndarray, torch.Tensor | None]:
    """Segment one raw image ``(C, Z, Y, X)``.

    Returns the label map in the input geometry (shape ``geometry.shape``, the dataset's label
    values) and the float16 class probabilities ``(K, Z', Y', X')`` in preprocessed space, or
    ``None`` without ``keep_probabilities``. Without them the labels are arg-maxed slab by slab
    as the sliding window finishes each slab (the same labels: see
    :func:`~vessel_seg.inference.case_prediction.predict_labels`), so no probability volume
    exists, and the preprocessed input is freed before the label map is resampled back.

    ``images`` is not used after preprocessing: a caller that passes its only reference (e.g.
    ``predict_image(model, holder.pop(), ...)``) gets the raw image freed before the sliding window.

    Peak memory without probabilities, in float32 copies ``V`` of the original volume (``r`` =
    preprocessed / original voxel count, ``C`` channels): the raw ``images`` (``C V``, unless
    released as above) plus the larger of preprocessing (see
    :func:`~vessel_seg.planners.preprocessing.preprocess_case`) and prediction (``C r V`` input +
    ``r V / 4`` uint8 labels + rolling slabs), then the restore (``r V / 4`` + ``V / 2`` of uint8
    label maps + a slab).

    Without probabilities, on a CUDA or MPS device a case that fits in its free memory is predicted
    device-side instead (:mod:`~vessel_seg.inference.device_prediction`: preprocessing, window,
    arg-max and restore on the device, only the uint8 label map copied back; linear instead of
    spline image resampling). ``step`` is the sliding-window step (fraction of the patch, ``(0, 1]``).

    ``refine`` (streamed path only, not with ``keep_probabilities``): called with the label map in the
    input geometry, the foreground probability restored to it as uint8 (kept beside the streamed labels
    as one byte per preprocessed voxel, then resampled like probabilities: half a float32 volume at the
    peak) and the input spacing; its result is returned. Refining after the restore matters: resampling
    a thin bridge back to the input grid can cut it again. It keeps the case on the CPU path, where the
    foreground map is streamed.
    """
    check_input(model, images, geometry, case_id)
    if not keep_probabilities and refine is None:
        plan = plan_prediction(model, images.shape, geometry.spacing, use_tta)
        log.debug("%s: %s", case_id, plan.device_path.reason)
        if plan.device_path.use:
            handed_over = [images]  # the raw image is freed once on the device (if this was its only reference)
            del images
            return predict_image_on_device(model, handed_over.pop(), geometry, case_id, use_tta, step, plan), None
    data, props = preprocess_for_model(model, images, geometry, case_id, use_tta, step)
    del images  # freed here when the caller passed its only reference (see the docstring)
    if keep_probabilities:
        probs = _predict_probabilities(model, data, use_tta, step)
        seg = labels_from_probabilities(probs, model.label_values)
    else:
        foreground = None if refine is None else np.empty(data.shape[1:], np.uint8)
        seg = _predict_labels(model, data, use_tta, step, foreground)
        probs = None
    del data  # the restore below allocates original-size arrays; the input is no longer needed
    if refine is None or keep_probabilities:
        return restore_to_original(seg, props, is_label=True, labels=model.label_values[1:]), probs
    restored_foreground = _restored_foreground(foreground, props, model)
    if len(model.label_values) == 2:
        # One vessel label: threshold the restored probability, as the arg-max of restored probabilities does on
        # the --save-probabilities path; restoring the label map instead cuts thin vessels more often.
        restored = np.where(restored_foreground >= 128, model.label_values[1], 0).astype(seg.dtype)
    else:
        restored = restore_to_original(seg, props, is_label=True, labels=model.label_values[1:])
    return refine(restored, restored_foreground, geometry.spacing), probs


def _restored_foreground(foreground: np.ndarray, props: CaseProperties, model: TrainedModel) -> np.ndarray:
    """The uint8 foreground map of the preprocessed grid resampled to the input grid (as probabilities are).

    Resampled as a background probability (``1 - p``), which :func:`restore_to_original` fills with 1
    outside the crop box, so that the foreground is 0 there.
    """
    background = (255 - foreground).astype(np.float16)[None]
    background /= np.float16(255)
    restored = restore_to_original(background, props, is_label=False, anisotropy_threshold=model.config.anisotropy_threshold)
    return np.round((1.0 - restored[0].astype(np.float32)) * 255).clip(0, 255).astype(np.uint8)


def predict_original_probabilities(
    models: Sequence[TrainedModel], images: np.ndarray, geometry: ImageGeometry, case_id: str = "case",
    use_tta: bool = True, step: float = 0.5,
) -> np.ndarray:
    """Class probabilities ``(K, Z, Y, X)`` float16 in the input geometry, averaged over ``models``.

    Each model's probabilities are restored to the original grid before averaging, so models of
    different configurations (different spacings) can be ensembled.
    """
    total = None
    for model in models:
        probs, props = predict_preprocessed(model, images, geometry, case_id, use_tta, step)
        restored = restore_to_original(
            probs.numpy(), props, is_label=False, anisotropy_threshold=model.config.anisotropy_threshold
        )
        del probs
        restored = restored.astype(np.float32, copy=False)
        total = restored if total is None else np.add(total, restored, out=total)
    total /= len(models)
    return total.astype(np.float16)


def labels_from_original_probabilities(probabilities: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Arg-max of ``(K, Z, Y, X)`` probabilities mapped to the label values (class i -> ``label_values[i]``)."""
    return labels_from_probabilities(torch.from_numpy(np.asarray(probabilities)), label_values)
