"""What a ``vs_predict`` run reads and writes, checked before any work: input cases, options, output paths.

Finds the cases of an input (folder of ``CASE_0000.ext`` images, one file, a DICOM series), checks
their headers against the models (channels, dimension, plausible spacing), and names every file a
case will produce, so that a run whose output would replace an input image, or whose ``-o`` cannot
be written, is refused before anything is created. The run itself lives in
:mod:`~vessel_seg.inference.prediction_run`.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vessel_seg.atomic import check_writable_location
from vessel_seg.errors import DatasetError, ImageReadError, ImageWriteError, PlansError, VesselSegError
from vessel_seg.imageio import (
    ImageGeometry,
    image_extension,
    read_dicom_series,
    read_image,
    strip_extension,
)
from vessel_seg.inference.ensemble import PROBABILITY_SUFFIX
from vessel_seg.inference.input_checks import check_case_headers, check_channel_files
from vessel_seg.inference.predictor import TrainedModel
from vessel_seg.planners.preprocessing import target_spacing
from vessel_seg.planners.resampling_checks import resampling_problem

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
    # Scale-out as nnU-Net's -num_parts/-part_id: this run predicts cases part_id, part_id + num_parts, ...
    # of the sorted case list (torchrun: WORLD_SIZE parts, this process's RANK; see case_share).
    num_parts: int = 1
    part_id: int = 0
    # Modality-free models only: 1 (native grid), a coarser-grid factor, or "multi" (native, 2x, 4x fused by the
    # maximum foreground probability); see vessel_seg.inference.vessel_scale.
    vessel_scale: float | str = 1.0
    # "bright" (as it is) or "dark" (inverted first; modality-free models only): vessel_seg.inference.vessel_polarity.
    vessel_polarity: str = "bright"


def case_share(num_parts: int | None, part_id: int | None, environ: dict | None = None) -> tuple[int, int]:
    """``(num_parts, part_id)`` of this run: the flags, else torchrun's ``WORLD_SIZE``/``RANK``, else ``(1, 0)``.

    One-line :class:`VesselSegError` for values that leave cases out or share none.
    """
    env = os.environ if environ is None else environ
    if num_parts is None and part_id is None and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        num_parts, part_id = int(env["WORLD_SIZE"]), int(env.get("RANK", "0") or 0)
    num_parts = 1 if num_parts is None else num_parts
    part_id = 0 if part_id is None else part_id
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise VesselSegError(
            f"-num_parts {num_parts} / -part_id {part_id}: need num_parts >= 1 and 0 <= part_id < num_parts "
            "(run parts 0 .. num_parts-1 to cover every case)"
        )
    return num_parts, part_id


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


def check_inputs(models: Sequence[TrainedModel], cases: Sequence[InputCase]) -> dict[str, ImageGeometry]:
    """Header checks of every case against the models before any prediction (see ``input_checks``).

    Returns the geometry of each checked file case (DICOM series are read later), so that callers
    size the run without reading the headers again.
    """
    model_dims = {m.name: m.config.dim for m in models}
    num_channels = models[0].info.num_channels
    geometries = {}
    for case in cases:
        check_channel_files(case.case_id, case.files, num_channels, models[0].name)
        if not case.dicom:
            geometries[case.case_id] = geometry = check_case_headers(case.files, model_dims)
            check_resampling(case.files[0], geometry, models)
    return geometries


def largest_case_output_bytes(geometries: Sequence[ImageGeometry], num_classes: int, options: PredictionOptions) -> float:
    """Upper bound of what one case writes (uint8 mask, float16 probabilities), uncompressed; cases go one at a time."""
    per_voxel = 1 + (2 * num_classes if options.save_probabilities else 0)
    return max((float(np.prod(g.shape)) for g in geometries), default=0.0) * per_voxel


def check_resampling(path: Path, geometry: ImageGeometry, models: Sequence[TrainedModel]) -> None:
    """Refuse a header spacing that would blow the image up absurdly at a model's spacing (one line, the file)."""
    for model in models:
        target = target_spacing(model.config, geometry.spacing, geometry.shape)
        problem = resampling_problem(geometry.shape, geometry.spacing, target)
        if problem and _plans_spacing_implausible(model):
            raise PlansError(f"{model.model_dir / 'plans.json'}: configuration {model.config.name!r} asks for spacing "
                             f"{model.config.spacing} mm, far finer than the {model.plans.original_median_spacing} mm "
                             f"of the data it was planned from ({problem}); fix the plans or re-run vs_plan_and_preprocess")
        if problem:
            raise ImageReadError(f"{path}: {problem}, the spacing of model {model.name}; check the spacing in the header")


PLANS_SPACING_RATIO = 10.0  # a planned spacing this many times finer than the data's median is the plans' mistake


def _plans_spacing_implausible(model: TrainedModel) -> bool:
    """The plans' own spacing (mm plans only) is far finer than the median spacing of the data they were made for."""
    median = model.plans.original_median_spacing
    if model.config.spacing_mode != "mm" or len(median) != len(model.config.spacing):
        return False
    return any(m > PLANS_SPACING_RATIO * s for m, s in zip(median, model.config.spacing, strict=True))


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


def case_mask_path(case: InputCase, output_dir: Path) -> Path:
    return output_dir / f"{case.case_id}{case.file_ending}"


def case_output_paths(case: InputCase, output_dir: Path, options: PredictionOptions) -> dict[str, Path]:
    """Every file this run writes for ``case``, by kind; the writers take their paths from here."""
    stem = output_dir / case.case_id
    paths = {"mask": case_mask_path(case, output_dir)}
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
