"""vs_predict end to end on a tiny trained model: inputs, geometry, skipping, folds, cascade, errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from training_helpers import add_cascade_plans, quick

from vessel_seg.cli.ensemble import main as ensemble_main
from vessel_seg.cli.predict import main as predict_main
from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.imageio import ImageGeometry, read_array, read_image, write_image
from vessel_seg.inference.ensemble import load_probabilities
from vessel_seg.inference.predictor import load_trained_model, predict_original_probabilities
from vessel_seg.inference.provenance import PROVENANCE_FILE
from vessel_seg.inference.trained_models import mean_validation_dice, trained_model_dirs
from vessel_seg.planners.pipeline import plan_and_preprocess
from vessel_seg.trainers.trainer import TrainingJob, train

DATASET = "Dataset007_Synthetic"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four 32^3 cases; 3d_fullres folds 0 and 1 and a cascade (3d_lowres + 3d_cascade_fullres, fold 0)."""
    base = tmp_path_factory.mktemp("predict")
    env = {f"VS_{n.upper()}": str(base / n) for n in ("raw", "preprocessed", "results")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        generate_dataset(7, 4, num_test_cases=1, size=32, seed=3)
        plan_and_preprocess(7, plans_name="cpu", num_workers=1)
        train(TrainingJob(7, "3d_fullres", 0, "cpu", quick()))
        train(TrainingJob(7, "3d_fullres", 1, "cpu", quick(final_validation=False, seed=5)))
        add_cascade_plans(base / "preprocessed" / DATASET)
        train(TrainingJob(7, "3d_lowres", 0, "cascade", quick()))
        train(TrainingJob(7, "3d_cascade_fullres", 0, "cascade", quick(final_validation=False)))
        yield base, env


@pytest.fixture
def roots(trained, monkeypatch):
    base, env = trained
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return base


def _test_image(base):
    return next((base / "raw" / DATASET / "imagesTs").glob("*_0000.nii.gz"))


FAST = ["-d", "7", "-c", "3d_fullres", "-pl", "cpu", "--disable-tta"]


def test_single_file_keeps_anisotropic_flipped_permuted_geometry(roots, tmp_path):
    images, _ = read_image(_test_image(roots))
    # Permuted and flipped axes: i -> -y, j -> x, k -> z (a proper rotation, determinant +1).
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    geometry = ImageGeometry(shape=images.shape[1:], spacing=(2.0, 0.9, 0.6), origin=(12.5, -3.0, 40.0), direction=direction)
    source = tmp_path / "scan.nrrd"
    write_image(images[0], geometry, source)
    out = tmp_path / "out"
    assert predict_main(["-i", str(source), "-o", str(out), *FAST, "--save-probabilities"]) == 0
    pred, pred_geometry = read_array(out / "scan.nrrd")
    assert pred.shape == images.shape[1:] and pred_geometry.shape == geometry.shape
    np.testing.assert_allclose(pred_geometry.spacing, geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(pred_geometry.origin, geometry.origin, atol=1e-6)
    np.testing.assert_allclose(pred_geometry.direction, direction, atol=1e-6)
    assert set(np.unique(pred)) <= {0, 1}
    saved = load_probabilities(out / "scan.npz")
    assert saved.probabilities.dtype == np.float16 and saved.geometry.mismatch(geometry) is None
    np.testing.assert_allclose(saved.probabilities.astype(np.float32).sum(0), 1.0, atol=5e-3)


def test_folder_skips_existing_and_overwrite_redoes(roots, tmp_path):
    folder = roots / "raw" / DATASET / "imagesTs"
    out = tmp_path / "out"
    assert predict_main(["-i", str(folder), "-o", str(out), *FAST, "-f", "0"]) == 0
    (mask,) = out.glob("*.nii.gz")
    _, geometry = read_array(_test_image(roots))
    assert read_array(mask)[1].mismatch(geometry) is None
    mask.write_bytes(b"stale")  # a rerun must leave an existing output alone
    assert predict_main(["-i", str(folder), "-o", str(out), *FAST, "-f", "0"]) == 0
    assert mask.read_bytes() == b"stale"
    assert predict_main(["-i", str(folder), "-o", str(out), *FAST, "-f", "0", "--overwrite"]) == 0
    assert read_array(mask)[0].shape == geometry.shape
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != PROVENANCE_FILE]  # no temporaries


def test_fold_ensemble_is_the_mean_of_the_folds(roots, tmp_path):
    model_dir = roots / "results" / DATASET / "vsTrainer__cpu__3d_fullres"
    images, geometry = read_image(_test_image(roots))
    probs = {}
    for folds in (["0"], ["1"], ["0", "1"]):
        model = load_trained_model(model_dir, folds, device="cpu")
        probs[tuple(folds)] = predict_original_probabilities([model], images, geometry, use_tta=False).astype(np.float32)
    both, p0, p1 = probs[("0", "1")], probs[("0",)], probs[("1",)]
    assert np.abs(p0 - p1).max() > 1e-2  # two different networks
    assert np.abs(both - p0).max() > 1e-2 and np.abs(both - p1).max() > 1e-2
    np.testing.assert_allclose(both, (p0 + p1) / 2, atol=2e-3)

    folder = roots / "raw" / DATASET / "imagesTs"
    for fold in ("0", "1"):
        assert predict_main(["-i", str(folder), "-o", str(tmp_path / fold), *FAST, "-f", fold, "--save-probabilities"]) == 0
    assert ensemble_main(["-i", str(tmp_path / "0"), str(tmp_path / "1"), "-o", str(tmp_path / "ens"),
                          "--save-probabilities"]) == 0
    (npz,) = (tmp_path / "ens").glob("*.npz")
    mean = load_probabilities(npz).probabilities.astype(np.float32)
    np.testing.assert_allclose(mean, (p0 + p1) / 2, atol=2e-3)
    mask, mask_geometry = read_array(npz.with_name(npz.name.replace(".npz", ".nii.gz")))
    assert mask_geometry.mismatch(geometry) is None
    decided = np.abs(mean[1] - mean[0]) > 1e-2  # float16 rounding may flip exact ties
    np.testing.assert_array_equal(mask[decided], np.argmax(mean, axis=0)[decided])


def test_cascade_runs_lowres_then_fullres_in_one_command(roots, tmp_path):
    model = load_trained_model(roots / "results" / DATASET / "vsTrainer__cascade__3d_cascade_fullres", device="cpu")
    assert model.previous_stage is not None and model.previous_stage.config.name == "3d_lowres"
    out = tmp_path / "out"
    args = ["-i", str(roots / "raw" / DATASET / "imagesTs"), "-o", str(out), "-d", DATASET,
            "-c", "3d_cascade_fullres", "--disable-tta"]
    assert predict_main(args) == 0
    (mask,) = out.glob("*.nii.gz")
    assert read_array(mask)[1].mismatch(read_array(_test_image(roots))[1]) is None


def test_defaults_pick_the_only_dataset_and_a_validated_configuration(roots, tmp_path, capsys):
    assert predict_main(["-i", str(_test_image(roots)), "-o", str(tmp_path), "--disable-tta"]) == 0
    scores = {d.name: mean_validation_dice(d) for d in trained_model_dirs(DATASET)}
    assert scores["vsTrainer__cascade__3d_cascade_fullres"] is None  # trained without final validation
    best = max((name for name in scores if scores[name] is not None), key=lambda name: scores[name])
    assert f"with {best} " in capsys.readouterr().out


def test_dicom_series_input_writes_nifti(roots, tmp_path):
    images, _ = read_image(_test_image(roots))
    series = tmp_path / "patient1"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    data = images[0].astype(np.int16)
    for z in range(data.shape[0]):
        slice_image = sitk.GetImageFromArray(data[z])
        for tag, value in {
            "0008|0060": "CT", "0020|000d": "1.2.3", "0020|000e": "1.2.3.4", "0020|0013": str(z + 1),
            "0020|0032": f"0\\0\\{z * 1.5:.4f}", "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "1\\1",
            "0018|0050": "1.5",
        }.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"slice_{z:03d}.dcm"))
        writer.Execute(slice_image)
    out = tmp_path / "out"
    assert predict_main(["-i", str(series), "-o", str(out), *FAST]) == 0
    pred, geometry = read_array(out / "patient1.nii.gz")
    assert pred.shape == data.shape and np.allclose(geometry.spacing, (1.5, 1.0, 1.0))


def _error(capsys, argv) -> str:
    assert predict_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_one_line_errors(roots, tmp_path, capsys):
    image = _test_image(roots)
    assert "input not found" in _error(capsys, ["-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), *FAST])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "not writable" in _error(capsys, ["-i", str(image), "-o", str(blocker / "sub"), *FAST])
    err = _error(capsys, ["-i", str(image), "-o", str(tmp_path / "o"), *FAST, "-f", "3"])
    assert "fold 3" in err and "vsTrainer__cpu__3d_fullres" in err
    two = tmp_path / "two"
    two.mkdir()
    for channel in (0, 1):
        (two / f"c_{channel:04d}.nii.gz").write_bytes(image.read_bytes())
    assert "expects [0]" in _error(capsys, ["-i", str(two), "-o", str(tmp_path / "o"), *FAST])
    flat = tmp_path / "flat.nrrd"
    write_image(np.zeros((1, 32, 32), np.float32), ImageGeometry((1, 32, 32), (1.0, 1.0, 1.0), ndim=2), flat)
    assert "2D image" in _error(capsys, ["-i", str(flat), "-o", str(tmp_path / "o"), *FAST])


def test_recipe_postprocessing_and_simulation_outputs(roots, tmp_path):
    from vessel_seg.inference.postprocessing import PostprocessingRecipe
    from vessel_seg.inference.recipe import InferenceRecipe

    recipe = InferenceRecipe(
        dataset_name=DATASET, plans_name="cpu", configurations=["3d_fullres"], folds=["0"],
        postprocessing=PostprocessingRecipe(keep_largest=True),
    )
    recipe.save()
    out = tmp_path / "out"
    # No -c: the recipe picks the configuration, folds and postprocessing.
    assert predict_main(["-i", str(_test_image(roots)), "-o", str(out), "-d", "7", "--disable-tta",
                         "--mesh", "--centerline", "--preview", "--save-probabilities"]) == 0
    case = _test_image(roots).name.removesuffix("_0000.nii.gz")
    seg, _ = read_array(out / f"{case}.nii.gz")
    import cc3d

    assert cc3d.connected_components(seg > 0, connectivity=26).max() <= 1  # keep-largest applied
    produced = {p.name for p in out.iterdir()}
    assert f"{case}.npz" in produced
    assert any(name.endswith(".png") for name in produced)
    if seg.any():
        assert any(name.endswith(".vtp") for name in produced) and any(name.endswith(".stl") for name in produced)
        assert f"{case}_centerline.json" in produced


def test_tracking_mode_runs_from_the_command_line_and_checks_its_seeds(roots, tmp_path, capsys):
    image = _test_image(roots)
    assert "give X Y Z" in _error(capsys, ["-i", str(image), "-o", str(tmp_path / "o"), *FAST, "--seed", "1", "2"])
    assert "outside the image" in _error(capsys, ["-i", str(image), "-o", str(tmp_path / "o"), *FAST,
                                                  "--seed", "5000", "0", "0"])
    _, geometry = read_array(image)
    centre = geometry.index_to_physical(np.array([[s / 2 for s in geometry.shape]]))[0]
    out = tmp_path / "tracked"
    assert predict_main(["-i", str(image), "-o", str(out), *FAST, "--seed", *map(str, centre), "--max-steps", "3"]) == 0
    assert "1 case(s) tracked" in capsys.readouterr().out
    mask, mask_geometry = read_array(next(out.glob("*.nii.gz")))
    assert mask_geometry.mismatch(geometry) is None
