"""The built-in pretrained model: shipped safely, used without -d, fine-tuned, and rebuilt by vs_pretrain."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from vessel_seg.builtin import BUILTIN_FOLDER, PACKAGED_DIR, builtin_model_dir
from vessel_seg.checkpoint import load_checkpoint
from vessel_seg.cli.plan_and_preprocess import main as plan_main
from vessel_seg.cli.predict import main as predict_main
from vessel_seg.cli.pretrain import main as pretrain_main
from vessel_seg.cli.train import main as train_main
from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.errors import CheckpointError
from vessel_seg.imageio import read_array
from vessel_seg.inference.predictor import load_trained_model
from vessel_seg.planners.plans import Plans
from vessel_seg.pretraining import read_runs


@pytest.fixture
def shipped(monkeypatch):
    """The packaged model, whatever VS_BUILTIN_MODEL the caller's shell has."""
    monkeypatch.delenv("VS_BUILTIN_MODEL", raising=False)
    return builtin_model_dir()


def test_shipped_model_is_small_safe_and_documented(shipped):
    assert shipped == PACKAGED_DIR
    size = sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file())
    assert size <= 20 * 2**20
    state = load_checkpoint(shipped / "fold_all" / "checkpoint_final.pt")  # weights_only=True
    assert set(state) == {"network_weights", "metadata"}
    assert all(isinstance(v, torch.Tensor) for v in state["network_weights"].values())
    assert {v.dtype for v in state["network_weights"].values() if v.is_floating_point()} == {torch.float16}
    plans = Plans.load(shipped / "plans.json")
    config = plans.configuration("3d_fullres")
    assert list(plans.configurations) == ["3d_fullres"]
    assert config.spacing_mode == "finest_voxel" and config.normalization == ["percentile"]
    card = (shipped / "MODEL_CARD.md").read_text(encoding="utf-8")
    for heading in ("Training data", "Measured", "Limits"):
        assert f"**{heading}.**" in card
    runs = read_runs(shipped)
    assert runs and all(r.iterations > 0 and r.machine and r.date for r in runs)
    assert all(f"| {k} | {r.date} |" in card for k, r in enumerate(runs, 1))  # every run is in the card


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "checkpoint_final.pt"
    torch.save({"network_weights": {}, "metadata": Payload()}, bad)
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def _one_test_image(root, size: int = 32):
    folder = generate_dataset(4, 1, num_test_cases=1, size=size, seed=9, raw_root=root)
    return folder / "imagesTs"


def test_vs_predict_without_a_dataset_or_a_model_uses_the_builtin(shipped, data_roots, tmp_path, caplog, capsys):
    images = _one_test_image(tmp_path / "gen")
    caplog.set_level(logging.INFO)
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "out"), "--disable-tta"]) == 0
    assert "using the built-in pretrained vessel model (no -d and no trained model under VS_RESULTS)" in caplog.text
    assert BUILTIN_FOLDER in capsys.readouterr().out
    mask, geometry = read_array(tmp_path / "out" / "synth_001.nii.gz")
    image, image_geometry = read_array(images / "synth_001_0000.nii.gz")
    assert mask.shape == image.shape and geometry.spacing == image_geometry.spacing
    assert set(np.unique(mask)) <= {0, 1}
    # explicit choice, and a contradiction in one line
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "out2"), "--model", "builtin", "--disable-tta"]) == 0
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "out3"), "--model", "builtin", "-d", "4"]) == 2
    assert "--model builtin names the model itself; drop -d" in capsys.readouterr().err


def test_fine_tuning_from_the_builtin_starts_from_its_weights(shipped, data_roots, capsys, caplog):
    generate_dataset(12, 2, num_test_cases=0, size=32, seed=4)
    assert train_main(["12", "3d_fullres", "0", "--pretrained", "builtin"]) == 2
    assert "--plans-from builtin first" in capsys.readouterr().err
    assert plan_main(["-d", "12", "--plans-from", "builtin", "-np", "1"]) == 0
    plans = Plans.load(data_roots["preprocessed"] / "Dataset012_Synthetic" / "vs_builtin.json")
    assert plans.configuration("3d_fullres").network == Plans.load(shipped / "plans.json").configuration("3d_fullres").network
    caplog.set_level(logging.INFO)
    assert train_main(["12", "3d_fullres", "all", "--pretrained", "builtin", "--epochs", "1", "--iterations-per-epoch", "2",
                       "--val-iterations", "1", "--num-workers", "0", "--no-final-validation"]) == 0
    builtin = load_checkpoint(shipped / "fold_all" / "checkpoint_final.pt")["network_weights"]
    assert f"copied {len(builtin)} of {len(builtin)} tensors" in caplog.text
    tuned = load_checkpoint(data_roots["results"] / "Dataset012_Synthetic" / "vsTrainer__vs_builtin__3d_fullres"
                            / "fold_all" / "checkpoint_final.pt")["network_weights"]
    moved = [k for k in builtin if builtin[k].is_floating_point() and not torch.equal(builtin[k].float(), tuned[k].float())]
    assert moved  # it trained
    # two steps of small updates stay close to where they started: the start was the built-in model
    key = next(k for k in builtin if k.endswith("weight") and builtin[k].ndim == 5)
    assert torch.allclose(builtin[key].float(), tuned[key].float(), atol=0.05)


def test_vs_pretrain_builds_a_model_that_vs_predict_uses(data_roots, tmp_path, monkeypatch, capsys):
    export = tmp_path / "export"
    assert pretrain_main(["-d", "990", "--cases", "2", "--epochs", "1", "--iterations-per-epoch", "1",
                          "--num-workers", "0", "--export", str(export)]) == 0
    folder = export / BUILTIN_FOLDER
    assert str(folder) in capsys.readouterr().out
    model = load_trained_model(folder)
    assert model.folds == ["all"] and model.config.spacing_mode == "finest_voxel"
    monkeypatch.setenv("VS_BUILTIN_MODEL", str(folder))
    assert builtin_model_dir() == folder
    images = _one_test_image(tmp_path / "gen", size=24)
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "out"), "--model", "builtin", "--disable-tta"]) == 0
    assert (tmp_path / "out" / "synth_001.nii.gz").is_file()
    # resuming is a no-op that exports again
    assert pretrain_main(["-d", "990", "--cases", "2", "--epochs", "1", "--iterations-per-epoch", "1",
                          "--num-workers", "0", "--export", str(export)]) == 0
    monkeypatch.setenv("VS_BUILTIN_MODEL", str(tmp_path / "missing"))
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "out4"), "--model", "builtin"]) == 2
    assert "the built-in model is missing from VS_BUILTIN_MODEL" in capsys.readouterr().err


def test_vs_pretrain_init_continues_a_model_and_its_run_history(data_roots, tmp_path, shipped, capsys):
    export = tmp_path / "export"
    assert pretrain_main(["-d", "992", "--cases", "2", "--epochs", "1", "--iterations-per-epoch", "1",
                          "--num-workers", "0", "--init", "builtin", "--warmup", "1", "--export", str(export)]) == 0
    folder = export / BUILTIN_FOLDER
    shipped_runs, runs = read_runs(shipped), read_runs(folder)
    assert runs[:-1] == shipped_runs and runs[-1].init == "builtin" and runs[-1].iterations == 1
    assert runs[-1].patch == Plans.load(shipped / "plans.json").configuration("3d_fullres").patch_size
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"| {len(runs)} | {runs[-1].date} |" in card and "| 1 |" in card
    # one step of small updates from the shipped weights stays near them: the run started there
    before = load_checkpoint(shipped / "fold_all" / "checkpoint_final.pt")["network_weights"]
    after = load_checkpoint(folder / "fold_all" / "checkpoint_final.pt")["network_weights"]
    key = next(k for k in before if k.endswith("weight") and before[k].ndim == 5)
    assert torch.allclose(before[key].float(), after[key].float(), atol=0.05)
    assert pretrain_main(["-d", "993", "--cases", "2", "--init", str(tmp_path / "nothing")]) == 2
    assert "--init needs a model folder" in capsys.readouterr().err


def test_malformed_run_history_is_one_line(tmp_path):
    from vessel_seg.errors import DatasetError

    (tmp_path / "pretraining_runs.json").write_text('[{"date": 3}]')
    with pytest.raises(DatasetError, match="not a list of pretraining runs"):
        read_runs(tmp_path)
    (tmp_path / "pretraining_runs.json").write_text('[{"date": "d", "machine": "m", "cases": -1, "seed": 0, '
                                                    '"randomiser": 2, "iterations": 1, "batch": 2, "patch": [8, 8, 8], '
                                                    '"wall_s": 1}]')
    with pytest.raises(DatasetError, match="negative"):
        read_runs(tmp_path)


def test_demo_shows_zero_shot_predictions_before_training(shipped, data_roots, caplog, capsys):
    from vessel_seg.demo import main as demo_main

    caplog.set_level(logging.INFO)
    assert demo_main(["--dataset", "13", "--cases", "2", "--test-cases", "1", "--size", "32", "--epochs", "1",
                      "--iterations", "1"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    zero_shot = next(i for i, m in enumerate(messages) if m.startswith("[zero-shot]"))
    training = next(i for i, m in enumerate(messages) if m.startswith("[3/5] training"))
    assert zero_shot < training
    predictions = data_roots["results"] / "Dataset013_Synthetic" / "demo_predictions"
    assert (predictions / "zero_shot" / "synth_002.nii.gz").is_file()
    assert "zero_shot" in (predictions / "benchmark" / "benchmark.md").read_text()


@pytest.fixture
def zero_shot_script():
    from conftest import load_benchmark_script

    yield from load_benchmark_script("zero_shot_benchmark")


def test_zero_shot_benchmark_runs_every_arm(shipped, zero_shot_script, tmp_path, monkeypatch):
    for name in ("raw", "preprocessed", "results"):  # the script points these at its work folder itself
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / "unused" / name))
    argv = ["--work", str(tmp_path / "work"), "--styles", "mr", "--train-cases", "2", "--test-cases", "1", "--size", "32",
            "--iterations", "2", "--fewshot-iterations", "2", "--shots", "1", "--out", str(tmp_path / "results")]
    assert zero_shot_script.main(argv) == 0
    (result,) = (tmp_path / "results").glob("*-zeroshot.json")
    import json

    rows = json.loads(result.read_text())["rows"]
    assert [r["arm"] for r in rows] == ["zero-shot", "own model", "fine-tuned 1", "scratch 1"]
    assert all(0.0 <= r["dice"] <= 1.0 and r["cases"] == 1 for r in rows)
    assert rows[0]["train_s"] == 0.0 and rows[2]["cases_labelled"] == 1
    # a rerun reports the rows measured the first time (not the time of a resumed, finished training)
    assert zero_shot_script.main(argv) == 0
    assert json.loads(result.read_text())["rows"] == rows
