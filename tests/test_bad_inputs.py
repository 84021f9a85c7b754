"""The bad-input matrix: every console command, fed broken data, fails with one clear line and writes nothing.

Each case runs the real command in a subprocess (``python -m vessel_seg.cli.<module>``) and checks
the exit code, that stderr holds exactly one ``error: ...`` line naming the offending file (or
dataset, or fold) without a traceback, and that no output file was created or changed. The
commands of one group run two at a time (each imports torch), so the file stays fast on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from training_helpers import quick

from vessel_seg.atomic import TEMP_MARKER
from vessel_seg.imageio import ImageGeometry, write_image

MODEL_ID = 731
SIZE = 32
GEOMETRY = ImageGeometry((SIZE, SIZE, SIZE), (1.0, 1.0, 1.0))
PARALLEL = 2  # subprocesses at a time: the machine has 2 cores


# ---------------------------------------------------------------- helpers


def _volume(seed: int, channels: int = 1, size: int = SIZE) -> tuple[list[np.ndarray], np.ndarray]:
    """Image channels (noise around a bright tube) and the tube's uint8 label, ``size``^3 voxels."""
    rng = np.random.default_rng(seed)
    _, yy, xx = np.mgrid[:size, :size, :size]
    label = (((yy - size // 2 - seed % 3) ** 2 + (xx - size // 2) ** 2) < 9).astype(np.uint8)
    images = [(rng.normal(100, 20, label.shape) + 200 * label).astype(np.float32) for _ in range(channels)]
    return images, label


def make_raw_dataset(raw: Path, dataset_id: int, num_cases: int = 2, channels: int = 1, ending: str = ".nii.gz") -> Path:
    """A raw nnU-Net-layout dataset of ``num_cases`` ``SIZE``^3 cases ``c0, c1, ...``; returns its folder."""
    root = raw / f"Dataset{dataset_id:03d}_Bad"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for k in range(num_cases):
        images, label = _volume(k, channels)
        for c, image in enumerate(images):
            write_image(image, GEOMETRY, root / "imagesTr" / f"c{k}_{c:04d}{ending}")
        write_image(label, GEOMETRY, root / "labelsTr" / f"c{k}{ending}")
    dataset = {
        "channel_names": {str(c): "CT" if c == 0 else "MR" for c in range(channels)},
        "labels": {"background": 0, "vessel": 1},
        "numTraining": num_cases,
        "file_ending": ending,
    }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def roots_env(base: Path) -> dict[str, str]:
    """The environment of a subprocess whose VS_RAW / VS_PREPROCESSED / VS_RESULTS live under ``base``."""
    env = dict(os.environ)
    env.update({f"VS_{n.upper()}": str(base / n) for n in ("raw", "preprocessed", "results")})
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for n in ("raw", "preprocessed", "results"):
        (base / n).mkdir(parents=True, exist_ok=True)
    return env


def command(module: str, *args: str, file_size_limit: int | None = None) -> list[str]:
    """``python -m vessel_seg.cli.<module> args``; with ``file_size_limit``, no file may grow beyond that many bytes.

    The limit (RLIMIT_FSIZE, set in the child before the command runs) makes a write past it fail
    with EFBIG, as a full disk fails with ENOSPC; SIGXFSZ is ignored so that the write raises
    instead of killing the process.
    """
    if file_size_limit is None:
        return [sys.executable, "-m", f"vessel_seg.cli.{module}", *args]
    launcher = (
        "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, {file_size_limit})); "
        f"runpy.run_module('vessel_seg.cli.{module}', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", launcher, *args]


def run(argv: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, **kwargs)


def snapshot(*folders: Path) -> dict[str, tuple[int, str]]:
    """Every file (hidden ones included) and folder under ``folders``: path -> (mtime_ns, sha256)."""
    state = {}
    for folder in folders:
        if not folder.exists():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_dir():
                state[str(path)] = (0, "dir")
            else:
                state[str(path)] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, and stderr is a single ``error:`` line holding every needle."""
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode != 0, report
    assert "Traceback" not in proc.stderr, report
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), report
    for needle in needles:
        assert needle in lines[0], f"{needle!r} missing from: {lines[0]}"
    return lines[0]


def run_all(jobs: dict[str, Callable[[], object]]) -> dict[str, object]:
    """Run independent jobs ``PARALLEL`` at a time; the results by name."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


# ---------------------------------------------------------------- vs_plan_and_preprocess


def _rewrite_label(root: Path, label: np.ndarray | None = None, **geometry) -> None:
    _, default = _volume(1)
    label = default if label is None else label
    geo = ImageGeometry(tuple(label.shape), **{"spacing": (1.0, 1.0, 1.0), **geometry})
    write_image(label, geo, root / "labelsTr" / "c1.nii.gz")


def _set_image_value(value: float) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        images, _ = _volume(1)
        images[0][3, 4, 5] = value
        write_image(images[0], GEOMETRY, root / "imagesTr" / "c1_0000.nii.gz")

    return corrupt


def _truncate(path_in_root: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / path_in_root
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return corrupt


def _random_bytes(path_in_root: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        (root / path_in_root).write_bytes(np.random.default_rng(0).bytes(4096))

    return corrupt


def _edit_json(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        data = json.loads((root / "dataset.json").read_text())
        edit(data)
        (root / "dataset.json").write_text(json.dumps(data))

    return corrupt


@dataclass
class PlanCase:
    """A raw dataset made broken by ``corrupt``, and the words the error line must hold."""

    corrupt: Callable[[Path], None]
    needles: tuple[str, ...]
    channels: int = 1
    ending: str = ".nii.gz"
    dataset: str = "601"


PLAN_CASES = {
    "truncated image": PlanCase(_truncate("imagesTr/c1_0000.nii.gz"), ("c1_0000.nii.gz", "cannot read")),
    "truncated label": PlanCase(_truncate("labelsTr/c1.nii.gz"), ("labelsTr/c1.nii.gz", "cannot read")),
    "random bytes .nii.gz": PlanCase(_random_bytes("imagesTr/c1_0000.nii.gz"), ("c1_0000.nii.gz", "cannot read")),
    "random bytes .nrrd": PlanCase(_random_bytes("imagesTr/c1_0000.nrrd"), ("c1_0000.nrrd", "cannot read"), ending=".nrrd"),
    "empty file": PlanCase(lambda root: (root / "labelsTr" / "c1.nii.gz").write_bytes(b""), ("c1.nii.gz", "empty")),
    "shape mismatch": PlanCase(
        lambda root: _rewrite_label(root, np.zeros((SIZE, SIZE, SIZE - 2), np.uint8)), ("c1.nii.gz", "shape")
    ),
    "spacing mismatch": PlanCase(lambda root: _rewrite_label(root, spacing=(1.0, 1.0, 2.0)), ("c1.nii.gz", "spacing")),
    "origin mismatch": PlanCase(lambda root: _rewrite_label(root, origin=(5.0, 0.0, 0.0)), ("c1.nii.gz", "origin")),
    "undeclared label value": PlanCase(
        lambda root: _rewrite_label(root, _volume(1)[1] * 2), ("c1.nii.gz", "[2]", "not declared")
    ),
    "NaN voxel": PlanCase(_set_image_value(np.nan), ("c1_0000.nii.gz", "NaN")),
    "Inf voxel": PlanCase(_set_image_value(np.inf), ("c1_0000.nii.gz", "Inf")),
    "missing channel file": PlanCase(
        lambda root: (root / "imagesTr" / "c1_0001.nii.gz").unlink(), ("c1_0001.nii.gz", "channel 1", "missing"), channels=2
    ),
    "dataset.json missing key": PlanCase(_edit_json(lambda d: d.pop("labels")), ("dataset.json", "'labels'")),
    "dataset.json wrong type": PlanCase(
        _edit_json(lambda d: d.update(numTraining="two")), ("dataset.json", "numTraining", "'two'")
    ),
    "dataset.json channel list": PlanCase(
        _edit_json(lambda d: d.update(channel_names=["CT"])), ("dataset.json", "channel_names")
    ),
    "dataset.json not JSON": PlanCase(
        lambda root: (root / "dataset.json").write_text("{\"labels\": "), ("dataset.json", "not valid JSON")
    ),
    "unknown dataset id": PlanCase(lambda root: None, ("no dataset with id 999",), dataset="999"),
}


@pytest.fixture(scope="module")
def plan_runs(tmp_path_factory):
    """Each broken dataset planned by ``vs_plan_and_preprocess``: (result, state before, state after, roots)."""

    def job(base: Path, case: PlanCase):
        env = roots_env(base)
        root = make_raw_dataset(base / "raw", 601, channels=case.channels, ending=case.ending)
        case.corrupt(root)
        before = snapshot(base)
        proc = run(command("plan_and_preprocess", "-d", case.dataset, "-pl", "cpu", "-np", "1"), env)
        return proc, before, snapshot(base)

    bases = {name: tmp_path_factory.mktemp("plan") for name in PLAN_CASES}
    return run_all({name: (lambda b=bases[name], c=case: job(b, c)) for name, case in PLAN_CASES.items()})


@pytest.mark.parametrize("name", list(PLAN_CASES))
def test_plan_rejects_bad_dataset(plan_runs, name):
    proc, before, after = plan_runs[name]
    assert_one_line_error(proc, *PLAN_CASES[name].needles)
    assert after == before  # nothing written: no fingerprint, no plans, no preprocessed case, no folder


def test_empty_label_case_plans_and_trains(tmp_path):
    """A case without any vessel is legal: planning and a couple of training iterations succeed."""
    env = roots_env(tmp_path)
    root = make_raw_dataset(tmp_path / "raw", 602)
    write_image(np.zeros((SIZE,) * 3, np.uint8), GEOMETRY, root / "labelsTr" / "c1.nii.gz")
    planned = run(command("plan_and_preprocess", "-d", "602", "-pl", "cpu", "-np", "1"), env)
    assert planned.returncode == 0, planned.stderr
    # Fold 'all' trains and validates on both cases, so the empty one meets the sampler and the metrics.
    settings = quick()
    trained = run(
        command(
            "train", "602", "3d_fullres", "all", "-pl", "cpu", "--epochs", str(settings.epochs),
            "--iterations-per-epoch", str(settings.iterations_per_epoch), "--val-iterations", "1",
            "--num-workers", "0", "--device", "cpu", "--no-validation-probabilities",
        ),
        env,
    )
    assert trained.returncode == 0, trained.stderr
    assert "Traceback" not in trained.stderr
    assert (tmp_path / "results" / "Dataset602_Bad" / "vsTrainer__cpu__3d_fullres" / "fold_all" / "checkpoint_final.pt").is_file()


def test_train_rejects_unknown_dataset(tmp_path):
    env = roots_env(tmp_path)
    before = snapshot(tmp_path)
    proc = run(command("train", "999", "3d_fullres", "0", "-pl", "cpu"), env)
    assert_one_line_error(proc, "no dataset with id 999")
    assert snapshot(tmp_path) == before


BAD_TRAIN_ARGS = {"--lr -1": ("--lr", "-1"), "--lr nan": ("--lr", "nan"), "--checkpoint-every 0": ("--checkpoint-every", "0")}


def test_train_rejects_bad_numbers_before_any_work(tmp_path):
    env = roots_env(tmp_path)
    before = snapshot(tmp_path)
    jobs = {name: (lambda a=args: run(command("train", "999", "3d_fullres", "0", "-pl", "cpu", *a), env))
            for name, args in BAD_TRAIN_ARGS.items()}
    for name, proc in run_all(jobs).items():
        assert proc.returncode == 2, name
        assert_one_line_error(proc, BAD_TRAIN_ARGS[name][0])
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- vs_predict


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 2-channel 3d_fullres model (fold 0, two iterations) of three 32^3 cases: the base folder and env."""
    from vessel_seg.planners.pipeline import plan_and_preprocess
    from vessel_seg.trainers.trainer import TrainingJob, train

    base = tmp_path_factory.mktemp("model")
    env = roots_env(base)
    make_raw_dataset(base / "raw", MODEL_ID, num_cases=3, channels=2)
    with pytest.MonkeyPatch.context() as mp:
        for key in ("VS_RAW", "VS_PREPROCESSED", "VS_RESULTS"):
            mp.setenv(key, env[key])
        plan_and_preprocess(MODEL_ID, plans_name="cpu", num_workers=1)
        train(TrainingJob(MODEL_ID, "3d_fullres", 0, "cpu", quick(final_validation=False)))
    return base, env


PREDICT = ("-c", "3d_fullres", "-pl", "cpu", "--disable-tta", "--device", "cpu", "-np", "1")


def _write_case(folder: Path, case: str, channels: int = 2, ending: str = ".nii.gz", seed: int = 0, size: int = SIZE) -> list[Path]:
    images, _ = _volume(seed, channels, size)
    geometry = ImageGeometry((size,) * 3, (1.0, 1.0, 1.0))
    paths = [folder / f"{case}_{c:04d}{ending}" for c in range(channels)]
    for image, path in zip(images, paths, strict=True):
        write_image(image, geometry, path)
    return paths


def _truncated(folder: Path) -> tuple[Path, tuple[str, ...]]:
    first, _ = _write_case(folder, "t")
    first.write_bytes(first.read_bytes()[:-200])
    return folder, ("t_0000.nii.gz", "cannot read")


def _random_nrrd(folder: Path) -> tuple[Path, tuple[str, ...]]:
    first, _ = _write_case(folder, "r", ending=".nrrd")
    first.write_bytes(np.random.default_rng(1).bytes(2048))
    return folder, ("r_0000.nrrd", "cannot read")


def _empty(folder: Path) -> tuple[Path, tuple[str, ...]]:
    _, second = _write_case(folder, "e")
    second.write_bytes(b"")
    return folder, ("e_0001.nii.gz", "empty")


def _nan(folder: Path) -> tuple[Path, tuple[str, ...]]:
    first, _ = _write_case(folder, "n")
    images, _ = _volume(0)
    images[0][:2] = np.nan
    write_image(images[0], GEOMETRY, first)
    return folder, ("n_0000.nii.gz", "NaN")


def _missing_channel_file(folder: Path) -> tuple[Path, tuple[str, ...]]:
    first, second = _write_case(folder, "m")
    second.unlink()
    return first, ("m_0001.nii.gz", "missing")


def _missing_channel_folder(folder: Path) -> tuple[Path, tuple[str, ...]]:
    _write_case(folder, "a")
    _, second = _write_case(folder, "m")
    second.unlink()
    return folder, ("m_0001.nii.gz", "missing")


def _one_channel(folder: Path) -> tuple[Path, tuple[str, ...]]:
    (image,) = _write_case(folder, "scan", channels=1)
    single = image.with_name("scan.nii.gz")
    image.rename(single)
    return single, ("scan.nii.gz", "expects [0, 1]")


def _three_channels(folder: Path) -> tuple[Path, tuple[str, ...]]:
    _write_case(folder, "x", channels=3)
    return folder, ("x_0002.nii.gz", "expects [0, 1]")


def _flat(folder: Path) -> tuple[Path, tuple[str, ...]]:
    flat = ImageGeometry((1, SIZE, SIZE), (1.0, 1.0, 1.0), ndim=2)
    for c in range(2):
        write_image(np.full((1, SIZE, SIZE), 100.0, np.float32), flat, folder / f"f_{c:04d}.nrrd")
    return folder, ("f_0000.nrrd", "2D image")


def _channels_off_grid(folder: Path) -> tuple[Path, tuple[str, ...]]:
    _, second = _write_case(folder, "g")
    images, _ = _volume(0)
    write_image(images[0], ImageGeometry(GEOMETRY.shape, (1.0, 1.0, 1.0), origin=(0.0, 3.0, 0.0)), second)
    return folder, ("g_0001.nii.gz", "origin")


def _ok(folder: Path) -> tuple[Path, tuple[str, ...]]:
    return _write_case(folder, "ok")[0].parent, ()


def _plain_file(folder: Path) -> tuple[Path, tuple[str, ...]]:
    """One file named without channel suffix: its mask would have the image's own name."""
    (image,) = _write_case(folder, "scan", channels=1)
    return image.rename(image.with_name("scan.nii.gz")), ("scan.nii.gz", "would be overwritten", "-o")


def _colliding_cases(folder: Path) -> tuple[Path, tuple[str, ...]]:
    """Cases "a" (a_0000, a_0001) and "a_0000" (a_0000_0000, a_0000_0001): a_0000's mask is a's image."""
    _write_case(folder, "a")
    _write_case(folder, "a_0000", seed=1)
    return folder, ("a_0000.nii.gz", "would be overwritten by the mask of case 'a_0000'")


def _two_files_one_channel(folder: Path) -> tuple[Path, tuple[str, ...]]:
    _write_case(folder, "d")
    _write_case(folder, "d", ending=".nrrd", channels=1)
    return folder, ("d_0000", "also given by")


def _input_folder(out: Path) -> Path:
    return out.parent / "in"


def _input_folder_via_dots(out: Path) -> Path:
    return out / ".." / "in"


def _new_folder(out: Path) -> Path:
    return out / "new"


def _read_only(out: Path) -> Path:
    """``out`` made read-only; as root (where that blocks nothing) a path below a regular file instead."""
    out.chmod(0o555)
    if not os.access(out, os.W_OK):
        return out
    out.chmod(0o755)
    return out / "earlier.nii.gz" / "sub"


@dataclass
class PredictCase:
    """An input built by ``make`` (returns the ``-i`` path and the words the error must hold), and how to run."""

    make: Callable[[Path], tuple[Path, tuple[str, ...]]]
    needles: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    output: Callable[[Path], Path] | None = None
    file_size_limit: int | None = None  # bytes: a full disk


PREDICT_CASES = {
    "truncated .nii.gz": PredictCase(_truncated),
    "random bytes .nrrd": PredictCase(_random_nrrd),
    "empty file": PredictCase(_empty),
    "NaN voxels": PredictCase(_nan),
    "missing channel (file input)": PredictCase(_missing_channel_file),
    "missing channel (folder input)": PredictCase(_missing_channel_folder),
    "one channel for a 2-channel model": PredictCase(_one_channel),
    "three channels for a 2-channel model": PredictCase(_three_channels),
    "2D image for a 3D model": PredictCase(_flat),
    "channels on different grids": PredictCase(_channels_off_grid),
    "unknown dataset": PredictCase(_ok, ("no dataset with id 999",), ("-d", "999")),
    "untrained fold": PredictCase(_ok, ("fold 3", "vsTrainer__cpu__3d_fullres"), ("-f", "3")),
    "output folder not writable": PredictCase(_ok, ("not writable",), output=_read_only),
    "disk full writing the mask": PredictCase(_ok, ("ok.nii.gz", "cannot write"), file_size_limit=64),
    "-o is the input file's folder, --overwrite": PredictCase(_plain_file, extra=("--overwrite",), output=_input_folder),
    "-o is the input file's folder": PredictCase(_plain_file, output=_input_folder),
    "-o reaches the input folder through ..": PredictCase(_plain_file, extra=("--overwrite",), output=_input_folder_via_dots),
    "colliding case names, -o the input folder": PredictCase(_colliding_cases, extra=("--overwrite",), output=_input_folder),
    "two files for one channel": PredictCase(_two_files_one_channel),
    "--device cuda without a GPU creates no -o": PredictCase(_ok, ("cuda",), ("--device", "cuda"), output=_new_folder),
    "disk full writing probabilities": PredictCase(
        _ok, ("ok.npz", "cannot write"), ("--save-probabilities",), file_size_limit=8192
    ),
}


def _predict_job(model, base: Path, case: PredictCase):
    """Build the input under ``base``, run vs_predict into a folder holding an earlier result; compare states."""
    model_base, env = model
    inputs, out = base / "in", base / "out"
    inputs.mkdir()
    out.mkdir()
    (out / "earlier.nii.gz").write_bytes(b"an earlier prediction")
    source, needles = case.make(inputs)
    target = case.output(out) if case.output else out
    dataset = () if "-d" in case.extra else ("-d", str(MODEL_ID))
    args = ("-i", str(source), "-o", str(target), *dataset, *PREDICT, *case.extra)
    argv = command("predict", *args, file_size_limit=case.file_size_limit)
    before = snapshot(base, model_base / "results")
    proc = run(argv, env)
    out.chmod(0o755)
    return proc, needles + case.needles, before, snapshot(base, model_base / "results")


@pytest.fixture(scope="module")
def predict_runs(model, tmp_path_factory):
    bases = {name: tmp_path_factory.mktemp("predict") for name in PREDICT_CASES}
    return run_all({name: (lambda b=bases[name], c=case: _predict_job(model, b, c)) for name, case in PREDICT_CASES.items()})


@pytest.mark.parametrize("name", list(PREDICT_CASES))
def test_predict_rejects_bad_input(predict_runs, name):
    proc, needles, before, after = predict_runs[name]
    assert_one_line_error(proc, *needles)
    assert after == before  # no mask, no temporary file, the earlier result untouched


def test_killed_prediction_leaves_no_partial_output_and_resumes(model, tmp_path):
    """SIGKILL after the first of three cases; the rerun predicts only the other two and clears old temporaries."""
    model_base, env = model
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _write_case(inputs, "a")
    for seed, case in enumerate(("b", "c"), start=1):  # larger: the run is still busy when "a" is done
        _write_case(inputs, case, seed=seed, size=64)
    argv = command("predict", "-i", str(inputs), "-o", str(out), "-d", str(MODEL_ID), *PREDICT)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "a.nii.gz").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    process.communicate()
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["a.nii.gz"], f"killed too late or too early: {visible}"
    first = (out / "a.nii.gz").stat().st_mtime_ns
    # What a kill in the middle of a write leaves behind, once old: a temporary file and a staging folder.
    old = time.time() - 2 * 3600
    leftover_file = out / f".b.nii.gz{TEMP_MARKER}dead.nii.gz"
    leftover_file.write_bytes(b"partial")
    leftover_folder = out / f"{TEMP_MARKER}dead"
    leftover_folder.mkdir()
    (leftover_folder / "b.nii.gz").write_bytes(b"partial")
    for path in (leftover_folder / "b.nii.gz", leftover_folder, leftover_file):
        os.utime(path, (old, old))

    rerun = run(argv, env)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith("2 case(s) predicted")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert (out / "a.nii.gz").stat().st_mtime_ns == first  # done before the kill: left alone
    assert not leftover_file.exists() and not leftover_folder.exists()
    # A temporary the kill itself left (it would be young) is hidden, marked, and never taken for a result.
    assert all(TEMP_MARKER in p.name for p in out.iterdir() if p.name.startswith("."))
