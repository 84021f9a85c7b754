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
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vessel_seg.atomic import check_free_space, check_writable_location, remove_stale_temporaries
from vessel_seg.errors import DatasetError, ImageReadError, ImageWriteError, VesselSegError
from vessel_seg.imageio import (
    ImageGeometry,
    image_extension,
    read_dicom_series,
    read_geometry,
    read_image,
    strip_extension,
    write_image,
)
from vessel_seg.inference.case_pipeline import run_overlapped
from vessel_seg.inference.ensemble import PROBABILITY_SUFFIX, save_probabilities
from vessel_seg.inference.input_checks import check_case_headers, check_channel_files
from vessel_seg.inference.predictor import (
    TrainedModel,
    labels_from_original_probabilities,
    predict_image,
    predict_original_probabilities,
)
from vessel_seg.planners.resampling import resampling_problem

log = logging.getLogger(__name__)

CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
DICOM_OUTPUT_ENDING = ".nii.gz"


@dataclass
class InputCase:
    """One case to predict: channel files in channel order (or a DICOM folder) and the output ending."""

    case_id: str
    files: list[Path]
    file_ending: str
    dicom: bool = False

    def read(self) -> tuple[np.ndarray, ImageGeometry]:
        if self.dicom:
            data, geometry = read_dicom_series(self.files[0])
            return data[None].astype(np.float32, copy=False), geometry
        return read_image(self.files)


@dataclass
class PredictionOptions:
    """What to write and how (see ``vs_predict --help``).

    ``step_size``: sliding-window step as a fraction of the patch, in ``(0, 1]``. ``overlap_io``:
    read the next case and write the previous one in background threads while a case is
    predicted (:func:`~vessel_seg.inference.case_pipeline.run_overlapped`); ``None`` = on when a
    model runs on a GPU (CUDA, MPS), off on the CPU, where it would add a case to the memory peak
    and the cores are busy anyway.
    """

    use_tta: bool = True
    overwrite: bool = False
    save_probabilities: bool = False
    mesh: bool = False
    centerline: bool = False
    preview: bool = False
    recipe: Any = None
    step_size: float = 0.5
    overlap_io: bool | None = None
    # The recipe's postprocessing, or without one the default debris removal
    # (postprocessing.remove_detached_debris); False: the network's mask as it is.
    postprocess: bool = True


def check_step_size(value: object) -> float:
    """``value`` as a tile step in ``(0, 1]``, else a one-line :class:`VesselSegError`."""
    try:
        step = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        step = math.nan
    if not 0 < step <= 1:
        raise VesselSegError(
            f"--step-size must be a number in (0, 1] (tile step as a fraction of the patch; 0.5 = half-overlapping "
            f"tiles, 1 = no overlap), got {value!r}"
        )
    return step


def _is_dicom_folder(folder: Path) -> bool:
    return any(p.suffix.lower() == ".dcm" for p in folder.iterdir() if p.is_file())


def find_input_cases(path: str | Path, num_channels: int) -> list[InputCase]:
    """The cases under ``path`` (file, nnU-Net images folder or DICOM series folder), sorted by id."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: input not found; give an image file, a folder of CASE_0000 images or a DICOM folder")
    if path.is_file():
        ending = image_extension(path)
        if ending is None:
            if path.suffix.lower() == ".dcm":
                return [InputCase(path.parent.name, [path.parent], DICOM_OUTPUT_ENDING, dicom=True)]
            raise DatasetError(f"{path}: not a supported image file (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd, DICOM)")
        match = CHANNEL_RE.match(strip_extension(path))
        if match is None:
            return [InputCase(strip_extension(path), [path], ending)]
        case_id = match["case"]
        files = [path.parent / f"{case_id}_{c:04d}{path.name[-len(ending):]}" for c in range(num_channels)]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DatasetError(
                f"{missing[0]}: channel file of case {case_id!r} is missing (the model expects {num_channels} "
                "channels); add the file"
            )
        return [InputCase(case_id, files, ending)]
    images = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".") and image_extension(p)]
    if not images:
        if _is_dicom_folder(path):
            return [InputCase(path.name, [path], DICOM_OUTPUT_ENDING, dicom=True)]
        raise DatasetError(f"{path}: no images found (expected CASE_0000.nii.gz-style files or a DICOM series)")
    by_case: dict[str, dict[int, Path]] = {}
    for image in images:
        match = CHANNEL_RE.match(strip_extension(image))
        if match is None:
            raise DatasetError(f"{image}: image names in a folder must end in _NNNN (4-digit channel), e.g. case_0000.nii.gz")
        channels = by_case.setdefault(match["case"], {})
        channel = int(match["channel"])
        if channel in channels:
            raise DatasetError(
                f"{image}: channel {channel} of case {match['case']!r} is also given by {channels[channel].name}; "
                "keep one file per case and channel"
            )
        channels[channel] = image
    cases = []
    for case_id, channels in sorted(by_case.items()):
        ending = image_extension(next(iter(channels.values()))) or ""
        missing = [c for c in range(num_channels) if c not in channels]
        if missing:
            raise DatasetError(
                f"{path / f'{case_id}_{missing[0]:04d}{ending}'}: channel {missing[0]} of case {case_id!r} is missing "
                f"(the model expects channels {list(range(num_channels))}); add the file or remove the case"
            )
        # Files in channel order; channels beyond the model's are kept so that the check names them.
        files = [channels[c] for c in sorted(channels)]
        cases.append(InputCase(case_id, files, ending))
    return cases


def check_inputs(models: Sequence[TrainedModel], cases: Sequence[InputCase]) -> None:
    """Header checks of every case against the models before any prediction (see ``input_checks``)."""
    model_dims = {m.name: m.config.dim for m in models}
    num_channels = models[0].info.num_channels
    for case in cases:
        check_channel_files(case.case_id, case.files, num_channels, models[0].name)
        if not case.dicom:
            geometry = check_case_headers(case.files, model_dims)
            check_resampling(case.files[0], geometry, models)


def _largest_case_output_bytes(cases: Sequence[InputCase], num_classes: int, options: PredictionOptions) -> float:
    """Upper bound of what one case writes (uint8 mask, float16 probabilities), uncompressed; cases go one at a time."""
    per_voxel = 1 + (2 * num_classes if options.save_probabilities else 0)
    sizes = [float(np.prod(read_geometry(c.files[0]).shape)) for c in cases if not c.dicom]
    return max(sizes, default=0.0) * per_voxel


def check_resampling(path: Path, geometry: ImageGeometry, models: Sequence[TrainedModel]) -> None:
    """Refuse a header spacing that would blow the image up absurdly at a model's spacing (one line, the file)."""
    for model in models:
        target = list(model.config.spacing)
        if len(target) < len(geometry.spacing):  # a 2d configuration keeps the slice axis
            target = list(geometry.spacing[: len(geometry.spacing) - len(target)]) + target
        problem = resampling_problem(geometry.shape, geometry.spacing, target)
        if problem:
            raise ImageReadError(f"{path}: {problem}, the spacing of model {model.name}; check the spacing in the header")


def check_output_location(folder: str | Path) -> Path:
    """Raise an error unless ``folder`` could be created and written; creates nothing (the CLI's early ``-o`` check)."""
    folder = Path(folder)
    if folder.exists():
        return ensure_writable(folder)
    return check_writable_location(folder, "choose another -o")


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be created in it (before any work starts)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ImageWriteError(f"{folder}: output folder is not writable ({exc.strerror or exc}); choose another -o") from exc
    return folder


def _case_outputs(case: InputCase, output_dir: Path) -> Path:
    return output_dir / f"{case.case_id}{case.file_ending}"


def case_output_paths(case: InputCase, output_dir: Path, options: PredictionOptions) -> dict[str, Path]:
    """Every file this run writes for ``case``, by kind; the writers take their paths from here."""
    stem = output_dir / case.case_id
    paths = {"mask": _case_outputs(case, output_dir)}
    if options.save_probabilities:
        paths["probabilities"] = stem.with_name(f"{case.case_id}{PROBABILITY_SUFFIX}")
    if options.mesh:
        paths["mesh"] = stem.with_name(f"{case.case_id}.vtp")
        paths["STL mesh"] = stem.with_name(f"{case.case_id}.stl")
    if options.centerline:
        paths["centerline"] = stem.with_name(f"{case.case_id}_centerline.json")
        paths["centerline mesh"] = stem.with_name(f"{case.case_id}_centerline.vtp")
    if options.preview:
        paths["preview"] = stem.with_name(f"{case.case_id}_preview.png")
    return paths


def _real(path: Path) -> str:
    """``path`` with symbolic links and ``..`` resolved (it need not exist): what a write would reach."""
    return os.path.realpath(path)


def check_outputs_spare_inputs(cases: Sequence[InputCase], output_dir: str | Path, options: PredictionOptions) -> None:
    """Raise :class:`DatasetError` if any output of this run would replace an input image or another output.

    Compares resolved paths, so ``-o`` spelled through ``..`` or a symbolic link is caught; a DICOM
    input is a folder, and no output may be written inside it. Runs before anything is created.
    """
    output_dir = Path(output_dir)
    inputs = {_real(f): (case, f) for case in cases for f in case.files}
    dicom_folders = [(_real(case.files[0]), case) for case in cases if case.dicom]
    written: dict[str, str] = {}
    for case in cases:
        for kind, path in case_output_paths(case, output_dir, options).items():
            real = _real(path)
            hit = inputs.get(real)
            if hit is not None:
                raise DatasetError(
                    f"{hit[1]}: input image of case {hit[0].case_id!r} would be overwritten by the {kind} of case "
                    f"{case.case_id!r}; give -o a folder that holds no input images"
                )
            inside = next((c for folder, c in dicom_folders if real.startswith(folder + os.sep)), None)
            if inside is not None:
                raise DatasetError(
                    f"{path}: the {kind} of case {case.case_id!r} would be written into the DICOM series folder of case "
                    f"{inside.case_id!r}; give -o a folder outside it"
                )
            if real in written:
                raise DatasetError(
                    f"{path}: cases {written[real]!r} and {case.case_id!r} would write the same file; rename one input"
                )
            written[real] = case.case_id


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
    bridged: bool = False,
) -> tuple[np.ndarray, str]:
    """The recipe's postprocessing when there is one, else the default debris removal; and a line for the log.

    ``bridged``: the recipe's gap bridging already ran in preprocessed space on the streamed
    foreground map (:func:`_streamed_bridging`), so it is not repeated here.
    """
    from vessel_seg.inference.postprocessing import apply_postprocessing, count_components, remove_detached_debris

    if not options.postprocess:
        return seg, "no postprocessing"
    recipe = getattr(options.recipe, "postprocessing", None)
    if recipe is not None:  # the recipe was measured on this model's validation: it decides, even "none"
        steps = replace(recipe, bridge_gaps_mm=None) if bridged else recipe  # bridged before the restore
        before = count_components(seg)
        foreground = None if probs is None else 1.0 - probs[0].astype(np.float32)
        out = seg if steps.is_identity else apply_postprocessing(seg, steps, geometry.spacing, labels, probabilities_fg=foreground)
        return out, f"{before} -> {count_components(out)} component(s) (recipe: {recipe.describe()})"
    out, report = remove_detached_debris(seg, geometry.spacing)
    return out, (f"{report.components_before} -> {report.components_after} component(s) (default: removed "
                 f"{report.voxels_removed} voxel(s) of small debris far from the tree)")


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
    bridged: bool = False  # the recipe's gap bridging already ran on the streamed foreground map


def _read_case(case: InputCase, options: PredictionOptions) -> _LoadedCase:
    images, geometry = case.read()
    # The predictor gets the only reference to the raw image, so it can free it once preprocessed
    # (one volume less at the peak); the preview keeps its own channel view.
    return _LoadedCase([images], geometry, images[0] if options.preview else None)


def _predict_loaded(models: Sequence[TrainedModel], case: InputCase, loaded: _LoadedCase, options: PredictionOptions) -> _PredictedCase:
    geometry, labels = loaded.geometry, models[0].label_values
    probs = None
    bridge_mm = _recipe_bridging(options)
    if len(models) == 1 and not options.save_probabilities:
        refine = None if bridge_mm is None else _streamed_bridging(bridge_mm)
        seg, _ = predict_image(
            models[0], loaded.images.pop(), geometry, case.case_id, options.use_tta, keep_probabilities=False,
            step=options.step_size, refine=refine,
        )
        return _PredictedCase(seg, None, geometry, loaded.preview_image, bridged=refine is not None)
    probs = predict_original_probabilities(
        models, loaded.images.pop(), geometry, case.case_id, options.use_tta, options.step_size
    )
    seg = labels_from_original_probabilities(probs, labels)
    return _PredictedCase(seg, probs, geometry, loaded.preview_image)


def _recipe_bridging(options: PredictionOptions) -> float | None:
    """The recipe's widest bridged gap in mm, when postprocessing runs and the recipe bridges gaps."""
    recipe = getattr(options.recipe, "postprocessing", None)
    return None if not options.postprocess or recipe is None else recipe.bridge_gaps_mm


def _streamed_bridging(max_gap_mm: float):
    """Gap bridging in preprocessed space from the uint8 foreground map the streamed predictor keeps."""
    from vessel_seg.inference.postprocessing import bridge_gaps

    return lambda seg, foreground, spacing: bridge_gaps(seg, foreground, spacing, max_gap_mm)


def _write_case(labels: list[int], case: InputCase, predicted: _PredictedCase, output_dir: Path, options: PredictionOptions) -> None:
    """Postprocess and write one case's outputs (extras first, the mask last)."""
    geometry, probs = predicted.geometry, predicted.probs
    seg, postprocessed = _postprocess(predicted.seg, probs, geometry, labels, options, predicted.bridged)
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


def predict_cases(
    models: Sequence[TrainedModel], input_path: str | Path, output_dir: str | Path, options: PredictionOptions | None = None,
) -> dict[str, float]:
    """Predict every case under ``input_path`` into ``output_dir``; returns seconds per predicted case.

    ``models`` (one per configuration) are ensembled by averaging their probabilities in the input
    geometry. Cases with an existing mask are skipped unless ``options.overwrite``. The seconds of
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
    output_dir = Path(output_dir)
    check_outputs_spare_inputs(cases, output_dir, options)
    todo = [c for c in cases if options.overwrite or not _case_outputs(c, output_dir).exists()]
    if len(todo) < len(cases):
        log.info("%d of %d case(s) already predicted in %s, skipped (use --overwrite to redo)", len(cases) - len(todo), len(cases), output_dir)
    check_inputs(models, todo)
    check_free_space(output_dir, _largest_case_output_bytes(todo, len(models[0].label_values), options), "prediction")
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

    with tqdm(total=len(todo), desc="predicting", unit="case", disable=None) as bar:

        def store(case: InputCase, predicted: _PredictedCase) -> None:
            timed(_write_case, case, models[0].label_values, case, predicted, output_dir, options)
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

