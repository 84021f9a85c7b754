"""Patch sampling from the case store, and background workers that deliver, time and fail loudly."""

from __future__ import annotations

import os
import pickle
import signal
import time

import numpy as np
import pytest
import torch

from vessel_seg.case_store import CaseProperties, save_case
from vessel_seg.errors import DatasetError
from vessel_seg.imageio.geometry import ImageGeometry
from vessel_seg.planners.plans import ConfigurationPlan, NetworkTopology
from vessel_seg.trainers.augmentation import training_transforms, validation_transforms
from vessel_seg.trainers.background import BackgroundBatches, DataWorkerError, WaitTimer
from vessel_seg.trainers.dataloading import PatchLoader, crop_with_padding, foreground_sample_count


def write_case(folder, case_id, seg, channels=1, value=None, seed=0):
    """Store a case with image noise (or a constant ``value``) and class locations taken from ``seg``."""
    shape = seg.shape
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(channels, *shape)) if value is None else np.full((channels, *shape), value)
    locations = {str(v): np.argwhere(seg == v).tolist() for v in np.unique(seg) if v > 0}
    props = CaseProperties(
        case_id, ImageGeometry(shape, (1.0, 1.0, 1.0)), [[0, s] for s in shape], list(shape), list(shape),
        [1.0, 1.0, 1.0], locations,
    )
    save_case(folder, data.astype(np.float32), seg.astype(np.uint8), props)


def plan(patch_size, batch_size, dim=3):
    network = NetworkTopology(dim, [8, 16], [[3] * dim] * 2, [[1] * dim, [2] * dim], [1, 1], [1])
    return ConfigurationPlan(
        "3d_fullres" if dim == 3 else "2d", "data", [1.0, 1.0, 1.0], [32, 32, 32], list(patch_size), batch_size,
        ["zscore"], network,
    )


@pytest.fixture
def tiny_vessel(tmp_path):
    """A 32^3 case whose only vessel is 3 voxels long."""
    seg = np.zeros((32, 32, 32), np.uint8)
    seg[20, 5, 9:12] = 1
    write_case(tmp_path, "vessel", seg)
    return tmp_path


def test_foreground_sample_count_rule():
    rng = np.random.default_rng(0)
    assert [foreground_sample_count(b, 1 / 3, rng) for b in (2, 3, 4, 5, 12)] == [1, 1, 1, 2, 4]
    assert foreground_sample_count(4, 0.0, rng) == 0
    singles = [foreground_sample_count(1, 1 / 3, rng) for _ in range(600)]
    assert set(singles) == {0, 1} and 0.25 < np.mean(singles) < 0.42


def test_crop_with_padding_pads_outside_the_array():
    array = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    out = crop_with_padding(array, (-1, 3), (3, 4), pad_value=-7)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out[:, 1:, :2], array[:, :2, 3:])
    assert (out[:, 0] == -7).all() and (out[:, :, 2:] == -7).all()
    assert (crop_with_padding(array, (10, 10), (2, 2), 0) == 0).all()


def test_oversampling_finds_a_tiny_vessel_in_every_batch(tiny_vessel):
    loader = PatchLoader.from_plan(tiny_vessel, ["vessel"], plan((8, 8, 8), 3), seed=1)
    for _ in range(20):
        batch = next(loader)
        assert batch["data"].shape == (3, 1, 8, 8, 8) and batch["data"].dtype == np.float32
        assert batch["target"].shape == (3, 1, 8, 8, 8) and batch["target"].dtype == np.uint8
        assert batch["target"][-1].any()  # the last sample is the foreground-centred one
    random_only = PatchLoader(tiny_vessel, ["vessel"], (8, 8, 8), 3, oversample_foreground=0, seed=1)
    assert np.mean([next(random_only)["target"].any() for _ in range(20)]) < 0.5


def test_foreground_stays_in_the_final_crop_of_a_larger_sample_patch(tmp_path):
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[0, 19, 0] = 1  # at the border: the sample patch must reach past the image
    write_case(tmp_path, "corner", seg)
    loader = PatchLoader(tmp_path, ["corner"], (8, 8, 8), 2, sample_patch_size=(14, 16, 12), seed=0)
    for _ in range(10):
        target = next(loader)["target"][-1, 0]
        start = [(s - p) // 2 for s, p in zip(target.shape, (8, 8, 8), strict=True)]  # the spatial transform's centre crop
        assert target[start[0]:start[0] + 8, start[1]:start[1] + 8, start[2]:start[2] + 8].any()


def test_patches_larger_than_the_case_are_padded_with_zeros(tmp_path):
    seg = np.zeros((6, 10, 12), np.uint8)
    seg[3, 5, :] = 1
    write_case(tmp_path, "small", seg, value=2.0)
    loader = PatchLoader(tmp_path, ["small"], (16, 16, 16), 2, seed=0)
    for _ in range(5):
        batch = next(loader)
        assert batch["data"].shape == (2, 1, 16, 16, 16)
        # the whole image fits inside the patch: every image voxel once, zeros elsewhere
        assert np.count_nonzero(batch["data"][0]) == 6 * 10 * 12 and set(np.unique(batch["data"])) == {0.0, 2.0}
        assert int(batch["target"][0].sum()) == 12


def test_2d_configuration_samples_slices(tmp_path):
    seg = np.zeros((5, 20, 24), np.uint8)
    seg[3, 2:4, 20:23] = 1  # vessel only in slice z=3
    write_case(tmp_path, "slices", seg, channels=2)
    loader = PatchLoader.from_plan(tmp_path, ["slices"], plan((16, 16), 2, dim=2), seed=0)
    assert loader.dim == 2 and loader.num_image_channels == 2
    for _ in range(10):
        batch = next(loader)
        assert batch["data"].shape == (2, 2, 16, 16) and batch["target"].shape == (2, 1, 16, 16)
        assert batch["target"][1].any()


def test_case_without_labels_falls_back_to_random_patches(tmp_path):
    write_case(tmp_path, "empty", np.zeros((16, 16, 16), np.uint8))
    loader = PatchLoader(tmp_path, ["empty"], (8, 8, 8), 2, oversample_foreground=1.0, seed=0)
    batch = next(loader)
    assert batch["data"].shape == (2, 1, 8, 8, 8) and not batch["target"].any()
    assert batch["data"].std() > 0.5  # real image content, not padding


def test_seeded_loaders_repeat_their_batches(tiny_vessel):
    batches = [next(PatchLoader(tiny_vessel, ["vessel"], (8, 8, 8), 2, seed=3)) for _ in range(2)]
    np.testing.assert_array_equal(batches[0]["data"], batches[1]["data"])


def test_cascade_adds_one_hot_channels_per_previous_label(tmp_path):
    seg = np.zeros((16, 16, 16), np.uint8)
    seg[8, 8, 2:14] = 1
    write_case(tmp_path / "cases", "c", seg, channels=2)
    previous = np.zeros_like(seg)
    previous[4:12, 4:12, 4:12] = 1
    previous[6, 6, 6] = 2
    (tmp_path / "prev").mkdir()
    np.save(tmp_path / "prev" / "c.npy", previous)

    loader = PatchLoader(tmp_path / "cases", ["c"], (16, 16, 16), 2, previous_stage_dir=tmp_path / "prev", seed=0)
    raw = next(loader)
    assert raw["target"].shape == (2, 2, 16, 16, 16)
    batch = validation_transforms((16, 16, 16), cascade_labels=[1, 2], num_image_channels=2).transform(**raw)
    assert tuple(batch["data"].shape) == (2, 4, 16, 16, 16) and tuple(batch["target"].shape) == (2, 1, 16, 16, 16)
    assert batch["data"].dtype == np.float32 and batch["target"].dtype == np.uint8
    np.testing.assert_array_equal(batch["data"][0, 2], (previous == 1).astype(np.float32))
    assert batch["data"][0, 3].sum() == 1

    train = training_transforms((8, 8, 8), (1, 1, 1), cascade_labels=[1, 2], num_image_channels=2)
    augmented = train.transform(**next(PatchLoader(
        tmp_path / "cases", ["c"], (8, 8, 8), 2, sample_patch_size=train.sample_patch_size,
        previous_stage_dir=tmp_path / "prev",
    )))
    assert augmented["data"].shape == (2, 4, 8, 8, 8) and set(np.unique(augmented["data"][:, 2:])) <= {0, 1}


def test_missing_files_are_user_errors(tmp_path):
    write_case(tmp_path, "c", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="missing"):
        PatchLoader(tmp_path, ["c", "ghost"], (8, 8, 8), 2)
    with pytest.raises(DatasetError, match="previous-stage"):
        PatchLoader(tmp_path, ["c"], (8, 8, 8), 2, previous_stage_dir=tmp_path / "nowhere")
    (tmp_path / "prev").mkdir()
    np.save(tmp_path / "prev" / "c.npy", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="differs"):
        next(PatchLoader(tmp_path, ["c"], (8, 8, 8), 2, previous_stage_dir=tmp_path / "prev"))


def test_wait_timer_measures_time_inside_next():
    timer = WaitTimer()

    def slow():
        while True:
            time.sleep(0.02)
            yield 1

    iterator = slow()
    for _ in range(3):
        timer.timed_next(iterator)
    assert timer.count == 3 and 0.015 < timer.mean < 0.5
    timer.reset()
    assert timer.mean == 0.0 and timer.count == 0


def test_in_process_batches(tiny_vessel):
    loader = PatchLoader(tiny_vessel, ["vessel"], (8, 8, 8), 2, seed=0)
    with BackgroundBatches(loader, validation_transforms((8, 8, 8)).transform, num_workers=0) as batches:
        batch = next(batches)
        assert isinstance(batch["data"], torch.Tensor) and batch["target"].dtype == torch.float32
        assert tuple(batch["data"].shape) == (2, 1, 8, 8, 8)
        assert batches.pop_mean_wait() >= 0 and batches.timer.count == 0


@pytest.mark.parametrize("deterministic", [False, True])
def test_two_workers_deliver_augmented_batches_and_close_cleanly(tiny_vessel, deterministic):
    aug = training_transforms((16, 16, 16), (1, 1, 1))
    loader = PatchLoader(tiny_vessel, ["vessel"], (16, 16, 16), 2, sample_patch_size=aug.sample_patch_size)
    batches = BackgroundBatches(loader, aug.transform, num_workers=2, seed=5, deterministic=deterministic).start()
    pids = batches.worker_pids
    assert len(pids) == 2 and os.getpid() not in pids
    data = [next(batches)["data"] for _ in range(4)]
    assert all(tuple(d.shape) == (2, 1, 16, 16, 16) for d in data)
    assert not all(np.array_equal(data[0], d) for d in data[1:])  # workers do not repeat each other
    assert batches.timer.count == 4 and batches.pop_mean_wait() >= 0
    start = time.perf_counter()
    batches.close()
    assert time.perf_counter() - start < 5
    processes = batches._augmenter._processes
    assert not processes  # the augmenter joined and forgot them
    for pid in pids:  # and they are gone (reaped, not zombies)
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_seeded_deterministic_workers_repeat_the_batch_sequence(tiny_vessel):
    aug = training_transforms((8, 8, 8), (1, 1, 1))
    runs = []
    for _ in range(2):
        loader = PatchLoader(tiny_vessel, ["vessel"], (8, 8, 8), 2, sample_patch_size=aug.sample_patch_size, seed=9)
        with BackgroundBatches(loader, aug.transform, num_workers=2, seed=9, deterministic=True) as batches:
            runs.append([next(batches)["data"].numpy() for _ in range(4)])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


class FailingTransform:
    """Passes one batch per worker through, then raises."""

    def __init__(self):
        self.calls = 0

    def __call__(self, **batch):
        self.calls += 1
        if self.calls > 1:
            raise ValueError("broken transform")
        return batch


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_worker_exception_raises_instead_of_hanging(tiny_vessel, capfd):
    loader = PatchLoader(tiny_vessel, ["vessel"], (8, 8, 8), 1, seed=0)
    start = time.perf_counter()
    with BackgroundBatches(loader, FailingTransform(), num_workers=2) as batches, pytest.raises(DataWorkerError):
        for _ in range(20):
            next(batches)
    assert time.perf_counter() - start < 10
    assert "broken transform" in capfd.readouterr().err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_killed_worker_raises_instead_of_hanging(tiny_vessel):
    loader = PatchLoader(tiny_vessel, ["vessel"], (8, 8, 8), 1, seed=0)
    with BackgroundBatches(loader, None, num_workers=2) as batches:
        next(batches)
        os.kill(batches.worker_pids[0], signal.SIGKILL)
        start = time.perf_counter()
        with pytest.raises(DataWorkerError, match="SIGKILL"):
            for _ in range(1000):  # the queue may still hold a few batches
                next(batches)
        assert time.perf_counter() - start < 10


def test_loader_pickles_without_its_memory_maps(tiny_vessel):
    loader = PatchLoader(tiny_vessel, ["vessel"], (8, 8, 8), 2, seed=0)
    next(loader)  # opens the case's memory maps
    clone = pickle.loads(pickle.dumps(loader))
    assert len(pickle.dumps(loader)) < 32**3  # the volume itself is not copied
    assert next(clone)["data"].shape == (2, 1, 8, 8, 8)
