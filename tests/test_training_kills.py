"""A training run survives SIGTERM and SIGKILL: the latest checkpoint after every epoch, a clean stop that says
how to resume, ``--continue`` from the last completed epoch, and no data worker left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.planners.pipeline import plan_and_preprocess
from vessel_seg.trainers.settings import TrainingSettings
from vessel_seg.trainers.stop_request import StopRequest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("kills")
    env = {f"VS_{n.upper()}": str(base / n) for n in ("raw", "preprocessed", "results")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        generate_dataset(31, 4, num_test_cases=0, size=32, seed=5)
        plan_and_preprocess(31, plans_name="cpu", num_workers=1)
    return base, {**os.environ, **env, "OMP_NUM_THREADS": "1"}


def _fold(base: Path, fold: int | str = 0) -> Path:
    return base / "results" / "Dataset031_Synthetic" / "vsTrainer__cpu__3d_fullres" / f"fold_{fold}"


def _train(env, *extra, epochs: int = 40, fold: int | str = 0) -> subprocess.Popen:
    argv = [sys.executable, "-m", "vessel_seg.cli.train", "31", "3d_fullres", str(fold), "-pl", "cpu", "--epochs", str(epochs),
            "--iterations-per-epoch", "3", "--val-iterations", "1", "--num-workers", "2", "--no-final-validation", *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _epochs_logged(fold: Path) -> list[int]:
    path = fold / "training_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def _wait_for_epochs(fold: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(_epochs_logged(fold)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training did not reach its epochs in time"
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_latest_checkpoint_is_saved_after_every_epoch_by_default():
    assert TrainingSettings().checkpoint_every == 1


def test_stop_request_records_the_first_signal_and_insists_on_the_second():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is not stop._handle  # restored


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_saves_and_says_how_to_resume_then_continue_picks_up_the_next_epoch(dataset):
    base, env = dataset
    fold = _fold(base)
    process = _train(env)
    _wait_for_epochs(fold, 2, process)
    workers = _children(process.pid)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "--continue" in lines[0], err
    completed = len(_epochs_logged(fold))
    from vessel_seg.checkpoint import load_checkpoint

    assert load_checkpoint(fold / "checkpoint_latest.pt")["epoch"] == completed
    time.sleep(1.0)
    assert not any(_alive(pid) for pid in workers), "data workers outlived their trainer"
    resumed = _train(env, "--continue", epochs=completed + 1)
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    assert _epochs_logged(fold) == list(range(completed + 1))  # the next epoch, and the curve goes on


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_trainer_takes_its_workers_and_continue_resumes(dataset):
    base, env = dataset
    process = _train(env, fold=1)
    _wait_for_epochs(fold := _fold(base, 1), 1, process)
    deadline = time.monotonic() + 30
    while len(_children(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = _children(process.pid)
    assert len(workers) >= 2
    process.kill()
    process.communicate()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "data workers outlived a SIGKILLed trainer"
    completed = len(_epochs_logged(fold))
    resumed = _train(env, "--continue", epochs=completed + 1, fold=1)
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    assert "starting from scratch" not in err
    assert _epochs_logged(fold)[-1] == completed


def test_sigterm_of_planning_is_one_line(tmp_path):
    env = {**os.environ, "VS_RAW": str(tmp_path / "raw"), "VS_PREPROCESSED": str(tmp_path / "pre"),
           "VS_RESULTS": str(tmp_path / "res")}
    generate_dataset(32, 6, num_test_cases=0, size=64, seed=1, raw_root=tmp_path / "raw")
    process = subprocess.Popen([sys.executable, "-m", "vessel_seg.cli.plan_and_preprocess", "-d", "32", "-pl", "cpu",
                                "-np", "1"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "pre").glob("Dataset032_*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the fingerprint has started: the command is at work
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("planning finished before the signal arrived")
    assert process.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: stopped by SIGTERM") and "Traceback" not in err


def test_continue_with_fewer_epochs_than_done_is_one_line(dataset):
    base, env = dataset
    first = _train(env, epochs=2, fold=2)
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    again = _train(env, "--continue", epochs=1, fold=2)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and "already at epoch 2, past --epochs 1" in err and "Traceback" not in err


def test_a_second_training_of_the_same_fold_is_refused_naming_the_first(dataset):
    base, env = dataset
    first = _train(env, epochs=40, fold=3)
    _wait_for_epochs(_fold(base, 3), 1, first)
    second = _train(env, epochs=40, fold=3)
    _, err = second.communicate(timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert second.returncode == 2, err
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and f"process {first.pid}" in line[0] and "fold_3" in line[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_trainer_whose_workers_are_all_killed_ends_in_one_line(dataset, sig):
    base, env = dataset
    fold = _fold(base, "all")
    for name in ("training_log.jsonl",):  # each parameter starts a fresh run in fold "all"
        (fold / name).unlink(missing_ok=True)
    process = _train(env, fold="all")
    _wait_for_epochs(fold, 1, process)
    deadline = time.monotonic() + 30
    while len(_children(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _children(process.pid):
        os.kill(pid, sig)
    _, err = process.communicate(timeout=90)  # it used to hang for ever draining a half-written queue
    assert process.returncode == 2, err[-800:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "data-loading worker failed" in lines[0], err[-800:]
