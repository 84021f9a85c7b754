"""Run SeqSeg (github.com/numisveinsson/SeqSeg) on a test set and collect its masks for ``vs_benchmark``.

``seqseg -data_dir DATA -nnunet_results_path WEIGHTS -nnunet_type 3d_fullres -train_dataset DatasetNNN_Name
-fold all -img_ext .nii.gz -outdir OUT/ -unit mm -scale S -config_name global [-resample_spacing S]`` (the flat
form, which both old and new releases accept). ``DATA`` holds ``images/CASE.ext`` and ``seeds.json``; the seeds
come from the ground truth (see :mod:`vessel_seg.evaluation.seqseg_seeds`). Its mask is
``OUT/CASE_segmentation_*_steps.mha``, on a grid of at most 0.3 mm spacing, which the runner resamples onto the
input image's grid. Staging, running and collecting use the shared helpers of :mod:`vessel_seg.evaluation.runners`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from vessel_seg.atomic import write_atomic
from vessel_seg.errors import VesselSegError
from vessel_seg.evaluation.runners import (
    RunnerResult,
    collect_outputs,
    find_test_images,
    fresh_dir,
    require_executable,
    run_tool,
    stage_channel0,
)
from vessel_seg.evaluation.seqseg_seeds import seed_from_label
from vessel_seg.imageio import image_extension, image_files, read_label
from vessel_seg.serialization import write_json_atomic

SEQSEG_INSTALL = "install SeqSeg (pip install seqseg, or pip install -e a clone of github.com/numisveinsson/SeqSeg)"


@dataclass(frozen=True)
class SeqSegSettings:
    """How SeqSeg runs, besides its inputs and weights.

    Attributes:
        nnunet_type: nnU-Net configuration of SeqSeg's local model (``3d_fullres``).
        fold: its fold (``all``).
        config_name: SeqSeg tracing config: a name from its package or a YAML path (with or without ``.yaml``).
        scale: factor SeqSeg applies to image coordinates for its model (0.1 for models trained in cm).
        resample_spacing: spacing in mm (one isotropic value or x, y, z) SeqSeg resamples each image to first.
        seed_inset_radii: seed distance from the reference root along its centreline, in root radii.
    """

    nnunet_type: str = "3d_fullres"
    fold: str = "all"
    config_name: str = "global"
    scale: float = 1.0
    resample_spacing: tuple[float, ...] | None = None
    seed_inset_radii: float = 0.0

    def __post_init__(self) -> None:
        # CLIs hand over argparse's list (or None); an empty one means "as they are"
        spacing = tuple(float(v) for v in self.resample_spacing or ()) or None
        object.__setattr__(self, "resample_spacing", spacing)
        if spacing is not None and (len(spacing) not in (1, 3) or min(spacing) <= 0):
            raise VesselSegError(f"SeqSeg resample spacing {list(spacing)}: give one or three positive values in mm")
        if not self.seed_inset_radii >= 0:
            raise VesselSegError(f"SeqSeg seed inset {self.seed_inset_radii}: give a distance of 0 or more root radii")
        if not self.scale > 0:
            raise VesselSegError(f"SeqSeg scale {self.scale}: give a positive factor (1 for mm, 0.1 for cm models)")


def seqseg_command(
    data_dir: Path,
    out_dir: Path,
    weights_dir: Path,
    train_dataset: str,
    img_ext: str,
    settings: SeqSegSettings = SeqSegSettings(),
    executable: str = "seqseg",
) -> list[str]:
    """``seqseg`` command line; ``out_dir`` gets a trailing separator because SeqSeg concatenates paths."""
    resample = settings.resample_spacing
    return [
        executable,
        *("-data_dir", str(data_dir), "-nnunet_results_path", str(weights_dir)),
        *("-nnunet_type", settings.nnunet_type, "-train_dataset", train_dataset, "-fold", str(settings.fold)),
        *("-img_ext", img_ext, "-outdir", str(out_dir).rstrip(os.sep) + os.sep),
        *("-unit", "mm", "-scale", f"{settings.scale:g}", "-config_name", settings.config_name),
        *(("-resample_spacing", *(f"{value:g}" for value in resample)) if resample else ()),
    ]


def run_seqseg(
    images_dir: str | Path,
    ref_dir: str | Path,
    out_root: str | Path,
    weights_dir: str | Path | None,
    train_dataset: str,
    settings: SeqSegSettings = SeqSegSettings(),
    name: str = "seqseg",
) -> RunnerResult:
    """Trace every test image with SeqSeg from a seed derived from its reference label; masks on the input grids."""
    cases = find_test_images(images_dir)
    executable = require_executable("seqseg", SEQSEG_INSTALL)
    model = Path(weights_dir or "") / train_dataset / f"nnUNetTrainer__nnUNetPlans__{settings.nnunet_type}"
    if weights_dir is None or not model.is_dir():
        raise VesselSegError(
            f"{model}: SeqSeg weights not found; download the SeqSeg nnU-Net model {train_dataset} and unpack it "
            f"so that this folder exists, then pass its parent with --seqseg-weights"
        )
    refs = image_files(ref_dir)
    missing = [case for case in cases if case not in refs]
    if missing:
        raise VesselSegError(f"{ref_dir}: no reference for {', '.join(missing[:5])}; SeqSeg seeds come from it")
    settings = replace(settings, config_name=seqseg_config_name(settings.config_name))
    run_dir = Path(out_root) / "runs" / name
    data_dir, raw = run_dir / "data", run_dir / "raw"
    ext = stage_channel0(cases, data_dir / "images")
    seeds = []
    for case in sorted(cases):
        label, geometry = read_label(refs[case])
        seed = seed_from_label(label, geometry, str(refs[case]), inset_radii=settings.seed_inset_radii)
        seeds.append({"name": case, "seeds": [seed.to_json()]})
    write_json_atomic(data_dir / "seeds.json", seeds)
    fresh_dir(raw)
    command = seqseg_command(
        data_dir.resolve(), raw.resolve(), Path(weights_dir).resolve(), train_dataset, ext, settings, executable
    )
    log = run_dir / "log.txt"
    elapsed = run_tool(command, log, "seqseg")
    pattern = "{case}_segmentation_.*_steps"
    native = collect_outputs(raw, sorted(cases), run_dir / "masks_native", pattern, "seqseg", log)
    dest = masks_onto_inputs(native, cases, Path(out_root) / "predictions" / name)
    return RunnerResult(name, dest, elapsed, command, log, {"seeds": seeds})


def seqseg_config_name(config_name: str) -> str:
    """A SeqSeg config name as given, or a path to ``NAME.yaml`` (without the extension) made absolute: SeqSeg
    looks names up in its package folder, where only an absolute path escapes it."""
    if os.sep not in config_name and not config_name.startswith("."):
        return config_name
    path = Path(config_name).expanduser().resolve()
    if path.suffix in (".yaml", ".yml"):
        path = path.with_suffix("")
    if not path.with_suffix(".yaml").is_file():
        raise VesselSegError(f"{path}.yaml: SeqSeg config not found; pass a SeqSeg config name or the YAML's path")
    return str(path)


def masks_onto_inputs(mask_dir: Path, inputs: Mapping[str, Path], dest_dir: Path) -> Path:
    """Resample each case's mask in ``mask_dir`` onto its input image's grid, as ``dest_dir/CASE<input ext>``.

    SeqSeg resamples its final assembly to a spacing of at most ``CENT_MAX_SPACING`` (0.3 mm by default)
    for smoother meshes, so its mask is not on the input grid that references and metrics use. The mask
    is interpolated linearly and thresholded at 0.5: a vessel keeps its centre where the grid coarsens.
    """
    import SimpleITK as sitk

    masks = image_files(mask_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for case, input_path in inputs.items():
        grid = sitk.ImageFileReader()  # the input's header only: its voxels are not needed
        grid.SetFileName(str(input_path))
        grid.ReadImageInformation()
        mask = sitk.Cast(sitk.ReadImage(str(masks[case])) > 0, sitk.sitkFloat32)
        resampled = sitk.Resample(mask, grid.GetSize(), sitk.Transform(), sitk.sitkLinear, grid.GetOrigin(),
                                  grid.GetSpacing(), grid.GetDirection(), 0.0, sitk.sitkFloat32)
        label = sitk.Cast(resampled >= 0.5, sitk.sitkUInt8)
        target = dest_dir / f"{case}{image_extension(input_path)}"
        write_atomic(target, lambda tmp, image=label: sitk.WriteImage(image, str(tmp), True))
    return dest_dir
