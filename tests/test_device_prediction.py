"""Large-volume prediction on a GPU, exercised on the CPU: the device-path decision, the device-side
path forced on the CPU against the streamed path, batched mirroring, --step-size, overlapped I/O."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn
from training_helpers import threshold_model

from vessel_seg.cli.predict import main as predict_main
from vessel_seg.errors import ImageReadError, VesselSegError
from vessel_seg.imageio import ImageGeometry, read_array, write_image
from vessel_seg.inference import device_prediction as dp
from vessel_seg.inference.case_pipeline import run_overlapped
from vessel_seg.inference.device_resampling import normalize_on_device
from vessel_seg.inference.prediction_run import PredictionOptions, predict_cases
from vessel_seg.inference.predictor import predict_image
from vessel_seg.inference.provenance import PROVENANCE_FILE
from vessel_seg.inference.sliding_window import iter_logit_slabs, mirror_combinations, mirrored_forward
from vessel_seg.planners.normalization import normalize
from vessel_seg.planners.plans import ChannelIntensity, NetworkTopology

GB = 1e9


# ------------------------------------------------------------------ decision rules (plain numbers)


def test_device_path_decision_rules():
    assert dp.choose_device_path("cuda", 10 * GB, 100 * GB).use
    assert dp.choose_device_path("mps", 10 * GB, 12.5 * GB).use  # exactly 80 % of the free memory
    assert not dp.choose_device_path("cuda", 10 * GB, 12.4 * GB).use
    assert not dp.choose_device_path("cuda", 1, None).use  # free memory unknown
    assert not dp.choose_device_path("cpu", 1, 100 * GB).use  # the CPU keeps the streamed path
    assert dp.choose_device_path("cpu", 10 * GB, None, override=True).use
    assert not dp.choose_device_path("cuda", 1, 100 * GB, override=False).use
    assert "streamed" in dp.choose_device_path("cuda", 90 * GB, 100 * GB).reason
    assert (dp.device_path_override("1"), dp.device_path_override("off"), dp.device_path_override("")) == (True, False, None)
    assert dp.device_path_override("auto") is None
    with pytest.raises(VesselSegError, match="VS_PREDICT_DEVICE_PATH"):
        dp.device_path_override("maybe")


def test_device_memory_estimate_of_a_large_volume():
    shape = (600, 512, 512)
    voxels = float(np.prod(shape))
    native = dp.estimate_device_bytes(1, shape, shape, 2, 5, (128, 128, 128), 4 * GB)
    assert 5 * voxels + 4 * GB < native < 12 * GB  # float32 input, uint8 labels, forward, 5 folds' buffers
    assert dp.estimate_device_bytes(1, shape, shape, 2, 1, (128, 128, 128), 4 * GB) < native - 2 * GB
    finer = dp.estimate_device_bytes(1, shape, (900, 600, 600), 2, 5, (128, 128, 128), 4 * GB)
    assert finer > native
    assert dp.estimate_device_bytes(2, shape, shape, 2, 5, (128, 128, 128), 4 * GB) > native  # channels
    assert dp.choose_device_path("cuda", native, 139 * GB).use  # an H200 holds it
    assert not dp.choose_device_path("cuda", native, 4 * GB).use  # a 4 GB card does not


def test_forward_batch_rules():
    assert dp.choose_forward_batch("cpu", 8, 1e6, 32 * 128 * 128, None) == (4, None)  # CPU: unchanged
    assert dp.choose_forward_batch("cuda", 8, 1e6, 32 * 128 * 128, None) == (4, None)  # free memory unknown
    # Plenty of memory: 2**23 voxels per forward = 16 tiles of 32x128x128, i.e. all 8 flips of 2 tiles.
    assert dp.choose_forward_batch("cuda", 8, 1e8, 32 * 128 * 128, 100 * GB) == (2, 16)
    assert dp.choose_forward_batch("cuda", 1, 1e8, 32 * 128 * 128, 100 * GB) == (16, 16)  # no TTA
    assert dp.choose_forward_batch("cuda", 8, 1e8, 128**3, 100 * GB) == (1, 4)  # a tile's flips in 2 forwards
    assert dp.choose_forward_batch("cuda", 8, 10 * GB, 128**3, 20 * GB) == (1, 1)  # memory-bound: one sample
    topology = NetworkTopology(3, [32, 64], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [1, 1], [1])
    small = dp.forward_bytes_per_sample(topology, (32, 64, 64), 1, 2, 2)
    assert dp.forward_bytes_per_sample(topology, (64, 64, 64), 1, 2, 2) == pytest.approx(2 * small)
    assert dp.forward_bytes_per_sample(topology, (32, 64, 64), 1, 2, 4) == pytest.approx(2 * small)


# ------------------------------------------------------------------ batched mirroring


def _conv_net(classes: int = 3) -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(0.01), nn.Conv3d(4, classes, 3, padding=1)
    ).eval()


def test_batched_mirroring_equals_one_forward_per_flip():
    net = _conv_net()
    data = torch.randn(1, 23, 30, 27)
    flips = mirror_combinations((0, 1, 2))
    tiles = torch.randn(3, 1, 8, 16, 16)
    with torch.no_grad():
        reference = sum(torch.flip(net(torch.flip(tiles, d)), d) if d else net(tiles) for d in flips)
    for samples in (None, 1, 5, 8, 24, 40):
        torch.testing.assert_close(mirrored_forward(net, tiles, flips, samples_per_forward=samples), reference)
    unbatched = torch.cat([s for _, s in iter_logit_slabs(net, data, (8, 16, 16), 3, 0.5, (0, 1, 2), tiles_per_batch=3)], 1)
    for tiles_per_batch, samples in ((3, 24), (2, 16), (1, 4), (5, 7)):
        batched = iter_logit_slabs(
            net, data, (8, 16, 16), 3, 0.5, (0, 1, 2), tiles_per_batch=tiles_per_batch, samples_per_forward=samples
        )
        torch.testing.assert_close(torch.cat([s for _, s in batched], 1), unbatched, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ device-side path forced on the CPU


def _vessel_image(shape=(24, 40, 36), seed: int = 0) -> np.ndarray:
    """Smooth tubes (raw 150-350, i.e. classes 1 and 2) on a faint background, a zero border to crop."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    zz, yy, xx = np.indices(shape)
    for _ in range(4):
        cy, cx, r = rng.uniform(8, shape[1] - 8), rng.uniform(8, shape[2] - 8), rng.uniform(2.5, 5)
        tilt = rng.uniform(-0.3, 0.3)
        image[(yy - cy - tilt * zz) ** 2 + (xx - cx) ** 2 <= r * r] += rng.uniform(150, 350)
    image = ndimage.gaussian_filter(image, 1.0) + 10.0 + rng.normal(0, 5, shape).astype(np.float32)
    image[:, :3] = 0  # cropped away by the non-zero box
    return image[None].astype(np.float32)


SPACINGS = {"joint": (1.3, 0.8, 0.9), "thick_slices": (4.0, 1.1, 1.0)}


@pytest.mark.parametrize("spacing", SPACINGS.values(), ids=SPACINGS.keys())
@pytest.mark.parametrize("order, agreement", [(3, 0.99), (1, 0.999)])
def test_device_path_matches_streamed_path(monkeypatch, spacing, order, agreement):
    model = threshold_model(order)
    image = _vessel_image()
    geometry = ImageGeometry(image.shape[1:], spacing, origin=(3.0, -2.0, 1.0))
    monkeypatch.setenv(dp.DEVICE_PATH_ENV, "0")
    streamed, _ = predict_image(model, image.copy(), geometry, use_tta=True, keep_probabilities=False)
    monkeypatch.setenv(dp.DEVICE_PATH_ENV, "1")
    device_side, _ = predict_image(model, image.copy(), geometry, use_tta=True, keep_probabilities=False)
    assert device_side.shape == streamed.shape == geometry.shape and device_side.dtype == streamed.dtype
    assert set(np.unique(streamed)) == {0, 1, 5}  # every class present, so the comparison means something
    assert (device_side == streamed).mean() >= agreement
    assert not device_side[:, :3].any()  # outside the crop box


@pytest.mark.parametrize("schemes", [["ct"], ["ct_soft"], ["zscore"]])
def test_device_normalisation_equals_the_cpu_normalisation(schemes):
    rng = np.random.default_rng(3)
    image = np.concatenate([rng.normal(100, 400, 2998), [-3000.0, 5000.0]]).astype(np.float32).reshape(1, 2, 30, 50)
    stats = {"0": ChannelIntensity(mean=120.0, std=60.0, percentile_00_5=-40.0, percentile_99_5=350.0)}
    expected = normalize(image, schemes, stats)
    got = normalize_on_device(torch.from_numpy(image.copy()), schemes, stats).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    window = (350.0 + 40.0) / 60.0  # what hard clipping leaves
    assert np.ptp(expected) > window + 2 or schemes == ["ct"]  # outliers reach the soft and z-score paths


def test_device_path_is_chosen_by_memory_and_not_for_cascades(monkeypatch):
    model = threshold_model()
    monkeypatch.delenv(dp.DEVICE_PATH_ENV, raising=False)
    assert not dp.plan_prediction(model, (1, 24, 40, 36), (1.0, 1.0, 1.0), True).device_path.use  # CPU
    monkeypatch.setattr(model, "device", torch.device("cuda"))
    monkeypatch.setattr(dp, "free_device_bytes", lambda device: 80 * GB)
    monkeypatch.setattr(dp, "mixed_precision_enabled", lambda device, requested: True)
    plan = dp.plan_prediction(model, (1, 600, 512, 512), (1.0, 1.0, 1.0), True)
    assert plan.device_path.use and plan.samples_per_forward is not None
    monkeypatch.setattr(dp, "free_device_bytes", lambda device: 1.5 * GB)  # needs about 1.5 GB
    assert not dp.plan_prediction(model, (1, 600, 512, 512), (1.0, 1.0, 1.0), True).device_path.use
    monkeypatch.setattr(model, "previous_stage", threshold_model())
    monkeypatch.setattr(dp, "free_device_bytes", lambda device: 80 * GB)
    assert "cascade" in dp.plan_prediction(model, (1, 60, 50, 50), (1.0, 1.0, 1.0), True).device_path.reason


def test_nonzero_box_without_hole_filling_is_the_box_of_the_filled_mask():
    from vessel_seg.planners.cropping import nonzero_bbox

    rng = np.random.default_rng(5)
    for _ in range(20):
        image = np.zeros((1, 14, 17, 15), np.float32)
        lo, hi = rng.integers(0, 5, 3), rng.integers(9, 14, 3)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        image[(0, *box)] = rng.random(tuple(hi - lo)) > 0.3  # a body with holes and gaps
        image[0, lo[0], lo[1]:hi[1], lo[2]:hi[2]] = 1  # one closed face
        filled = ndimage.binary_fill_holes(image[0] != 0)
        hits = [np.flatnonzero(filled.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
        assert nonzero_bbox(image) == [[int(h[0]), int(h[-1]) + 1] for h in hits]


# ------------------------------------------------------------------ --step-size


@pytest.mark.parametrize("argv", [["--step-size", "0"], ["-step_size", "1.5"], ["--step-size", "abc"], ["-step_size", "nan"]])
def test_step_size_is_validated_in_one_line(tmp_path, capsys, argv):
    assert predict_main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --step-size must be a number in (0, 1]") and "\n" not in err


def _write_cases(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        image = _vessel_image(shape=(14 + 2 * k, 30, 28), seed=k)[0]
        paths.append(write_image(image, ImageGeometry(image.shape, (1.2, 0.9, 1.1)), folder / f"case{k}_0000.nii.gz"))
    return paths


def test_step_size_reaches_the_sliding_window(tmp_path, monkeypatch):
    import vessel_seg.inference.case_prediction as case_prediction

    steps = []
    original = case_prediction.iter_logit_slabs

    def spy(*args, **kwargs):
        steps.append(kwargs["step"])
        return original(*args, **kwargs)

    monkeypatch.setattr(case_prediction, "iter_logit_slabs", spy)
    _write_cases(tmp_path / "in", 1)
    predict_cases([threshold_model()], tmp_path / "in", tmp_path / "out", PredictionOptions(use_tta=False, step_size=0.75))
    assert steps == [0.75]
    with pytest.raises(VesselSegError, match="step-size"):
        predict_cases([threshold_model()], tmp_path / "in", tmp_path / "o2", PredictionOptions(step_size=0.0))


# ------------------------------------------------------------------ overlapped file I/O


def test_overlapped_folder_prediction_writes_the_same_files(tmp_path):
    _write_cases(tmp_path / "in", 3)
    model = threshold_model()
    for overlap in (False, True):
        options = PredictionOptions(use_tta=False, overlap_io=overlap, preview=overlap)
        seconds = predict_cases([model], tmp_path / "in", tmp_path / f"out_{overlap}", options)
        assert sorted(seconds) == ["case0", "case1", "case2"]
    for k in range(3):
        seq, seq_geometry = read_array(tmp_path / "out_False" / f"case{k}.nii.gz")
        ovl, ovl_geometry = read_array(tmp_path / "out_True" / f"case{k}.nii.gz")
        np.testing.assert_array_equal(ovl, seq)
        assert ovl_geometry.mismatch(seq_geometry) is None and seq.any()
        assert (tmp_path / "out_True" / f"case{k}_preview.png").is_file()
    assert not [p for p in (tmp_path / "out_True").iterdir() if p.name.startswith(".") and p.name != PROVENANCE_FILE]


def test_overlapped_read_error_is_the_sequential_one(tmp_path):
    paths = _write_cases(tmp_path / "in", 3)
    paths[1].write_bytes(paths[1].read_bytes()[:-200])  # truncated voxel data: found when the case is read
    messages = {}
    for overlap in (False, True):
        out = tmp_path / f"out_{overlap}"
        with pytest.raises(ImageReadError) as info:
            predict_cases([threshold_model()], tmp_path / "in", out, PredictionOptions(use_tta=False, overlap_io=overlap))
        messages[overlap] = str(info.value)
        assert sorted(p.name for p in out.iterdir() if p.name != PROVENANCE_FILE) == ["case0.nii.gz"]  # the case before, none after
    assert messages[True] == messages[False] and "case1_0000.nii.gz" in messages[True]


@pytest.mark.parametrize("fail", ["load:3", "compute:2", "store:1", "store:1+compute:2", "store:4", "load:0"])
def test_run_overlapped_stores_and_raises_as_the_sequential_run(fail):
    failures = dict(f.split(":") for f in fail.split("+"))

    def stage(name, item):
        if failures.get(name) == str(item):
            raise ValueError(f"{name} {item}")

    outcomes = []
    for overlap in (False, True):
        stored, threads = [], set()

        def load(item):
            stage("load", item)
            return item * 10

        def compute(item, loaded, threads=threads):
            threads.add(threading.current_thread().name)
            stage("compute", item)
            return loaded + 1

        def store(item, result, stored=stored):
            stage("store", item)
            stored.append(result)

        with pytest.raises(ValueError) as info:
            run_overlapped(range(6), load, compute, store, overlap)
        outcomes.append((stored, str(info.value)))
        assert threads <= {threading.main_thread().name}  # compute stays in the calling thread
    assert outcomes[0] == outcomes[1]


def test_a_normalisation_registered_from_a_test_runs_on_both_paths_and_unknown_names_fail_in_one_line():
    from vessel_seg.errors import PlansError
    from vessel_seg.planners.normalization import NORMALIZATIONS, register_normalization

    def log_compress(channel, stats):  # a per-image scheme of a plugin, no torch twin
        np.log1p(np.maximum(channel, 0), out=channel)

    register_normalization("log_zscore_test", uses_dataset_statistics=False, transform=log_compress)
    try:
        image = np.random.default_rng(1).gamma(2.0, 50.0, size=(1, 4, 16, 16)).astype(np.float32)
        expected = normalize(image, ["log_zscore_test"], {})
        got = normalize_on_device(torch.from_numpy(image.copy()), ["log_zscore_test"], {}).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert abs(float(expected.mean())) < 1e-4 and np.allclose(np.log1p(image).argsort(None), expected.argsort(None))
    finally:
        NORMALIZATIONS.remove("log_zscore_test")
    with pytest.raises(PlansError, match="unknown normalisation scheme 'log_zscore_test'.*VS_PLUGINS"):
        normalize(image, ["log_zscore_test"], {})
