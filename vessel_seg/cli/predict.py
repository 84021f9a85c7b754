"""``vs_predict``: segment images with a trained model (fold ensemble, cascade, recipe)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from vessel_seg.cli import run_cli


def checkpoint_choice(value: str) -> str:
    """``final``/``best``/``epochNNNN``, also written as nnU-Net's file names (``checkpoint_best.pth``) or ours (``.pt``)."""
    name = value.strip()
    for suffix in (".pth", ".pt"):
        name = name.removesuffix(suffix)
    return name.removeprefix("checkpoint_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_predict",
        description="Segment a folder of CASE_0000.ext images, one image file or a DICOM series folder. Masks are "
        "written in the input's format and geometry (DICOM -> .nii.gz); cases already predicted are skipped.",
    )
    parser.add_argument("-i", required=True, type=Path, dest="input", help="image folder, image file or DICOM folder")
    parser.add_argument("-o", required=True, type=Path, dest="output", help="output folder")
    parser.add_argument("-d", dest="dataset", default=None,
                        help="dataset id or name (default: the only dataset with a trained model; none: the built-in model)")
    parser.add_argument("-c", dest="configuration", default=None,
                        help="configuration (default: the inference recipe, else the best validated configuration)")
    parser.add_argument("-f", dest="folds", nargs="+", default=None, help="folds to ensemble (default: all trained)")
    parser.add_argument("-pl", "-p", dest="plans", default=None, help="plans name (default: any, if unambiguous)")
    parser.add_argument("-tr", dest="trainer", default=None, help="trainer name (default: any, if unambiguous)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--vessel-scale", default="auto", metavar="auto|1|F|multi",
                        help="modality-free models (--model builtin): also predict on coarser grids where vessels are "
                        "wider than it was trained on; 'multi' fuses the native, 2x and 4x grids; 1: native only "
                        "(default auto: the native grid, as measured best for the shipped model)")
    parser.add_argument("--vessel-polarity", default="bright", metavar="bright|dark",
                        help="--model builtin segments bright vessels; 'dark' inverts images whose vessels are darker "
                        "than their surroundings (black-blood MR, bright-field microscopy) first")
    parser.add_argument("--disable-tta", "--disable_tta", dest="disable_tta", action="store_true",
                        help="no mirroring test-time augmentation (8x faster in 3D)")
    parser.add_argument(
        "--step-size", "-step_size", dest="step_size", default="0.5", metavar="S",
        help="sliding-window step as a fraction of the patch, 0 < S <= 1 (default 0.5: half-overlapping tiles; "
        "larger is faster, nnU-Net's -step_size)",
    )
    parser.add_argument(
        "--checkpoint", "-chk", default="final", type=checkpoint_choice,
        help="checkpoint to load: final (default), best, or a snapshot such as epoch0020; nnU-Net's "
        "checkpoint_final.pth / checkpoint_best.pth are understood",
    )
    parser.add_argument("--threads", "-np", type=int, default=None, dest="num_threads",
                        help="CPU threads for torch (default: torch's choice); -np is the old spelling")
    parser.add_argument("--model", choices=("builtin",), default=None,
                        help="builtin: the pretrained zero-shot vessel model shipped with vessel_seg (also the default "
                        "when no -d is given and nothing is trained under VS_RESULTS)")
    parser.add_argument("-m", "--model-folder", dest="model_folders", nargs="+", type=Path, default=None,
                        help="model folder(s) <trainer>__<plans>__<configuration> to predict with, instead of -d/-c/-pl/-tr "
                        "(nnU-Net's predict_from_modelfolder); several are ensembled")
    parser.add_argument("--overwrite", action="store_true", help="predict cases whose mask already exists again")
    parser.add_argument(
        "--no-postprocessing", action="store_true",
        help="write the network's mask as it is (default: the recipe's postprocessing, else removal of small debris "
        "far from the vessel tree)",
    )
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write CASE.npz: float16 class probabilities in the input geometry (for vs_ensemble)")
    parser.add_argument("--mesh", action="store_true", help="also write a surface mesh CASE.vtp")
    parser.add_argument("--centerline", action="store_true",
                        help="also write the centerline graph CASE_centerline.json and CASE_centerline.vtp")
    parser.add_argument("--preview", action="store_true", help="also write a maximum-intensity preview CASE_preview.png")
    parser.add_argument(
        "--seed", dest="seeds", action="append", nargs="+", type=float, metavar="X Y Z [RADIUS]",
        help="tracking mode: follow the vessels from this physical point (mm, LPS as the image header; optional radius "
        "in mm) with local patches instead of predicting the whole image; repeat for several seeds",
    )
    parser.add_argument("--seeds-file", type=Path, default=None,
                        help="tracking mode with the seeds of a JSON file: [[x, y, z], ...], [[x, y, z, r], ...] or "
                        "SeqSeg's seeds.json ([[start], [direction], radius] per case)")
    parser.add_argument("--max-steps", type=int, default=5000, help="tracking mode: most patches predicted (default 5000)")
    parser.add_argument("-num_parts", "--num-parts", dest="num_parts", type=int, default=None,
                        help="split the cases into this many parts (run each part in its own process/GPU); "
                        "under torchrun: WORLD_SIZE")
    parser.add_argument("-part_id", "--part-id", dest="part_id", type=int, default=None,
                        help="which part this run predicts, 0 .. num_parts-1 (under torchrun: RANK)")
    return parser


def _command(args: argparse.Namespace) -> int:
    import torch

    from vessel_seg.inference.prediction_inputs import (
        PredictionOptions,
        case_share,
        check_output_location,
        check_step_size,
    )
    from vessel_seg.inference.prediction_run import predict_cases
    from vessel_seg.inference.predictor import load_trained_model
    from vessel_seg.inference.vessel_scale import resolve_auto
    from vessel_seg.model_folder import parse_fold

    step_size = check_step_size(args.step_size)
    num_parts, part_id = case_share(args.num_parts, args.part_id)
    device = args.device
    if device == "auto" and num_parts > 1 and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # torchrun: one GPU per process
    if args.num_threads is not None:
        torch.set_num_threads(max(1, args.num_threads))
    if not args.input.exists():
        from vessel_seg.errors import DatasetError

        raise DatasetError(f"{args.input}: input not found; give an image file, a folder of CASE_0000 images or a DICOM folder")
    check_output_location(args.output)  # created by predict_cases once every check has passed
    folds = [str(parse_fold(f)) for f in args.folds] if args.folds else None
    model_dirs, recipe, folds = _chosen_models(args, folds)
    models = [load_trained_model(d, folds, args.checkpoint, device) for d in model_dirs]
    options = PredictionOptions(
        use_tta=not args.disable_tta, overwrite=args.overwrite, save_probabilities=args.save_probabilities,
        mesh=args.mesh, centerline=args.centerline, preview=args.preview, recipe=recipe, step_size=step_size,
        postprocess=not args.no_postprocessing, num_parts=num_parts, part_id=part_id,
        vessel_scale=resolve_auto(args.vessel_scale, models), vessel_polarity=args.vessel_polarity,
    )
    seeds = _tracking_seeds(args)
    if seeds:
        from vessel_seg.inference.prediction_run import track_cases

        seconds = track_cases(models, args.input, args.output, seeds, options, args.max_steps)
    else:
        seconds = predict_cases(models, args.input, args.output, options)
    names = ", ".join(f"{m.name} (folds {' '.join(m.folds)})" for m in models)
    mode = "tracked" if seeds else "predicted"
    print(f"{len(seconds)} case(s) {mode} with {names} into {args.output}")
    return 0


def _tracking_seeds(args: argparse.Namespace) -> list:
    """Seeds of --seed and --seeds-file (empty: full-volume prediction), values checked in one line."""
    from vessel_seg.errors import VesselSegError
    from vessel_seg.inference.tracking import parse_seed, read_seeds

    seeds = [] if args.seeds_file is None else read_seeds(args.seeds_file)
    for values in args.seeds or []:
        if len(values) not in (3, 4):
            raise VesselSegError(f"--seed {' '.join(map(str, values))}: give X Y Z in mm and optionally a radius")
        seeds.append(parse_seed(values, "--seed"))
    if seeds and args.max_steps < 1:
        raise VesselSegError(f"--max-steps must be at least 1, got {args.max_steps}")
    return seeds


def _chosen_models(args: argparse.Namespace, folds: list[str] | None) -> tuple[list[Path], object, list[str] | None]:
    """Model folders, inference recipe and folds: ``--model builtin``, ``-m``, else the trained models of the dataset,
    else (no -d and nothing trained under VS_RESULTS) the built-in model."""
    from vessel_seg.builtin import announce_builtin, builtin_model_dir
    from vessel_seg.inference.trained_models import choose_models, resolve_prediction_dataset

    if args.model == "builtin":
        _check_no_model_choice(args, "--model builtin", also_m=True)
        folder = builtin_model_dir()
        announce_builtin(folder, "--model builtin")
        return [folder], None, None
    if args.model_folders:
        return _explicit_model_folders(args), None, folds
    dataset = resolve_prediction_dataset(args.dataset, allow_none=True)
    if dataset is None:
        _check_no_model_choice(args, "the built-in model (nothing trained under VS_RESULTS)")
        folder = builtin_model_dir()
        announce_builtin(folder, "no -d and no trained model under VS_RESULTS")
        return [folder], None, None
    choice = choose_models(dataset, args.configuration, args.plans, args.trainer)
    return choice.model_dirs, choice.recipe, folds or choice.folds


def _check_no_model_choice(args: argparse.Namespace, chosen: str, also_m: bool = False) -> None:
    """One line when flags that choose model folders (-d/-c/-pl/-tr, -f, -m) contradict ``chosen``."""
    from vessel_seg.errors import VesselSegError

    flags = (("-d", args.dataset), ("-c", args.configuration), ("-pl", args.plans), ("-tr", args.trainer),
             ("-f", args.folds), ("-m", args.model_folders if also_m else None))
    clash = [flag for flag, value in flags if value is not None]
    if clash:
        raise VesselSegError(f"{chosen} names the model itself; drop {', '.join(clash)}")


def _explicit_model_folders(args: argparse.Namespace) -> list[Path]:
    """``-m`` folders, checked: they exist, and -d/-c/-pl/-tr (which choose folders too) are not given as well."""
    from vessel_seg.errors import VesselSegError

    clash = [flag for flag, value in (("-d", args.dataset), ("-c", args.configuration), ("-pl", args.plans),
                                      ("-tr", args.trainer)) if value is not None]
    if clash:
        raise VesselSegError(f"-m names the model folders itself; drop {', '.join(clash)}")
    for folder in args.model_folders:
        if not (folder / "plans.json").is_file():
            raise VesselSegError(f"{folder}: not a trained model folder (no plans.json); give <trainer>__<plans>__<configuration>")
    return list(args.model_folders)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
