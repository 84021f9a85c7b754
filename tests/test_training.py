"""Training end to end on a tiny synthetic dataset: every configuration, every loss, resume, cascade."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from training_helpers import add_cascade_plans, quick

from vessel_seg.atomic import TEMP_MARKER
from vessel_seg.checkpoint import load_checkpoint
from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.errors import VesselSegError
from vessel_seg.planners.pipeline import plan_and_preprocess
from vessel_seg.trainers.trainer import TrainingJob, train
from vessel_seg.trainers.training_context import TrainingContext

DATASET = "Dataset007_Synthetic"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Five 32^3 synthetic cases, planned with the CPU preset and preprocessed."""
    base = tmp_path_factory.mktemp("training")
    env = {f"VS_{n.upper()}": str(base / n) for n in ("raw", "preprocessed", "results")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        generate_dataset(7, 5, num_test_cases=1, size=32, seed=3)
        plan_and_preprocess(7, plans_name="cpu", num_workers=1)
        yield base, env


@pytest.fixture
def roots(tiny_dataset, monkeypatch):
    base, env = tiny_dataset
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return base


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_training_writes_model_folder_and_validation(roots, configuration):
    result = train(TrainingJob(7, configuration, 0, "cpu", quick()))
    fold = result.fold_dir
    for name in ("checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_latest.pt", "progress.png", "training_log.jsonl"):
        assert (fold / name).is_file(), name
    for name in ("plans.json", "dataset.json", "fingerprint.json"):
        assert (fold.parent / name).is_file(), name
    state = load_checkpoint(fold / "checkpoint_final.pt")
    assert state["metadata"]["configuration"] == configuration and state["metadata"]["num_classes"] == 2
    log = [json.loads(line) for line in (fold / "training_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["data_wait_seconds"] >= 0 and 0 <= log[0]["pseudo_dice"] <= 1
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    val_ids = sorted(p.name.removesuffix(".nii.gz") for p in (fold / "validation").glob("*.nii.gz"))
    assert val_ids and summary["foreground_mean"]["dice"] >= 0
    assert (fold / "validation" / "metrics.csv").is_file()


@pytest.mark.parametrize(
    ("loss", "configuration"),
    [("dice_ce_cldice", "3d_fullres"), ("dice_ce_center", "3d_fullres"), ("dice_ce_skeleton_recall", "3d_fullres"),
     ("dice_ce_skeleton_recall", "2d")],
)
def test_topology_losses_train(roots, loss, configuration):
    settings = quick(loss=loss, final_validation=False)
    result = train(TrainingJob(7, configuration, 1, "cpu", settings, trainer_name=f"t_{loss}"))
    log = json.loads((result.fold_dir / "training_log.jsonl").read_text().splitlines()[0])
    assert torch.isfinite(torch.tensor(log["train_loss"])) and log["train_loss"] > 0


PLUGIN = """
import torch
from vessel_seg.trainers.losses import DiceCELoss, register_loss

CALLS = []


class CountingLoss(DiceCELoss):
    def forward(self, logits, target):
        CALLS.append(tuple(target.shape))
        return super().forward(logits, target)


@register_loss("test_counting", needs_skeleton=True, description="Dice + CE that records its targets")
def build(options):
    return CountingLoss(batch_dice=options.batch_dice)
"""


def test_a_loss_registered_by_a_plugin_file_trains_through_vs_train(roots, tmp_path, monkeypatch, capsys):
    from vessel_seg.cli.train import main as train_main

    plugin = tmp_path / "counting_loss.py"
    plugin.write_text(PLUGIN)
    monkeypatch.setenv("VS_PLUGINS", str(plugin))
    argv = ["7", "3d_fullres", "3", "-pl", "cpu", "-tr", "plugged", "--epochs", "1", "--iterations-per-epoch", "2",
            "--val-iterations", "1", "--num-workers", "0", "--no-final-validation", "--loss", "test_counting"]
    assert train_main(argv) == 0
    calls = sys.modules["vs_plugin_counting_loss"].CALLS
    # needs_skeleton: the pipeline appended the skeleton channel; deep supervision saw it at every output size
    assert calls and all(shape[1] == 2 for shape in calls)
    monkeypatch.setenv("VS_PLUGINS", str(tmp_path / "missing.py"))
    assert train_main(argv) == 2
    assert "plugin file" in capsys.readouterr().err
    broken = tmp_path / "broken_loss.py"
    broken.write_text("import not_a_module_anywhere\n")
    monkeypatch.setenv("VS_PLUGINS", str(broken))
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: VS_PLUGINS: cannot import plugin") and "\n" not in err
    monkeypatch.delenv("VS_PLUGINS")
    assert train_main([*argv[:-1], "not_registered"]) == 2
    assert "unknown loss 'not_registered'" in capsys.readouterr().err


def test_resume_continues_from_latest_and_pretrained_loads(roots):
    job = TrainingJob(7, "3d_fullres", 2, "cpu", quick(epochs=2, final_validation=False, snapshot_every=1), trainer_name="resume")
    first = train(job)
    assert load_checkpoint(first.fold_dir / "checkpoint_latest.pt")["epoch"] == 2
    # --snapshot-every keeps each epoch's weights under a name the predictor accepts
    snapshots = [load_checkpoint(first.fold_dir / f"checkpoint_epoch000{e}.pt") for e in (1, 2)]
    assert [s["epoch"] for s in snapshots] == [1, 2]
    assert not torch.equal(*(next(iter(s["network_weights"].values())) for s in snapshots))
    from vessel_seg.inference.predictor import load_trained_model

    assert load_trained_model(first.fold_dir.parent, folds=[2], checkpoint="epoch0001").networks
    with pytest.raises(VesselSegError, match="snapshot such as epoch0020"):
        load_trained_model(first.fold_dir.parent, folds=[2], checkpoint="epoch1")
    stale = first.fold_dir / f".checkpoint_previous.pt{TEMP_MARKER}-killed"  # a checkpoint write killed midway
    stale.write_bytes(b"partial")
    job.resume = True
    job.settings = quick(epochs=3, final_validation=False, optimizer="sgd")
    with pytest.raises(VesselSegError, match="trained with --optimizer adamw, not sgd; continue it with --optimizer adamw"):
        train(job)  # SGD cannot take over Adam's moments
    job.settings = quick(epochs=3, final_validation=False)
    second = train(job)
    assert second.epochs_run == 1
    assert not stale.exists()
    epochs = [json.loads(line)["epoch"] for line in (second.fold_dir / "training_log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    tuned = train(TrainingJob(
        7, "3d_fullres", 3, "cpu", quick(final_validation=False), trainer_name="tuned",
        pretrained=first.fold_dir / "checkpoint_final.pt",
    ))
    assert tuned.fold_dir.is_dir()


def test_cascade_needs_lowres_predictions_then_trains(roots):
    plans = add_cascade_plans(roots / "preprocessed" / DATASET)
    low, full = plans.configuration("3d_lowres"), plans.configuration("3d_fullres")
    assert low.data_identifier == full.data_identifier  # shares the preprocessed data already there

    with pytest.raises(VesselSegError, match="3d_lowres predictions of fold 0 are missing"):
        train(TrainingJob(7, "3d_cascade_fullres", 0, "cascade", quick()))
    lowres = train(TrainingJob(7, "3d_lowres", 0, "cascade", quick(final_validation=True)))
    predicted = sorted((lowres.fold_dir / "predicted_next_stage" / "3d_cascade_fullres").glob("*.npy"))
    assert len(predicted) == 5
    result = train(TrainingJob(7, "3d_cascade_fullres", 0, "cascade", quick()))
    assert load_checkpoint(result.fold_dir / "checkpoint_final.pt")["metadata"]["in_channels"] == 2
    assert (result.fold_dir / "validation" / "summary.json").is_file()


def test_sigkill_then_continue_resumes(tiny_dataset):
    base, env = tiny_dataset
    env = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
    args = ["7", "3d_fullres", "4", "-pl", "cpu", "--epochs", "50", "--iterations-per-epoch", "1",
            "--val-iterations", "1", "--num-workers", "0", "--checkpoint-every", "1", "--no-final-validation"]
    proc = subprocess.Popen([sys.executable, "-m", "vessel_seg.cli.train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fold = base / "results" / DATASET / "vsTrainer__cpu__3d_fullres" / "fold_4"
    deadline = time.time() + 120
    while time.time() < deadline and not (fold / "checkpoint_previous.pt").is_file():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (fold / "checkpoint_latest.pt").is_file(), proc.stderr.read().decode()[-2000:]
    saved = load_checkpoint(fold / "checkpoint_latest.pt")["epoch"]
    assert 1 <= saved < 50
    rerun = subprocess.run(
        [sys.executable, "-m", "vessel_seg.cli.train", *args[:6], str(saved + 1), *args[7:], "--continue"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from {fold / 'checkpoint_latest.pt'} (epoch {saved})" in rerun.stderr
    epochs = [json.loads(line)["epoch"] for line in (fold / "training_log.jsonl").read_text().splitlines()]
    assert epochs == list(range(saved + 1))


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from vessel_seg.trainers.settings import TrainingSettings
from vessel_seg.trainers.trainer import TrainingJob, train
from vessel_seg.trainers.training_context import TrainingContext
settings = TrainingSettings(epochs=1, iterations_per_epoch=3, validation_iterations=1, num_workers=0,
                            final_validation=False, device="cpu")
result = train(TrainingJob(7, "3d_fullres", 0, "cpu", settings, trainer_name="ddp"))
torch.save(result.network.state_dict(), sys.argv[1] + f"/rank{int(__import__('os').environ['RANK'])}.pt")
"""


def test_ddp_on_gloo_keeps_weights_identical(tiny_dataset, tmp_path):
    base, env = tiny_dataset
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path)],
        env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=f"{key} differs between ranks")


def test_trained_model_predicts_raw_images_in_their_geometry(roots):
    from vessel_seg.imageio import read_array
    from vessel_seg.inference.prediction_run import predict_folder
    from vessel_seg.inference.predictor import load_trained_model

    result = train(TrainingJob(7, "3d_fullres", "all", "cpu", quick(final_validation=False), trainer_name="predict"))
    model = load_trained_model(result.fold_dir.parent)
    assert model.folds == ["all"] and len(model.mirror_axes) == 3
    raw = roots / "raw" / DATASET
    out = roots / "predictions"
    seconds = predict_folder(model, raw / "imagesTs", out, use_tta=False)
    assert len(seconds) == 1
    case = next(iter(seconds))
    pred, pred_geometry = read_array(out / f"{case}.nii.gz")
    _, image_geometry = read_array(raw / "imagesTs" / f"{case}_0000.nii.gz")
    assert pred_geometry.mismatch(image_geometry) is None
    assert set(pred.ravel().tolist()) <= {0, 1}
    assert predict_folder(model, raw / "imagesTs", out, use_tta=False) == {}  # same model and settings: reused
    assert len(predict_folder(model, raw / "imagesTs", out, use_tta=True)) == 1  # other settings: predicted again
    assert predict_folder(model, raw / "imagesTs", out, use_tta=True) == {}
    retrained = train(TrainingJob(7, "3d_fullres", "all", "cpu", quick(final_validation=False, seed=7),
                                  trainer_name="predict"))  # same folder, new weights
    assert len(predict_folder(load_trained_model(retrained.fold_dir.parent), raw / "imagesTs", out, use_tta=True)) == 1


def test_validation_saves_probabilities_in_the_original_geometry(roots):
    import numpy as np

    from vessel_seg.cli.train import build_parser
    from vessel_seg.dataset import DatasetInfo
    from vessel_seg.imageio import read_label
    from vessel_seg.inference.ensemble import load_probabilities, probabilities_to_labels
    from vessel_seg.planners.plans import Plans
    from vessel_seg.trainers.validation import validate_full_volumes

    result = train(TrainingJob(7, "3d_fullres", 1, "cpu", quick(), trainer_name="valprobs"))
    folder = result.fold_dir / "validation"
    masks = sorted(folder.glob("*.nii.gz"))
    assert masks and len(list(folder.glob("*.npz"))) == len(masks)
    for mask_path in masks:
        saved = load_probabilities(folder / mask_path.name.replace(".nii.gz", ".npz"))
        mask, geometry = read_label(mask_path)
        assert saved.probabilities.dtype == np.float16 and saved.label_values == [0, 1]
        assert saved.geometry.mismatch(geometry) is None and saved.file_ending == ".nii.gz"
        np.testing.assert_allclose(saved.probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-2)
        # Resampling probabilities instead of labels only moves voxels near p = 0.5 (many in a barely
        # trained model); where the network is confident both must agree.
        confident = np.abs(saved.probabilities[1].astype(np.float32) - 0.5) > 0.25
        derived = probabilities_to_labels(saved.probabilities, saved.label_values)
        assert confident.sum() > mask.size // 4 and np.mean(derived[confident] != mask[confident]) < 0.005

    # Switched off (vs_train --no-validation-probabilities): stale files of an earlier run are removed.
    assert build_parser().parse_args(["7", "3d_fullres", "1", "--no-validation-probabilities"]).no_validation_probabilities
    pre = roots / "preprocessed" / DATASET
    plans = Plans.load(pre / "cpu.json")
    config = plans.configuration("3d_fullres")
    case_ids = [m.name.removesuffix(".nii.gz") for m in masks[:1]]
    validate_full_volumes(
        result.network, plans, config, DatasetInfo.load(pre / "dataset.json"), case_ids, pre / config.data_identifier,
        roots / "raw" / DATASET / "labelsTr", folder, (), torch.device("cpu"), False, save_probabilities_too=False,
    )
    assert not (folder / f"{case_ids[0]}.npz").exists() and (folder / masks[0].name).is_file()


def test_diverging_training_stops_with_one_line_and_keeps_the_good_checkpoint(roots, monkeypatch):
    import vessel_seg.trainers.trainer as trainer_module

    calm = trainer_module.scheduled_lr
    # epoch 0 trains normally, then the learning rate explodes and the weights overflow
    monkeypatch.setattr(trainer_module, "scheduled_lr", lambda s, e, i: calm(s, e, i) if e == 0 else 1e30)
    job = TrainingJob(7, "3d_fullres", 4, "cpu", quick(epochs=3, final_validation=False, optimizer="sgd"), trainer_name="nan")
    with pytest.raises(VesselSegError, match="training loss became nan in epoch 1; stopped"):
        train(job)
    fold = TrainingContext(job).fold_dir
    state = load_checkpoint(fold / "checkpoint_latest.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(w).all() for w in state["network_weights"].values())
    assert not (fold / "checkpoint_final.pt").exists()


@pytest.mark.parametrize("bad", [dict(learning_rate=-1.0), dict(learning_rate=float("nan")), dict(checkpoint_every=0),
                                 dict(momentum=1.0), dict(grad_clip=float("inf"))])
def test_training_settings_reject_bad_numbers(bad):
    with pytest.raises(ValueError):
        quick(**bad)


def test_preprocessing_again_clears_temporaries_of_a_killed_run(roots):
    folder = next((roots / "preprocessed").glob("Dataset007_*/cpu_3d_fullres"))
    stale = folder / f".case_000.npy{TEMP_MARKER}-killed"
    stale.write_bytes(b"half a case")
    plan_and_preprocess(7, plans_name="cpu", num_workers=1)
    assert not stale.exists()


def test_continue_with_other_loss_is_refused_and_new_weights_drop_old_validation(roots):
    job = TrainingJob(7, "3d_fullres", 0, "cpu", quick(final_validation=True), trainer_name="stale")
    first = train(job)
    assert (first.fold_dir / "validation" / "summary.json").is_file()
    job.resume = True
    job.settings = quick(epochs=2, final_validation=False, loss="dice_ce")
    with pytest.raises(VesselSegError, match="trained with --loss dice_ce_center, not dice_ce"):
        train(job)
    job.settings = quick(epochs=2, final_validation=False)
    train(job)  # new weights, no final validation: the old one must not survive to be ranked
    assert not (first.fold_dir / "validation").exists()


VARIANT_PLUGIN = """
from vessel_seg.trainers.trainer import Trainer
from vessel_seg.trainers.variants import register_trainer

EPOCHS = []


class RecordingTrainer(Trainer):
    def end_epoch(self, step, epoch, record, started):
        EPOCHS.append((epoch, self.settings.loss, self.settings.optimizer))
        super().end_epoch(step, epoch, record, started)


register_trainer("vsTrainer_recordingTest", settings={"optimizer": "sgd", "loss": "dice_ce_cldice"},
                 trainer_class=RecordingTrainer, description="records every epoch")
"""


def test_trainer_variants_set_settings_and_run_folder_and_flags_override_them(roots, tmp_path, monkeypatch, caplog):
    from vessel_seg.cli.train import main as train_main

    caplog.set_level("INFO")  # as vs_train's own logging configuration does outside the test runner
    from vessel_seg.trainers.variants import TRAINERS, register_trainer

    base = ["7", "3d_fullres", "4", "-pl", "cpu", "--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1",
            "--num-workers", "0", "--no-final-validation"]
    assert train_main([*base, "-tr", "vsTrainer_skeletonRecall"]) == 0
    fold = roots / "results" / DATASET / "vsTrainer_skeletonRecall__cpu__3d_fullres" / "fold_4"
    settings = load_checkpoint(fold / "checkpoint_final.pt")["metadata"]["settings"]
    assert settings["loss"] == "dice_ce_skeleton_recall" and settings["optimizer"] == "adamw"
    text_log = (fold / "training_log.txt").read_text()  # the console's lines, kept in the fold
    assert "training on cpu" in text_log and "epoch 0: train loss" in text_log
    plugin = tmp_path / "recording_trainer.py"
    plugin.write_text(VARIANT_PLUGIN)
    monkeypatch.setenv("VS_PLUGINS", str(plugin))
    try:
        assert train_main([*base, "-tr", "vsTrainer_recordingTest", "--loss", "dice_ce"]) == 0  # a flag beats the variant
        epochs = sys.modules["vs_plugin_recording_trainer"].EPOCHS
        assert epochs == [(0, "dice_ce", "sgd")]  # the subclass ran; the variant's optimiser, the flag's loss
        assert (roots / "results" / DATASET / "vsTrainer_recordingTest__cpu__3d_fullres" / "fold_4").is_dir()
    finally:
        TRAINERS.remove("vsTrainer_recordingTest")
    with pytest.raises(ValueError, match="unknown settings lr"):
        register_trainer("vsTrainer_bad", settings={"lr": 1.0})
    with pytest.raises(ValueError, match="unknown augmentation option"):
        quick(augmentation={"p_rotatoin": 0.5})
    assert train_main([*base, "-tr", "vsTrainer_noMirroring"]) == 0  # augmentation settings reach the pipeline
    fold = roots / "results" / DATASET / "vsTrainer_noMirroring__cpu__3d_fullres" / "fold_4"
    assert load_checkpoint(fold / "checkpoint_final.pt")["metadata"]["mirror_axes"] == []
