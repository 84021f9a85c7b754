"""``vs_predict`` as a library call: find input cases, predict each, write every output atomically.

Inputs: a folder of nnU-Net-named images (``CASE_0000.ext``, one file per channel), a single image
file (case id = file name without extension and without a ``_0000`` suffix), or a DICOM series
folder (case id = folder name, output ``CASE.nii.gz``). Outputs keep the input's format and
geometry. Per case, extra outputs (probabilities, mesh, centerline, preview) are written first and
the mask last, so a case counts as done once its mask exists: a killed run leaves no partial file
under a real name and a rerun predicts only the cases without a mask (and removes the hidden
temporaries that killed runs left, once they are an hour old). Every case's headers are checked
against the model before the first prediction, so a bad input stops the run before any output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vessel_seg.atomic import check_free_space, remove_stale_temporaries
from vessel_seg.errors import ImageWriteError, VesselSegError
from vessel_seg.imageio import ImageGeometry, write_image
from vessel_seg.inference.case_pipeline import run_overlapped
from vessel_seg.inference.ensemble import save_probabilities
from vessel_seg.inference.prediction_inputs import (
    InputCase,
    PredictionOptions,
    case_mask_path,
    case_output_paths,
    check_inputs,
    check_outputs_spare_inputs,
    check_step_size,
    ensure_writable,
    find_input_cases,
    largest_case_output_bytes,
)
from vessel_seg.inference.predictor import (
    TrainedModel,
    labels_from_original_probabilities,
    predict_image,
    predict_original_probabilities,
)
from vessel_seg.inference.provenance import ProvenanceLog, run_identity
from vessel_seg.inference.vessel_polarity import check_vessel_polarity, oriented
from vessel_seg.inference.vessel_scale import (
    check_vessel_scale,
    predict_fused_probabilities,
    scale_factors,
    scaled_model,
)
from vessel_seg.planners.preprocessing import target_spacing

__all__ = ["PredictionOptions", "find_input_cases", "predict_case", "predict_cases", "predict_folder"]  # options and finder: re-exported

log = logging.getLogger(__name__)



def _write_extras(
    case: InputCase, preview_image: np.ndarray | None, seg: np.ndarray, geometry: ImageGeometry, paths: dict[str, Path],
    options: PredictionOptions,
) -> None:
    """Surface mesh, centerline graph and MIP preview of the foreground (all labels > 0)."""
    # Imported only when asked for: matplotlib and the graph tools cost about a second per process.
    mask = seg > 0
    if (options.mesh or options.centerline) and not mask.any():
        log.warning("%s: no vessel predicted, so no surface mesh or centerline was written", case.case_id)
    elif options.mesh:
        from vessel_seg.inference.surface_mesh import mask_to_surface, write_surface

        surface = mask_to_surface(mask, geometry)
        write_surface(surface, paths["mesh"])
        write_surface(surface, paths["STL mesh"])
    if options.centerline and mask.any():
        from vessel_seg.inference.centerline import extract_centerline, save_centerline

        graph = extract_centerline(mask, geometry)
        save_centerline(graph, paths["centerline"], paths["centerline mesh"])
    if options.preview:
        from vessel_seg.inference.preview import save_mip_preview

        save_mip_preview(preview_image, seg, geometry, paths["preview"], title=case.case_id)


def _postprocess(
    seg: np.ndarray, probs: np.ndarray | None, geometry: ImageGeometry, labels: list[int], options: PredictionOptions,
    bridging: _Bridging,
) -> tuple[np.ndarray, str]:
    """The recipe's postprocessing when there is one, else the default (bridging, debris removal); and a log line.

    ``bridging`` says how wide a gap to bridge and whether that already ran on the streamed
    foreground map (:func:`_streamed_bridging`, after the restore), so that it is not repeated here.
    """
    from vessel_seg.inference.postprocessing import apply_postprocessing, count_components, remove_detached_debris

    if not options.postprocess:
        return seg, "no postprocessing"
    before = count_components(seg) if bridging.done else None
    recipe = getattr(options.recipe, "postprocessing", None)
    if recipe is not None:  # the recipe was measured on this model's validation: it decides, even "none"
        steps = replace(recipe, bridge_gaps_mm=None) if bridging.done else recipe  # bridged already (streamed)
        before = before if before is not None else count_components(seg)
        foreground = None if probs is None else 1.0 - probs[0].astype(np.float32)
        out = seg if steps.is_identity else apply_postprocessing(seg, steps, geometry.spacing, labels, probabilities_fg=foreground)
        return out, f"{bridging.counted(before)} -> {count_components(out)} component(s) (recipe: {recipe.describe()})"
    if not bridging.done and probs is not None and bridging.max_gap_mm is not None:
        from vessel_seg.inference.postprocessing import bridge_gaps

        before = count_components(seg)
        seg = bridge_gaps(seg, 1.0 - probs[0].astype(np.float32), geometry.spacing, bridging.max_gap_mm)
    out, report = remove_detached_debris(seg, geometry.spacing)
    first = report.components_before if before is None else bridging.counted(before)
    return out, (f"{first} -> {report.components_after} component(s) (default: {bridging.describe()}removed "
                 f"{report.voxels_removed} voxel(s) of small debris far from the tree)")


@dataclass(frozen=True)
class _Bridging:
    """The gap bridging of a case: widest gap (mm, None: none) and whether the streamed prediction already did it."""

    max_gap_mm: float | None = None
    done: bool = False
    components_before: int | None = None  # before the streamed bridging

    def counted(self, after_bridging: int) -> int:
        return self.components_before if self.components_before is not None else after_bridging

    def describe(self) -> str:
        return "" if self.max_gap_mm is None else f"bridged gaps <= {self.max_gap_mm:.3g} mm along the vessels, "


@dataclass
class _LoadedCase:
    """A case read from disk; ``images`` holds the only reference to the raw image until handed over."""

    images: list[np.ndarray]
    geometry: ImageGeometry
    preview_image: np.ndarray | None


@dataclass
class _PredictedCase:
    seg: np.ndarray
    probs: np.ndarray | None
    geometry: ImageGeometry
    preview_image: np.ndarray | None
    bridging: _Bridging = _Bridging()


def _read_case(case: InputCase, options: PredictionOptions) -> _LoadedCase:
    images, geometry = case.read()
    preview = images[0] if options.preview else None  # the image as the user sees it, not as oriented
    # The predictor gets the only reference to the raw image, so it can free it once preprocessed
    # (one volume less at the peak); the preview keeps its own channel view.
    return _LoadedCase([oriented(images, options.vessel_polarity)], geometry, preview)


def _predict_loaded(models: Sequence[TrainedModel], case: InputCase, loaded: _LoadedCase, options: PredictionOptions) -> _PredictedCase:
    geometry, labels = loaded.geometry, models[0].label_values
    probs = None
    bridge_mm = bridging_gap_mm(options, models[0], geometry)
    factors = scale_factors(options.vessel_scale, geometry)
    if len(factors) > 1:
        probs = predict_fused_probabilities(models[0], loaded.images.pop(), geometry, case.case_id, options.use_tta,
                                            options.step_size, factors)
        seg = labels_from_original_probabilities(probs, labels)
        return _PredictedCase(seg, probs, geometry, loaded.preview_image, _Bridging(bridge_mm))
    models = [scaled_model(model, factors[0]) for model in models]
    if len(models) == 1 and not options.save_probabilities:
        counts: list[int] = []
        refine = None if bridge_mm is None else _streamed_bridging(bridge_mm, counts)
        seg, _ = predict_image(
            models[0], loaded.images.pop(), geometry, case.case_id, options.use_tta, keep_probabilities=False,
            step=options.step_size, refine=refine,
        )
        bridging = _Bridging(bridge_mm, refine is not None, counts[0] if counts else None)
        return _PredictedCase(seg, None, geometry, loaded.preview_image, bridging)
    probs = predict_original_probabilities(
        models, loaded.images.pop(), geometry, case.case_id, options.use_tta, options.step_size
    )
    seg = labels_from_original_probabilities(probs, labels)
    return _PredictedCase(seg, probs, geometry, loaded.preview_image, _Bridging(bridge_mm))


# Default gap bridging (no recipe): gaps up to this many voxels of the model's coarsest axis. The
# breaks a network leaves in thin vessels are one or two voxels wide (held-out synthetic CT,
# 2026-11-30: every fragment left after debris removal sat 1-1.5 mm, 1-2 voxels, from the tree).
DEFAULT_BRIDGE_GAP_VOXELS = 3.0


def bridging_gap_mm(options: PredictionOptions, model: TrainedModel, geometry: ImageGeometry) -> float | None:
    """Widest gap (mm) bridged: the recipe's when there is a recipe, else the default's; None without postprocessing.

    The default counts voxels of the model's coarsest axis in this image (a modality-free model's
    voxels are the image's own finest spacing, not fixed millimetres).
    """
    if not options.postprocess:
        return None
    recipe = getattr(options.recipe, "postprocessing", None)
    if recipe is not None:
        return recipe.bridge_gaps_mm
    config = model.config
    spacing = config.spacing
    if config.spacing_mode != "mm":
        spacing = target_spacing(config, geometry.spacing, geometry.shape)[-config.dim:]
    return DEFAULT_BRIDGE_GAP_VOXELS * max(float(s) for s in spacing)


def _streamed_bridging(max_gap_mm: float, components_before: list[int]):
    """Gap bridging in the input geometry from the uint8 foreground map the streamed predictor keeps (restored).

    Appends the component count before bridging to ``components_before`` (for the log line).
    """
    from vessel_seg.inference.postprocessing import bridge_gaps, count_components

    def refine(seg: np.ndarray, foreground: np.ndarray, spacing) -> np.ndarray:
        components_before.append(count_components(seg))
        return bridge_gaps(seg, foreground, spacing, max_gap_mm)

    return refine


def _write_case(labels: list[int], case: InputCase, predicted: _PredictedCase, output_dir: Path, options: PredictionOptions) -> None:
    """Postprocess and write one case's outputs (extras first, the mask last)."""
    geometry, probs = predicted.geometry, predicted.probs
    seg, postprocessed = _postprocess(predicted.seg, probs, geometry, labels, options, predicted.bridging)
    paths = case_output_paths(case, output_dir, options)
    if options.save_probabilities:
        save_probabilities(paths["probabilities"], probs, labels, geometry, case.file_ending)
    predicted.probs = probs = None
    _write_extras(case, predicted.preview_image, seg, geometry, paths, options)
    write_image(seg, geometry, paths["mask"])
    log.info("%s: %s", case.case_id, postprocessed)  # after the write: a failed write stays a one-line error


def predict_case(
    models: Sequence[TrainedModel], case: InputCase, output_dir: Path, options: PredictionOptions
) -> None:
    """Predict one case and write its outputs (extras first, the mask last)."""
    predicted = _predict_loaded(models, case, _read_case(case, options), options)
    _write_case(models[0].label_values, case, predicted, output_dir, options)


@contextmanager
def _one_line_os_errors(case: InputCase, output_dir: Path) -> Iterator[None]:
    """An ``OSError`` without its own message (mesh, preview writers) as a one-line :class:`ImageWriteError`."""
    try:
        yield
    except OSError as exc:
        raise ImageWriteError(
            f"{output_dir}: cannot write the outputs of case {case.case_id!r} ({exc.strerror or exc}); "
            "check free space and permissions"
        ) from exc


def _postprocessing_name(options: PredictionOptions) -> str:
    """What postprocessing the masks get, as text for the run identity."""
    if not options.postprocess:
        return "none"
    recipe = getattr(options.recipe, "postprocessing", None)
    return f"recipe: {recipe.describe()}" if recipe is not None else "default: directed gap bridging, debris removal"


def _cases_to_predict(
    cases: Sequence[InputCase], output_dir: Path, overwrite: bool, provenance: ProvenanceLog, identity: str,
) -> list[InputCase]:
    """Cases without a mask, or whose mask another model or setting made (all of them with ``overwrite``)."""
    if overwrite:
        return list(cases)
    existing = [c for c in cases if case_mask_path(c, output_dir).exists()]
    reused = [c for c in existing if provenance.made_by(c.case_id, identity)]
    stale = [c for c in existing if c not in reused]
    if reused:
        log.info("%d of %d case(s) already predicted in %s by this model and settings, reused (--overwrite redoes them)",
                 len(reused), len(cases), output_dir)
    if stale:
        log.info("%d case(s) in %s were predicted by another model or other settings (e.g. %s): predicting them again",
                 len(stale), output_dir, stale[0].case_id)
    return [c for c in cases if c not in reused]


def predict_cases(
    models: Sequence[TrainedModel], input_path: str | Path, output_dir: str | Path, options: PredictionOptions | None = None,
) -> dict[str, float]:
    """Predict every case under ``input_path`` into ``output_dir``; returns seconds per predicted case.

    ``models`` (one per configuration) are ensembled by averaging their probabilities in the input
    geometry. A case whose mask exists is skipped when the same model and settings made it
    (:mod:`~vessel_seg.inference.provenance`), else predicted again; ``options.overwrite`` redoes all. The seconds of
    a case add its reading, prediction and writing; with ``options.overlap_io`` those of
    neighbouring cases run at the same time, and the outputs and errors are those of a sequential run.
    """
    options = options or PredictionOptions()
    check_step_size(options.step_size)
    if not models:
        raise VesselSegError("no model to predict with")
    if len({tuple(m.label_values) for m in models}) > 1:
        raise VesselSegError(f"models {', '.join(m.name for m in models)} have different labels; they cannot be ensembled")
    cases = find_input_cases(input_path, models[0].info.num_channels)
    if options.num_parts > 1:  # sorted by id, so every part sees the same list and takes its own share
        cases = cases[options.part_id :: options.num_parts]
        log.info("part %d of %d: %d case(s)", options.part_id, options.num_parts, len(cases))
    output_dir = Path(output_dir)
    check_outputs_spare_inputs(cases, output_dir, options)
    provenance = ProvenanceLog(output_dir, options.part_id, options.num_parts)
    check_vessel_scale(options.vessel_scale, models)
    check_vessel_polarity(options.vessel_polarity, models)
    identity = run_identity(models, options.use_tta, options.step_size, _postprocessing_name(options),
                            options.vessel_scale, options.vessel_polarity)
    todo = _cases_to_predict(cases, output_dir, options.overwrite, provenance, identity)
    geometries = check_inputs(models, todo)
    needed = largest_case_output_bytes(list(geometries.values()), len(models[0].label_values), options)
    check_free_space(output_dir, needed, "prediction")
    output_dir = ensure_writable(output_dir)  # created only once every check has passed
    remove_stale_temporaries(output_dir)
    overlap = options.overlap_io if options.overlap_io is not None else any(m.device.type != "cpu" for m in models)
    seconds: dict[str, float] = {}

    def timed(stage, case, *args):  # stage(*args) with one-line OS errors, its seconds added to the case's
        start = time.perf_counter()
        with _one_line_os_errors(case, output_dir):
            result = stage(*args)
        seconds[case.case_id] = seconds.get(case.case_id, 0.0) + time.perf_counter() - start
        return result

    # Log lines go above the bar (through tqdm) instead of through it.
    with logging_redirect_tqdm(), tqdm(total=len(todo), desc="predicting", unit="case", disable=None) as bar:

        def store(case: InputCase, predicted: _PredictedCase) -> None:
            timed(_write_case, case, models[0].label_values, case, predicted, output_dir, options)
            provenance.record(case.case_id, identity)
            log.debug("%s: %.1f s", case.case_id, seconds[case.case_id])
            bar.update()

        run_overlapped(
            todo,
            lambda case: timed(_read_case, case, case, options),
            lambda case, loaded: timed(_predict_loaded, case, models, case, loaded, options),
            store,
            overlap,
        )
    return seconds


def predict_folder(
    model: TrainedModel, input_dir: str | Path, output_dir: str | Path, use_tta: bool = True, overwrite: bool = False
) -> dict[str, float]:
    """Segment every case in a folder named like nnU-Net's ``imagesTs``; returns seconds per case.

    Cases whose output the same model and settings already wrote are skipped unless ``overwrite``
    (others are predicted again); each output is written atomically, so a killed run leaves only
    complete files and a rerun finishes the rest.
    """
    start = time.perf_counter()
    seconds = predict_cases([model], input_dir, output_dir, PredictionOptions(use_tta=use_tta, overwrite=overwrite))
    log.debug("predict_folder: %.1f s", time.perf_counter() - start)
    return seconds


def track_cases(
    models: Sequence[TrainedModel], input_path: str | Path, output_dir: str | Path, seeds: list,
    options: PredictionOptions | None = None, max_steps: int = 5000,
) -> dict[str, float]:
    """Tracking mode of ``vs_predict`` (``--seed``): follow the vessels of the one case under ``input_path`` from
    ``seeds`` (:mod:`~vessel_seg.inference.tracking`) and write the same outputs as full-volume prediction.

    Returns seconds per case. The mask is connected to the seeds by construction, so no postprocessing runs;
    ``models[0]`` tracks (its folds are averaged per patch).
    """
    from vessel_seg.inference.tracking import TrackingOptions, track_vessels

    options = options or PredictionOptions()
    model = models[0]
    cases = find_input_cases(input_path, model.info.num_channels)
    if len(cases) != 1:
        raise VesselSegError(f"{input_path}: tracking follows seeds in one image, found {len(cases)} cases; give one image")
    check_inputs(models, cases)
    check_vessel_polarity(options.vessel_polarity, models)
    output_dir = Path(output_dir)
    check_outputs_spare_inputs(cases, output_dir, options)
    output_dir.mkdir(parents=True, exist_ok=True)
    case = cases[0]
    start = time.perf_counter()
    loaded = _read_case(case, options)
    result = track_vessels(model, loaded.images[0], loaded.geometry, seeds,
                           TrackingOptions(max_steps=max_steps, use_tta=options.use_tta))
    predicted = _PredictedCase(result.mask, None, loaded.geometry, loaded.preview_image)
    with _one_line_os_errors(case, output_dir):
        _write_case(model.label_values, case, predicted, output_dir, replace(options, postprocess=False,
                                                                            save_probabilities=False))
        # The record says tracking made this mask (seeds and step limit included), so a later full-volume run into
        # the same folder predicts the case again instead of keeping a traced mask.
        seeds_text = ";".join(f"{s.point_mm}/{s.radius_mm}" for s in seeds)
        identity = run_identity(models[:1], options.use_tta, options.step_size,
                                f"tracking seeds={seeds_text} max_steps={max_steps}")
        ProvenanceLog(output_dir).record(case.case_id, identity)
    return {case.case_id: time.perf_counter() - start}
