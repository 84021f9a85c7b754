"""Peak memory and wall time of ``vs_predict`` on one large synthetic volume.

Usage::

    .venv/bin/python benchmarks/predict_memory.py [--shape 600 512 512] [--work /tmp/vs_predict_memory] \
        [--tiny-network] [--cases native coarse] [--code-root DIR] [--label after] [--output FILE.json]

A tiny model is trained first (5 synthetic 32^3 cases, CPU plans, 1 epoch x 2 iterations) in a
private ``VS_RAW`` / ``VS_PREPROCESSED`` / ``VS_RESULTS`` tree under ``--work``. By default its
network is the planned CPU ``3d_fullres`` ResU-Net (4 stages, 16-128 features, patch 40x28x28 on
this data), which takes minutes per 100 slices on two cores. ``--tiny-network`` replaces it before
training by a one-stage ResU-Net (4 features, one residual block, no deep supervision) with a
32x128x128 patch: peak memory is dominated by the volume-sized arrays, not by the network, so this
measures the same memory behaviour while a 512x512x600 prediction takes a few minutes. Use a
separate ``--work`` for each network. Then one synthetic image of ``--shape`` voxels ``(Z, Y, X)``
(float32 noise plus a few bright tubes, uncompressed ``.nii``) is segmented with
``vs_predict --disable-tta -np 2``:

- ``native``: the image has the plan's own spacing, so no resampling happens;
- ``coarse``: the spacing is 1.2x the plan's on every axis, so the case is resampled to about 1.7x
  as many voxels and the prediction back again.

Each run is a fresh subprocess whose process tree is sampled every 50 ms from ``/proc`` (the
sampler of ``compare_nnunet.py``). Reported: peak RSS in GB (10^9 bytes) and as a multiple of one
float32 copy of the input volume (``Z * Y * X * 4`` bytes), and wall seconds. The model is reused
when ``--work`` already holds one. ``--code-root DIR`` puts ``DIR`` first on the subprocess's
``PYTHONPATH`` (e.g. a copy of an older ``vessel_seg`` for a before/after comparison); the module
file actually imported is recorded. Results are merged into ``--output`` (JSON) under ``--label``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import run_measured, vessel_seg_roots  # noqa: E402  (sibling module, not a package)

DATASET_ID = 7


TINY_NETWORK = {
    "dim": 3, "features_per_stage": [4], "kernel_sizes": [[3, 3, 3]], "strides": [[1, 1, 1]],
    "blocks_per_stage": [1], "blocks_per_stage_decoder": [], "deep_supervision": False,
}
TINY_PATCH = [32, 128, 128]


def use_tiny_network(plans_file: Path) -> None:
    """Rewrite the ``3d_fullres`` network and patch of a plans file to :data:`TINY_NETWORK` / :data:`TINY_PATCH`."""
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"]["3d_fullres"]
    config["network"].update(TINY_NETWORK)
    config["patch_size"] = TINY_PATCH
    plans_file.write_text(json.dumps(plans, indent=2))


def train_tiny_model(work: Path, tiny_network: bool = False) -> Path:
    """Train (once) a 3d_fullres model on tiny synthetic cases; returns its plans file."""
    from vessel_seg.dataset_conversion.synthetic import generate_dataset
    from vessel_seg.planners.pipeline import plan_and_preprocess
    from vessel_seg.trainers.settings import TrainingSettings
    from vessel_seg.trainers.trainer import TrainingJob, train

    os.environ.update(vessel_seg_roots(work))
    done = list((work / "results").glob("*/*__cpu__3d_fullres/plans.json"))
    if done:
        return done[0]
    generate_dataset(DATASET_ID, 5, num_test_cases=0, size=32, seed=3)
    result = plan_and_preprocess(DATASET_ID, plans_name="cpu", num_workers=1)
    if tiny_network:
        use_tiny_network(Path(result.plans_path))
    settings = TrainingSettings(epochs=1, iterations_per_epoch=2, validation_iterations=1, num_workers=0,
                                checkpoint_every=1, final_validation=False)
    result = train(TrainingJob(DATASET_ID, "3d_fullres", 0, "cpu", settings))
    return Path(result.fold_dir).parent / "plans.json"


def synthetic_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """float32 noise (mean 0, sd 20) plus a few bright straight tubes along z (value ~300)."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    yy, xx = np.ogrid[: shape[1], : shape[2]]
    for _ in range(4):
        cy, cx, r = rng.integers(40, shape[1] - 40), rng.integers(40, shape[2] - 40), rng.integers(3, 8)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        volume[:, disc] += 300.0
    return volume


def write_case(folder: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> None:
    from vessel_seg.imageio import ImageGeometry, write_image

    folder.mkdir(parents=True, exist_ok=True)
    write_image(volume, ImageGeometry(tuple(volume.shape), spacing), folder / "big_0000.nii", compress=False)


def imported_module(env: dict[str, str]) -> str:
    """The ``vessel_seg/__init__.py`` a subprocess with ``env`` imports (which code is measured)."""
    probe = [sys.executable, "-c", "import vessel_seg; print(vessel_seg.__file__)"]
    return subprocess.run(probe, env=env, capture_output=True, text=True, check=True, cwd="/").stdout.strip()


def merge_results(path: Path, label: str, results: dict) -> None:
    """Store ``results`` (per case) under ``label`` in the JSON file ``path``, keeping the rest, atomically."""
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.setdefault(label, {}).update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[600, 512, 512], help="volume shape Z Y X")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vs_predict_memory"))
    parser.add_argument("--cases", nargs="+", default=["native", "coarse"], choices=["native", "coarse"])
    parser.add_argument("--tiny-network", action="store_true", help="one-stage 4-feature network, 32x128x128 patch")
    parser.add_argument("--code-root", type=Path, help="directory holding the vessel_seg package to measure")
    parser.add_argument("--label", default="run", help="key of this run in --output")
    parser.add_argument("--output", type=Path, help="JSON file to merge the results into")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    plans_path = train_tiny_model(work, args.tiny_network)
    plans = json.loads(plans_path.read_text())
    spacing = tuple(float(s) for s in plans["configurations"]["3d_fullres"]["spacing"])
    shape = tuple(args.shape)
    copy_bytes = float(np.prod(shape)) * 4
    volume = synthetic_volume(shape)
    env = {**os.environ, **vessel_seg_roots(work)}
    if args.code_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(args.code_root.resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    module = imported_module(env)
    network = plans["configurations"]["3d_fullres"]["network"]
    results: dict = {}
    for name in args.cases:
        case_spacing = spacing if name == "native" else tuple(1.2 * s for s in spacing)
        in_dir, out_dir = work / f"in_{name}", work / f"out_{name}"
        write_case(in_dir, volume, case_spacing)
        command = [sys.executable, "-m", "vessel_seg.cli.predict", "-i", str(in_dir), "-o", str(out_dir),
                   "-d", str(DATASET_ID), "-c", "3d_fullres", "-pl", "cpu", "--disable-tta", "-np", "2", "--overwrite"]
        load_before = os.getloadavg()[0]
        measured = run_measured(command, env, work / f"log_{name}.txt")
        if measured["returncode"] != 0:
            print((work / f"log_{name}.txt").read_text()[-3000:])
            return 1
        peak = float(measured["peak_rss_mb"]) * 2**20
        results[name] = {
            "shape": list(shape), "spacing": case_spacing, "plan_spacing": spacing,
            "float32_volume_gb": copy_bytes / 1e9, "peak_rss_gb": peak / 1e9, "peak_rss_copies": peak / copy_bytes,
            "wall_s": measured["wall_s"], "cpu_s": measured["cpu_s"], "module": module,
            "network": network["features_per_stage"], "patch_size": plans["configurations"]["3d_fullres"]["patch_size"],
            "load_before": load_before,
        }
        print(f"{name:7s} shape {shape} spacing {case_spacing}: peak RSS {peak / 1e9:.2f} GB "
              f"= {peak / copy_bytes:.1f} x float32 volume ({copy_bytes / 1e6:.0f} MB), wall {measured['wall_s']:.0f} s",
              flush=True)
    merge_results(work / "results.json", args.label, results)
    if args.output is not None:
        merge_results(args.output, f"{args.label} {shape[0]}x{shape[1]}x{shape[2]}", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
