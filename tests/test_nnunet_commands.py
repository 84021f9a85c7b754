"""nnU-Net v2's documented command lines, with our command names, on a tiny dataset and nnU-Net's variables.

An nnU-Net user keeps ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` set and types
``-p``, ``-tr``, ``--c``, ``-chk checkpoint_best.pth``, ``--disable_tta``, ``-step_size``; the
plans name is found when only one exists.
"""

from __future__ import annotations

import pytest

from vessel_seg.cli.plan_and_preprocess import main as plan_main
from vessel_seg.cli.predict import checkpoint_choice
from vessel_seg.cli.predict import main as predict_main
from vessel_seg.cli.train import main as train_main
from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.imageio import read_array

TINY = ["--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1", "--num-workers", "0",
        "--no-final-validation"]


@pytest.fixture
def nnunet_roots(tmp_path, monkeypatch):
    for ours in ("VS_RAW", "VS_PREPROCESSED", "VS_RESULTS"):
        monkeypatch.delenv(ours, raising=False)
    roots = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in roots.items():
        monkeypatch.setenv(name, str(path))
    return roots


def test_nnunet_command_lines_run_unchanged_but_for_the_names(nnunet_roots, tmp_path, caplog):
    caplog.set_level("INFO")  # as the commands' own logging configuration does outside the test runner
    generate_dataset(7, 3, num_test_cases=1, size=32, seed=3)  # lands in nnUNet_raw
    assert (nnunet_roots["nnUNet_raw"] / "Dataset007_Synthetic" / "dataset.json").is_file()
    # nnUNetv2_plan_and_preprocess -d 7 --verify_dataset_integrity (our CPU preset named by -pl)
    assert plan_main(["-d", "7", "--verify_dataset_integrity", "-pl", "cpu", "-np", "1"]) == 0
    # nnUNetv2_train 7 3d_fullres 0 -tr ...: no plans name given, the only plans (cpu) are found
    assert train_main(["7", "3d_fullres", "0", "-tr", "vsTrainerShort", *TINY]) == 0
    fold = nnunet_roots["nnUNet_results"] / "Dataset007_Synthetic" / "vsTrainerShort__cpu__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pt").is_file()
    # nnUNetv2_train ... --c continues (two epochs in all), -p names the plans
    assert train_main(["7", "3d_fullres", "0", "-tr", "vsTrainerShort", "-p", "cpu", "--c",
                       *TINY[:1], "2", *TINY[2:]]) == 0
    # nnUNetv2_predict -i ... -o ... -d 7 -c 3d_fullres -f 0 -tr ... -chk checkpoint_best.pth --disable_tta -step_size 0.5
    images = nnunet_roots["nnUNet_raw"] / "Dataset007_Synthetic" / "imagesTs"
    out = tmp_path / "pred"
    assert predict_main(["-i", str(images), "-o", str(out), "-d", "7", "-c", "3d_fullres", "-f", "0",
                         "-tr", "vsTrainerShort", "-p", "cpu", "-chk", "checkpoint_best.pth", "--disable_tta",
                         "-step_size", "0.5", "--device", "cpu"]) == 0
    (mask,) = out.glob("*.nii.gz")
    image = next(images.glob("*_0000.nii.gz"))
    assert read_array(mask)[1].mismatch(read_array(image)[1]) is None
    # nnUNetv2_train 7 3d_fullres 0 --val: only the final validation of the trained fold
    assert not (fold / "validation").exists()  # trained with --no-final-validation
    assert train_main(["7", "3d_fullres", "0", "-tr", "vsTrainerShort", "--val", "--num-workers", "0"]) == 0
    assert (fold / "validation" / "summary.json").is_file() and "--val" in (fold / "training_log.txt").read_text()
    # nnUNetv2_predict_from_modelfolder -i ... -o ... -m MODEL_FOLDER -f 0
    by_folder = tmp_path / "pred_m"
    assert predict_main(["-i", str(images), "-o", str(by_folder), "-m", str(fold.parent), "-f", "0", "-chk",
                         "checkpoint_best.pth", "--disable_tta", "--threads", "2", "--device", "cpu"]) == 0
    assert (read_array(next(by_folder.glob("*.nii.gz")))[0] == read_array(mask)[0]).all()


def test_val_without_a_trained_fold_and_m_with_d_fail_in_one_line(nnunet_roots, tmp_path, capsys):
    generate_dataset(9, 2, num_test_cases=0, size=32, seed=5)
    assert plan_main(["-d", "9", "-pl", "cpu", "-np", "1"]) == 0
    assert train_main(["9", "3d_fullres", "1", "--val"]) == 2
    assert "checkpoint_final.pt: no such checkpoint; train this fold first" in capsys.readouterr().err
    args = ["-i", str(tmp_path), "-o", str(tmp_path / "o")]
    assert predict_main([*args, "-m", str(tmp_path), "-d", "9"]) == 2
    assert "-m names the model folders itself; drop -d" in capsys.readouterr().err
    assert predict_main([*args, "-m", str(tmp_path)]) == 2
    assert "not a trained model folder" in capsys.readouterr().err


def test_ambiguous_plans_need_a_name(nnunet_roots, capsys):
    generate_dataset(8, 2, num_test_cases=0, size=32, seed=4)
    for plans in ("cpu", "small"):
        assert plan_main(["-d", "8", "-pl", plans, "-np", "1", "--no-preprocess"]) == 0
    assert train_main(["8", "3d_fullres", "0", *TINY]) == 2
    assert "several plans (cpu, small); choose one with -pl" in capsys.readouterr().err


@pytest.mark.parametrize(("given", "meant"), [("checkpoint_best.pth", "best"), ("checkpoint_final.pth", "final"),
                                              ("checkpoint_epoch0010.pt", "epoch0010"), ("best", "best")])
def test_checkpoint_names_of_both_frameworks(given, meant):
    assert checkpoint_choice(given) == meant


def test_trainer_names_cannot_be_paths(nnunet_roots, capsys):
    assert train_main(["7", "3d_fullres", "0", "-tr", "../x", *TINY]) == 2
    assert "-tr '../x'" in capsys.readouterr().err


def test_num_parts_and_part_id_are_checked_in_one_line(nnunet_roots, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "out"), "-num_parts", "2", "-part_id", "2"]) == 2
    assert "0 <= part_id < num_parts" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
