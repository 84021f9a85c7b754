"""Wall time of predicting one large volume, with and without mirroring TTA, on a given device.

Usage::

    .venv/bin/python benchmarks/predict_speed.py --device cuda [--shape 600 512 512] [--tta off on] \
        [--paths auto streamed device] [--patch 128 128 128] [--folds 1] [--step-size 0.5] [--repeats 2] \
        [--plans PLANS.json -c 3d_fullres] [--spacing-factor 1.0] [--folder-cases 3] [--output FILE.json]

No training is needed: the networks get fresh random weights (the time does not depend on them).
By default the network is the ResU-Net the planner builds for ``--patch`` at 1 mm
(``--base-features 32 --max-features 320``, as the GPU preset); ``--plans`` takes the topology,
patch, spacing and normalisation of a real plans file instead. The volume (``--shape`` Z Y X,
float32 noise plus bright tubes, ``--spacing-factor`` times the plan's spacing, so 1.2 resamples
it to 1.7x as many voxels) is predicted in memory with
:func:`vessel_seg.inference.predictor.predict_image` (label output, as ``vs_predict`` without
``--save-probabilities``), for each ``--paths`` value:

- ``auto``: the decision of ``vs_predict`` (device-side path when the case fits, see
  ``vessel_seg/inference/device_prediction.py``); ``streamed``: forced CPU-side preprocessing and
  restore (``VS_PREDICT_DEVICE_PATH=0``); ``device``: forced device-side path (``=1``).

Each (path, TTA) pair runs once untimed (cuDNN autotuning, allocator warm-up), then ``--repeats``
times; reported: median and all wall seconds (CUDA synchronised), peak device memory, the plan's
reason, and the voxel agreement of each path's labels with the first path's. ``--folder-cases N``
also writes N copies of the volume (``.nii.gz``) and times ``predict_cases`` over the folder with
and without overlapped I/O (read/write in background threads). Results print as one line per run
and are merged into ``--output`` (JSON) under ``--label``. Smoke test on a CPU:
``--device cpu --shape 24 48 48 --patch 16 32 32 --base-features 4 --max-features 8 --repeats 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_memory import merge_results  # noqa: E402  (sibling module, not a package)

from vessel_seg.dataset import DatasetInfo  # noqa: E402
from vessel_seg.device import configure_backends, select_device  # noqa: E402
from vessel_seg.imageio import ImageGeometry, write_image  # noqa: E402
from vessel_seg.inference.device_prediction import DEVICE_PATH_ENV, plan_prediction  # noqa: E402
from vessel_seg.inference.predictor import TrainedModel, predict_image  # noqa: E402
from vessel_seg.networks.resunet import build_network  # noqa: E402
from vessel_seg.planners.plans import ChannelIntensity, ConfigurationPlan, Plans  # noqa: E402
from vessel_seg.planners.topology import fit_patch_to_topology  # noqa: E402

PATH_ENV = {"auto": "auto", "streamed": "0", "device": "1"}
LABELS = {"background": 0, "vessel": 1}


def synthetic_model(args: argparse.Namespace, device: torch.device) -> TrainedModel:
    """Random-weight networks (``--folds`` of them) of the configuration under test, on ``device``."""
    if args.plans is not None:
        plans = Plans.load(args.plans)
        config = plans.configuration(args.configuration)
    else:
        patch, topology = fit_patch_to_topology(
            args.patch, [1.0] * 3, 3, base_features=args.base_features, max_features=args.max_features
        )
        config = ConfigurationPlan("3d_fullres", "bench_3d_fullres", [1.0] * 3, list(args.shape), patch, 2, ["ct"], topology)
        stats = {"0": ChannelIntensity(mean=100.0, std=80.0, percentile_00_5=-100.0, percentile_99_5=600.0)}
        plans = Plans("Dataset999_Bench", "bench", "gpu", 80.0, [1.0] * 3, list(args.shape), LABELS, {"0": "CT"},
                      ".nii.gz", stats, {"3d_fullres": config})
    channels = len(plans.channel_names)
    info = DatasetInfo(dict(plans.channel_names), dict(plans.labels), 1, ".nii.gz")
    torch.manual_seed(0)
    networks = []
    for _ in range(args.folds):
        network = build_network(config.network, channels, len(plans.labels))
        network.deep_supervision = False
        networks.append(network.to(device).eval())
    folder = Path(f"/bench/vsTrainer__{plans.plans_name}__{config.name}")
    return TrainedModel(folder, plans, config, info, networks, [str(f) for f in range(args.folds)], (0, 1, 2), device,
                        sorted(plans.labels.values()))


def synthetic_volume(shape: tuple[int, int, int], channels: int, seed: int = 0) -> np.ndarray:
    """float32 ``(C, Z, Y, X)``: noise (sd 20) plus four bright tubes along z (about 300), any size."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(0.0, 20.0, size=(channels, *shape)).astype(np.float32)
    yy, xx = np.ogrid[: shape[1], : shape[2]]
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8) * shape[1], rng.uniform(0.2, 0.8) * shape[2]
        r = max(1.5, rng.uniform(0.006, 0.016) * min(shape[1:]))
        volume[:, :, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 300.0
    return volume


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_prediction(model: TrainedModel, image: np.ndarray, geometry: ImageGeometry, tta: bool, args) -> dict:
    """One untimed run, then ``args.repeats`` timed ones of :func:`predict_image`; seconds and peak memory."""
    device, seconds, seg = model.device, [], None
    for repeat in range(args.repeats + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _synchronize(device)
        start = time.perf_counter()
        seg, _ = predict_image(model, image.copy(), geometry, "bench", tta, keep_probabilities=False, step=args.step_size)
        _synchronize(device)
        if repeat > 0 or args.repeats == 0:
            seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    plan = plan_prediction(model, image.shape, geometry.spacing, tta)
    return {"median_s": statistics.median(seconds), "seconds": seconds, "peak_device_gb": peak,
            "plan": plan.device_path.reason, "tiles_per_batch": plan.tiles_per_batch,
            "samples_per_forward": plan.samples_per_forward, "foreground": float((seg > 0).mean())}, seg


def time_folder(model: TrainedModel, image: np.ndarray, geometry: ImageGeometry, tta: bool, args) -> dict:
    """``predict_cases`` over ``--folder-cases`` copies of the volume, with and without overlapped I/O."""
    from vessel_seg.inference.prediction_run import PredictionOptions, predict_cases

    results = {}
    with tempfile.TemporaryDirectory(prefix="vs_predict_speed_") as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for k in range(args.folder_cases):
            write_image(image[0], geometry, inputs / f"case{k}_0000.nii.gz")
        for overlap in (False, True):
            options = PredictionOptions(use_tta=tta, overwrite=True, step_size=args.step_size, overlap_io=overlap)
            start = time.perf_counter()
            predict_cases([model], inputs, Path(tmp) / "out", options)
            results[f"overlap_{overlap}".lower()] = time.perf_counter() - start
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--shape", type=int, nargs=3, default=[600, 512, 512], help="volume shape Z Y X")
    parser.add_argument("--spacing-factor", type=float, default=1.0, help="volume spacing / plan spacing (1.2: resampled)")
    parser.add_argument("--tta", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--paths", nargs="+", default=["auto", "streamed"], choices=list(PATH_ENV))
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--base-features", type=int, default=32)
    parser.add_argument("--max-features", type=int, default=320)
    parser.add_argument("--plans", type=Path, help="plans.json of a trained model (topology, patch, spacing)")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration in --plans")
    parser.add_argument("--folds", type=int, default=1, help="networks ensembled (vs_predict's folds)")
    parser.add_argument("--step-size", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one untimed warm-up")
    parser.add_argument("--folder-cases", type=int, default=0, help="also time a folder of this many cases")
    parser.add_argument("--label", default="run", help="key of this run in --output")
    parser.add_argument("--output", type=Path, help="JSON file to merge the results into")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = select_device(args.device)
    configure_backends(device)
    model = synthetic_model(args, device)
    shape = tuple(args.shape)
    spacing = tuple(args.spacing_factor * s for s in model.config.spacing)
    image = synthetic_volume(shape, len(model.plans.channel_names))
    geometry = ImageGeometry(shape, spacing)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or device.type
    results: dict = {"device": name, "torch": torch.__version__, "shape": list(shape), "spacing": list(spacing),
                     "patch": list(model.config.patch_size), "features": model.config.network.features_per_stage,
                     "folds": args.folds, "step_size": args.step_size, "runs": {}}
    first: dict[str, np.ndarray] = {}
    previous_env = os.environ.get(DEVICE_PATH_ENV)
    try:
        for path in args.paths:
            os.environ[DEVICE_PATH_ENV] = PATH_ENV[path]
            for tta in args.tta:
                run, seg = time_prediction(model, image, geometry, tta == "on", args)
                first.setdefault(tta, seg)
                run["agreement_with_first_path"] = float((seg == first[tta]).mean())
                results["runs"][f"{path} tta={tta}"] = run
                print(f"{path:8s} tta={tta:3s} {run['median_s']:7.2f} s  {run['plan']}", flush=True)
                if args.folder_cases and path == args.paths[0]:
                    run["folder"] = time_folder(model, image, geometry, tta == "on", args)
                    print(f"         folder of {args.folder_cases}: {json.dumps(run['folder'])}", flush=True)
    finally:
        os.environ.pop(DEVICE_PATH_ENV, None) if previous_env is None else os.environ.update({DEVICE_PATH_ENV: previous_env})
    if args.output is not None:
        merge_results(args.output, f"{args.label} {shape[0]}x{shape[1]}x{shape[2]}", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
