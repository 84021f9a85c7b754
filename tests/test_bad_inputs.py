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
from vessel_seg.inference.provenance import PROVENANCE_FILE

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


def _twenty_mm_case(root: Path) -> None:
    """Case c1's image and label at 20 mm spacing among 1 mm cases (a wrong header)."""
    images, label = _volume(1)
    geometry = ImageGeometry(GEOMETRY.shape, (20.0, 20.0, 20.0))
    write_image(images[0], geometry, root / "imagesTr" / "c1_0000.nii.gz")
    write_image(label, geometry, root / "labelsTr" / "c1.nii.gz")


def _overflowing_slope(root: Path) -> None:
    """c1's image as int16 NIfTI whose scl_slope makes it overflow float32."""
    import nibabel as nib

    image = nib.Nifti1Image(np.full((SIZE,) * 3, 1000, np.int16), np.eye(4))
    image.header["scl_slope"], image.header["scl_inter"] = 1e38, 0.0
    nib.save(image, str(root / "imagesTr" / "c1_0000.nii.gz"))


@dataclass
class PlanCase:
    """A raw dataset made broken by ``corrupt``, and the words the error line must hold."""

    corrupt: Callable[[Path], None]
    needles: tuple[str, ...]
    channels: int = 1
    ending: str = ".nii.gz"
    dataset: str = "601"
    num_cases: int = 2


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
    "one case at 20 mm among 1 mm": PlanCase(_twenty_mm_case, ("case 'c1'", "would resample", "header"), num_cases=3),
    "NIfTI scl_slope overflows float32": PlanCase(_overflowing_slope, ("c1_0000.nii.gz", "beyond what float32 holds")),
}


@pytest.fixture(scope="module")
def plan_runs(tmp_path_factory):
    """Each broken dataset planned by ``vs_plan_and_preprocess``: (result, state before, state after, roots)."""

    def job(base: Path, case: PlanCase):
        env = roots_env(base)
        root = make_raw_dataset(base / "raw", 601, num_cases=case.num_cases, channels=case.channels, ending=case.ending)
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


def _set(*keys: str, value) -> Callable[[dict], None]:
    """An edit of the 3d_fullres configuration (or the top level with keys[0] == '/') of a plans dict."""
    def edit(plans: dict) -> None:
        node = plans if keys[0] == "/" else plans["configurations"]["3d_fullres"]
        path = keys[1:] if keys[0] == "/" else keys
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


PLANS_EDITS = {
    "negative patch": (_set("patch_size", value=[-16, 16, 16]), "patch_size"),
    "zero patch": (_set("patch_size", value=[0, 16, 16]), "patch_size"),
    "patch not divisible": (_set("patch_size", value=[17, 16, 16]), "divisible"),
    "stride 3": (_set("network", "strides", value=[[1, 1, 1], [3, 3, 3]]), "strides"),
    "spacing 0": (_set("spacing", value=[0.0, 1.0, 1.0]), "spacing"),
    "batch 1e400": (_set("batch_size", value=float("inf")), "invalid plans file"),
    "batch 0": (_set("batch_size", value=0), "batch_size"),
    "batch -2": (_set("batch_size", value=-2), "batch_size"),
    "spline order 9": (_set("resampling_order_image", value=9), "resampling orders"),
    "label without background": (_set("/", "labels", value={"vessel": 1, "artery": 2}), "labels"),
    "an extra label": (_set("/", "labels", value={"background": 0, "vessel": 1, "artery": 2}), "differ from dataset.json"),
}


def test_train_rejects_hand_edited_plans(model):
    base, env = model
    dataset_dir = next((base / "preprocessed").glob(f"Dataset{MODEL_ID}_*"))
    source = json.loads((dataset_dir / "cpu.json").read_text())
    jobs = {}
    for k, (name, (edit, _)) in enumerate(PLANS_EDITS.items()):
        plans = json.loads(json.dumps(source))
        edit(plans)
        text = json.dumps(plans).replace("Infinity", "1e400")  # JSON as a user would write it
        (dataset_dir / f"edited{k}.json").write_text(text)
        jobs[name] = lambda k=k: run(command("train", str(MODEL_ID), "3d_fullres", "0", "-pl", f"edited{k}", "--epochs", "1"), env)
    before = snapshot(base / "results")
    for name, proc in run_all(jobs).items():
        assert proc.returncode == 2, name
        assert_one_line_error(proc, "edited", PLANS_EDITS[name][1])
    assert snapshot(base / "results") == before


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


def _fifty_mm(folder: Path) -> tuple[Path, tuple[str, ...]]:
    """A 32^3 case whose header says 50 mm (the model works at 1 mm): 1.25e5x the voxels."""
    images, _ = _volume(0, 2)
    for c, image in enumerate(images):
        write_image(image, ImageGeometry(GEOMETRY.shape, (50.0, 50.0, 50.0)), folder / f"big_{c:04d}.nii.gz")
    return folder, ("big_0000.nii.gz", "would resample", "GiB", "header")


def _two_frames(folder: Path) -> tuple[Path, tuple[str, ...]]:
    """Channel 0 as NIfTI whose sform is 10 mm away from its qform (tools would disagree on its place)."""
    import nibabel as nib

    first, _ = _write_case(folder, "q")
    image = nib.load(str(first))
    original = image.affine.copy()
    shifted = original.copy()
    shifted[0, 3] += 10.0
    image.set_qform(original, code=1)
    image.set_sform(shifted, code=1)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), None, image.header), str(first))
    return folder, ("q_0000.nii.gz", "qform and sform disagree")


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
    "50 mm header spacing": PredictCase(_fifty_mm),
    "NIfTI qform and sform disagree": PredictCase(_two_frames),
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
    record = out / PROVENANCE_FILE  # "a" is done once its mask exists and is recorded as this model's

    def a_done() -> bool:
        return (out / "a.nii.gz").exists() and record.exists() and '"a"' in record.read_text()

    while not a_done() and process.poll() is None and time.monotonic() < deadline:
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
    assert all(TEMP_MARKER in p.name for p in out.iterdir() if p.name.startswith(".") and p.name != PROVENANCE_FILE)


# ---------------------------------------------------------------- vs_ensemble


def _probability_folders(base: Path) -> list[Path]:
    """Two prediction folders with probabilities of cases p0 and p1 (8^3, labels 0/1)."""
    from vessel_seg.inference.ensemble import save_probabilities

    geometry = ImageGeometry((8, 8, 8), (1.0, 1.0, 1.0))
    folders = [base / "fold_a", base / "fold_b"]
    for k, folder in enumerate(folders):
        for case in ("p0", "p1"):
            fg = np.random.default_rng(k).uniform(0, 1, (8, 8, 8)).astype(np.float32)
            save_probabilities(folder / f"{case}.npz", np.stack([1 - fg, fg]), [0, 1], geometry, ".nii.gz")
    return folders


def _truncated_npz(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-300])


def _flipped_npz(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the compressed probabilities: a CRC error
    path.write_bytes(bytes(data))


def _bad_geometry_npz(path: Path) -> None:
    with np.load(path) as data:
        arrays = dict(data)
    arrays["geometry"] = np.asarray(json.dumps({"shape": "eight", "spacing": None}))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


ENSEMBLE_DAMAGE = {"truncated .npz": _truncated_npz, "flipped byte (CRC)": _flipped_npz, "bad geometry JSON": _bad_geometry_npz}


def test_ensemble_checks_every_input_before_writing(tmp_path):
    env = roots_env(tmp_path)
    jobs, bases = {}, {}
    for name, damage in ENSEMBLE_DAMAGE.items():
        base = bases[name] = tmp_path / name.replace(" ", "_")
        folders = _probability_folders(base)
        damage(folders[1] / "p1.npz")  # the second case: p0 would be written first without the checks
        jobs[name] = lambda f=folders, b=base: (
            snapshot(b), run(command("ensemble", "-i", *map(str, f), "-o", str(b / "out")), env), snapshot(b)
        )
    for name, (before, proc, after) in run_all(jobs).items():
        assert_one_line_error(proc, "p1.npz")
        assert after == before, name  # no mask of p0, no output folder


def test_refused_pretrained_checkpoint_leaves_no_model_folder(model, tmp_path):
    base, env = model
    foreign = tmp_path / "tensors.pt"
    import torch

    torch.save({"weight": torch.zeros(3)}, foreign)  # a tensor-only file, no vessel_seg checkpoint
    before = snapshot(base / "results", base / "preprocessed")
    proc = run(command("train", str(MODEL_ID), "3d_fullres", "1", "-pl", "cpu", "--pretrained", str(foreign),
                       "--epochs", "1"), env)
    assert_one_line_error(proc, "tensors.pt", "network_weights")
    assert snapshot(base / "results", base / "preprocessed") == before


# ---------------------------------------------------------------- disks that fill up, targets that refuse


def _blocked(base: Path) -> Path:
    """A target no one can create (below a regular file): read-only even for root."""
    (base / "a_file").write_text("x")
    return base / "a_file" / "target"


def _no_temporaries(base: Path) -> bool:
    return not [p for p in base.rglob("*") if TEMP_MARKER in p.name]


def test_full_disk_and_unwritable_targets_fail_in_one_line(tmp_path):
    jobs = {}
    plan_base = tmp_path / "plan"
    env_plan = roots_env(plan_base)
    make_raw_dataset(plan_base / "raw", 601, num_cases=3)
    jobs["plan, disk full"] = lambda: run(command("plan_and_preprocess", "-d", "601", "-pl", "cpu", "-np", "1",
                                                  file_size_limit=20_000), env_plan)
    synth_base = tmp_path / "synth"
    env_synth = roots_env(synth_base)
    env_synth["VS_RAW"] = str(_blocked(synth_base))
    jobs["generate into a blocked folder"] = lambda: run(command("generate_synthetic", "-d", "602", "--cases", "2",
                                                                 "--size", "32"), env_synth)
    eval_base = tmp_path / "eval"
    env_eval = roots_env(eval_base)
    for folder in ("ref", "pred"):
        _, label = _volume(0)
        (eval_base / folder).mkdir(parents=True)
        write_image(label, GEOMETRY, eval_base / folder / "c0.nii.gz")
    jobs["evaluate into a blocked folder"] = lambda: run(command(
        "evaluate", "-ref", str(eval_base / "ref"), "-pred", str(eval_base / "pred"), "-o", str(_blocked(eval_base))), env_eval)
    blocked_plan = tmp_path / "plan_blocked"
    env_blocked = roots_env(blocked_plan)
    make_raw_dataset(blocked_plan / "raw", 601, num_cases=2)
    env_blocked["VS_PREPROCESSED"] = str(_blocked(blocked_plan))
    jobs["plan into a blocked folder"] = lambda: run(command("plan_and_preprocess", "-d", "601", "-pl", "cpu", "-np", "1"),
                                                     env_blocked)
    export_base = tmp_path / "export"
    env_export = roots_env(export_base)
    trained = export_base / "results" / "Dataset603_E" / "vsTrainer__cpu__3d_fullres"
    (trained / "fold_0").mkdir(parents=True)
    (trained / "plans.json").write_text("{}")
    import torch

    torch.save({"network_weights": {"w": torch.zeros(1)}, "metadata": {}}, trained / "fold_0" / "checkpoint_final.pt")
    export = [sys.executable, "-c", "import sys; from vessel_seg.cli.model_sharing import export_main; "
              "sys.exit(export_main(sys.argv[1:]))", "603", "-o", str(_blocked(export_base) / "m.zip")]
    jobs["export into a blocked folder"] = lambda: run(export, env_export)
    results = run_all(jobs)
    assert_one_line_error(results["plan into a blocked folder"], "a_file")
    assert_one_line_error(results["export into a blocked folder"], "a_file")
    plan = results["plan, disk full"]  # progress lines come first here; the error is the last line, alone
    assert plan.returncode == 2 and "Traceback" not in plan.stderr, plan.stderr
    last = plan.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "c0.npy" in last and "free disk space" in last, last
    assert_one_line_error(results["generate into a blocked folder"], "a_file")
    assert_one_line_error(results["evaluate into a blocked folder"], "a_file")
    for base in (plan_base, synth_base, eval_base, blocked_plan, export_base):
        assert _no_temporaries(base)
