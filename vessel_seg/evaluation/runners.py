"""Run external segmentation methods on a test set and collect their masks for ``vs_benchmark``.

Supported tools (each must be installed by the user, with its weights on local disk):

* **nnU-Net v2**: ``nnUNetv2_predict -i IMAGES -o OUT -d DATASET -c CONFIG -f FOLDS... [-tr TRAINER]
  [-p PLANS] [-chk CHECKPOINT] [-device DEVICE] [--disable_tta]``, with ``nnUNet_results`` pointing
  at the trained models. Reads the nnU-Net layout (``CASE_0000.nii.gz``) and writes ``CASE.nii.gz``.
* **SeqSeg**: see :mod:`vessel_seg.evaluation.seqseg_runner` (built on the helpers here).
* **vesselFM** (github.com/bwittmann/vesselFM): ``python -m vesselfm.seg.inference
  [--config-path DIR --config-name NAME] image_path=IN output_folder=OUT ckpt_path=WEIGHTS
  image_file_ending=nii.gz [device=cuda:0]`` (Hydra overrides of its ``inference.yaml``). It writes
  ``CASE_<file_app>pred.nii.gz`` without spacing or origin, which the benchmark realigns.

Command lines are built by small pure functions (``*_command``); ``run_*`` stage the inputs, run the
tool (output in ``OUT/runs/NAME/log.txt``), time it and copy the masks to ``OUT/predictions/NAME/CASE.ext``.
A missing tool or missing weights raise :class:`VesselSegError` saying what to install and where.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vessel_seg.atomic import write_atomic
from vessel_seg.errors import VesselSegError
from vessel_seg.imageio import image_extension, image_files, strip_extension

logger = logging.getLogger(__name__)

NNUNET_INSTALL = "install nnU-Net v2 (pip install nnunetv2)"
VESSELFM_INSTALL = "install vesselFM (git clone https://github.com/bwittmann/vesselFM && pip install -e vesselFM)"
VESSELFM_WEIGHTS = (
    "download vesselFM_base.pt from https://huggingface.co/bwittmann/vesselFM and pass --vesselfm-weights"
)


@dataclass
class RunnerResult:
    """A finished external run: masks in ``pred_dir`` (``CASE.ext``), tool wall time in seconds."""

    name: str
    pred_dir: Path
    runtime_s: float
    command: list[str]
    log_path: Path
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- command lines (pure)


def nnunet_predict_command(
    images_dir: Path,
    out_dir: Path,
    dataset: str,
    configuration: str = "3d_fullres",
    folds: Sequence[str] = ("0", "1", "2", "3", "4"),
    trainer: str | None = None,
    plans: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
    disable_tta: bool = False,
    executable: str = "nnUNetv2_predict",
) -> list[str]:
    """``nnUNetv2_predict`` command line (nnU-Net v2 flags)."""
    command = [executable, "-i", str(images_dir), "-o", str(out_dir), "-d", str(dataset), "-c", configuration]
    command += ["-f", *[str(f) for f in folds]]
    for flag, value in (("-tr", trainer), ("-p", plans), ("-chk", checkpoint), ("-device", device)):
        if value:
            command += [flag, value]
    return command + (["--disable_tta"] if disable_tta else [])


def _hydra_value(value: str) -> str:
    """Quote a Hydra override value unless it is a plain path-like token."""
    if re.fullmatch(r"[\w./:+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def vesselfm_command(
    images_dir: Path,
    out_dir: Path,
    weights: Path,
    file_ending: str,
    config: Path | None = None,
    device: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """vesselFM inference command line (Hydra overrides of ``vesselfm/seg/configs/inference.yaml``)."""
    command = [python, "-m", "vesselfm.seg.inference"]
    if config is not None:
        config = Path(config).resolve()
        command += ["--config-path", str(config.parent), "--config-name", config.stem]
    overrides = {
        "image_path": str(images_dir),
        "output_folder": str(out_dir),
        "ckpt_path": str(weights),
        "image_file_ending": file_ending.lstrip("."),
    }
    if device:
        overrides["device"] = device
    return command + [f"{key}={_hydra_value(value)}" for key, value in overrides.items()]


# ---------------------------------------------------------------- inputs and outputs


def find_test_images(images_dir: str | Path) -> dict[str, Path]:
    """Case id -> channel-0 file (``CASE_0000.ext``) of a test folder in nnU-Net layout."""
    images_dir = Path(images_dir)
    files = image_files(images_dir)
    cases = {case[:-5]: path for case, path in files.items() if case.endswith("_0000")}
    if not cases:
        raise VesselSegError(f"{images_dir}: no CASE_0000.<ext> images found; use the nnU-Net layout (imagesTs)")
    if any(re.search(r"_\d{4}$", case) and not case.endswith("_0000") for case in files):
        logger.warning("%s: several channels found; SeqSeg and vesselFM get channel 0 only", images_dir)
    return cases


def fresh_dir(folder: Path) -> Path:
    """Empty (or create) one of our own run folders, so that no earlier run's files get collected."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def stage_channel0(cases: Mapping[str, Path], folder: Path) -> str:
    """Link (or copy) each case's channel-0 image to ``folder/CASE.ext``; return the common extension."""
    extensions = {image_extension(path) for path in cases.values()}
    if len(extensions) != 1:
        raise VesselSegError(f"test images mix extensions {sorted(extensions)}; convert them to one format")
    ext = extensions.pop()
    fresh_dir(folder)
    for case, path in cases.items():
        target = folder / f"{case}{ext}"
        try:
            target.symlink_to(Path(path).resolve())
        except OSError:
            shutil.copyfile(path, target)
    return ext


def match_outputs(names: Sequence[str], cases: Sequence[str], pattern: str) -> dict[str, str]:
    """Assign output file names to cases.

    ``pattern`` is a regular expression with ``{case}`` where the (escaped) case id goes; it must
    match the file name without its image extension. A file that matches several cases belongs to
    the longest case id (``a_b_pred`` is case ``a_b``, not ``a``). When several files match one
    case, the last in sorted order wins.
    """
    found: dict[str, str] = {}
    for name in sorted(names):
        stem = strip_extension(name)
        owners = [c for c in cases if re.fullmatch(pattern.format(case=re.escape(c)), stem)]
        if owners:
            found[max(owners, key=len)] = name
    return found


def collect_outputs(raw_dir: Path, cases: Sequence[str], dest_dir: Path, pattern: str, tool: str, log: Path) -> Path:
    """Copy each case's mask from ``raw_dir`` to ``dest_dir/CASE.ext``; missing masks are an error."""
    names = [p.name for p in raw_dir.iterdir() if p.is_file() and image_extension(p)] if raw_dir.is_dir() else []
    found = match_outputs(names, cases, pattern)
    missing = [case for case in cases if case not in found]
    if missing:
        raise VesselSegError(
            f"{raw_dir}: {tool} wrote no mask for {len(missing)} of {len(cases)} cases ({', '.join(missing[:5])}); see {log}"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    for case, name in found.items():
        source = raw_dir / name
        target = dest_dir / f"{case}{image_extension(name)}"
        write_atomic(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
    return dest_dir


def run_tool(command: Sequence[str], log_path: Path, tool: str, env: Mapping[str, str] | None = None) -> float:
    """Run ``command`` with output to ``log_path``; return its wall time in seconds.

    A non-zero exit raises :class:`VesselSegError` quoting the log's last line.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("running %s: %s", tool, " ".join(command))
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        try:
            code = subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
        except OSError as exc:
            raise VesselSegError(f"{command[0]}: cannot start {tool} ({exc.strerror}); {exc.filename}") from exc
    elapsed = time.perf_counter() - start
    if code != 0:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        raise VesselSegError(
            f"{tool} failed (exit {code}): {lines[-1][:200] if lines else 'no output'}; see {log_path}"
        )
    return elapsed


def require_executable(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise VesselSegError(f"{name} not found on PATH; {install}")
    return path


# ---------------------------------------------------------------- runners


def run_nnunet(
    images_dir: str | Path,
    out_root: str | Path,
    dataset: str,
    configuration: str = "3d_fullres",
    folds: Sequence[str] = ("0", "1", "2", "3", "4"),
    trainer: str | None = None,
    plans: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
    disable_tta: bool = False,
    results_dir: str | Path | None = None,
    name: str = "nnunet",
) -> RunnerResult:
    """Predict the test images with a trained nnU-Net v2 model (``nnUNetv2_predict``)."""
    cases = sorted(find_test_images(images_dir))
    executable = require_executable("nnUNetv2_predict", NNUNET_INSTALL)
    env = dict(os.environ)
    if results_dir is not None:
        env["nnUNet_results"] = str(Path(results_dir).resolve())
    results = env.get("nnUNet_results")
    if not results:
        raise VesselSegError(
            "nnUNet_results is not set; pass --nnunet-results DIR (the folder holding DatasetNNN_Name/)"
        )
    pattern = f"Dataset{int(dataset):03d}_*" if str(dataset).isdigit() else str(dataset)
    if not list(Path(results).glob(pattern)):
        raise VesselSegError(
            f"{results}: no trained nnU-Net model {pattern}; train it or unpack its model folder there"
        )
    run_dir = Path(out_root) / "runs" / name
    raw = run_dir / "raw"
    fresh_dir(raw)
    command = nnunet_predict_command(
        Path(images_dir).resolve(),
        raw.resolve(),
        dataset,
        configuration,
        folds,
        trainer,
        plans,
        checkpoint,
        device,
        disable_tta,
        executable,
    )
    log = run_dir / "log.txt"
    elapsed = run_tool(command, log, "nnUNetv2_predict", env)
    dest = collect_outputs(raw, cases, Path(out_root) / "predictions" / name, "{case}", "nnUNetv2_predict", log)
    return RunnerResult(name, dest, elapsed, command, log)


def run_vesselfm(
    images_dir: str | Path,
    out_root: str | Path,
    weights: str | Path | None,
    config: str | Path | None = None,
    device: str | None = None,
    python: str | None = None,
    name: str = "vesselfm",
) -> RunnerResult:
    """Segment every test image zero-shot with vesselFM."""
    cases = find_test_images(images_dir)
    python = python or sys.executable
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vesselfm.seg.inference') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, check=False).returncode == 0
    except OSError:
        found = False
    if not found:
        raise VesselSegError(f"vesselFM is not importable by {python}; {VESSELFM_INSTALL} (or pass --vesselfm-python)")
    if weights is None or not Path(weights).is_file():
        raise VesselSegError(f"{weights or 'vesselFM weights'}: file not found; {VESSELFM_WEIGHTS} PATH")
    if config is not None and not Path(config).is_file():
        raise VesselSegError(f"{config}: vesselFM config not found; pass a copy of vesselfm/seg/configs/inference.yaml")
    run_dir = Path(out_root) / "runs" / name
    staged, raw = run_dir / "input", run_dir / "raw"
    ext = stage_channel0(cases, staged)
    fresh_dir(raw)
    command = vesselfm_command(
        staged.resolve(), raw.resolve(), Path(weights).resolve(), ext, Path(config) if config else None, device, python
    )
    log = run_dir / "log.txt"
    elapsed = run_tool(command, log, "vesselFM")
    dest = collect_outputs(raw, sorted(cases), Path(out_root) / "predictions" / name, "{case}_.*pred", "vesselFM", log)
    return RunnerResult(name, dest, elapsed, command, log)
