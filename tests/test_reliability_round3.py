"""Reliability, round 3: one name check for every name option, seed values, shared provenance records."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("bad", ["../../../../elsewhere/x", "/abs/plans", "a/b", "a__b", "..", "x" * 101, ""])
def test_every_name_option_refuses_paths(bad, tmp_path, monkeypatch, capsys):
    from vessel_seg.cli.plan_and_preprocess import main as plan_main
    from vessel_seg.cli.train import main as train_main
    from vessel_seg.errors import VesselSegError
    from vessel_seg.model_folder import check_name_part, model_dir

    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / name))
    with pytest.raises(VesselSegError, match="a name is letters"):
        check_name_part(bad, "-pl")
    with pytest.raises(VesselSegError):
        model_dir("Dataset001_X", "3d_fullres", bad)
    assert train_main(["1", "3d_fullres", "0", "-pl", bad]) == 2
    assert train_main(["1", "3d_fullres", "0", "-tr", bad]) == 2
    assert plan_main(["-d", "1", "-pl", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and err.count("a name is letters") == 3 and "Traceback" not in err
    assert not (tmp_path / "elsewhere").exists()


def test_two_writers_of_one_provenance_file_keep_both_records(tmp_path):
    from vessel_seg.inference.provenance import ProvenanceLog

    a, b = ProvenanceLog(tmp_path), ProvenanceLog(tmp_path)  # both read the (empty) folder first
    a.record("case_a", "model-1")
    b.record("case_b", "model-2")
    merged = ProvenanceLog(tmp_path)
    assert merged.made_by("case_a", "model-1") and merged.made_by("case_b", "model-2")


@pytest.mark.parametrize("entry", [[True, False, True], [10**400, 0, 0], [0, 0, float("nan")], [1, 2, "3"]])
def test_seed_values_must_be_finite_numbers(entry, tmp_path):
    from vessel_seg.errors import VesselSegError
    from vessel_seg.inference.tracking import read_seeds

    path = tmp_path / "seeds.json"
    path.write_text(json.dumps([entry]) if entry[0] != 10**400 else f"[[{10**400}, 0, 0]]")
    with pytest.raises(VesselSegError, match="finite numbers"):
        read_seeds(path)


def test_duplicate_seeds_are_traced_once(tmp_path):
    from vessel_seg.inference.tracking import read_seeds

    path = tmp_path / "seeds.json"
    path.write_text(json.dumps([[1.0, 2.0, 3.0]] * 1000 + [[4.0, 5.0, 6.0, 1.5]]))
    seeds = read_seeds(path)
    assert [s.point_mm for s in seeds] == [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)]


@pytest.mark.parametrize("path, value, message", [
    (("configurations", "3d_fullres", "batch_size"), True, "expected a number"),
    (("configurations", "3d_fullres", "network", "features_per_stage"), [16.5, 32], "whole number"),
    (("intensity_properties", "0", "mean"), "1e3", "expected a number"),
    (("configurations", "3d_fullres", "normalization"), ["nonsense"], "unknown normalisation scheme 'nonsense'"),
])
def test_plans_values_of_the_wrong_kind_name_the_plans_file(path, value, message, tmp_path):
    import vessel_seg.planners.normalization  # noqa: F401 - registers the schemes the plans may name
    from vessel_seg.builtin import PACKAGED_DIR
    from vessel_seg.errors import PlansError
    from vessel_seg.planners.plans import Plans

    data = json.loads((PACKAGED_DIR / "plans.json").read_text())
    data.setdefault("intensity_properties", {}).setdefault("0", {"mean": 0.0, "std": 1.0, "percentile_00_5": -1.0,
                                                                 "percentile_99_5": 1.0})
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    target = tmp_path / "plans.json"
    target.write_text(json.dumps(data))
    with pytest.raises(PlansError, match=message) as caught:
        Plans.load(target)
    assert str(target) in str(caught.value)


def test_a_synthetic_volume_too_large_for_memory_is_refused_before_any_folder(tmp_path, capsys):
    from vessel_seg.cli.generate_synthetic import main as generate_main

    assert generate_main(["-d", "5", "--cases", "1", "--size", "100000"]) == 2
    assert "GiB of memory" in capsys.readouterr().err
    assert generate_main(["-d", "5", "--cases", "1", "--size", "100000", "--overwrite"]) == 2


def test_check_memory_compares_with_what_is_available(monkeypatch):
    from vessel_seg import resources
    from vessel_seg.errors import VesselSegError

    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 2**30)
    resources.check_memory(2**29, "half", "fine")
    with pytest.raises(VesselSegError, match="needs about 2.0 GiB of memory, 1.0 GiB are available; smaller"):
        resources.check_memory(2**31, "twice", "smaller")
    assert resources.available_memory_bytes.__call__() == 2**30


def test_evaluate_refuses_background_labels_and_no_workers(tmp_path, capsys):
    from vessel_seg.cli.evaluate import main as evaluate_main

    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    assert evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-np", "0"]) == 2
    assert evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--labels", "0"]) == 2
    err = capsys.readouterr().err
    assert "-np 0" in err and "0 is the background" in err


def test_evaluating_a_label_no_reference_holds_says_so(tmp_path):
    import numpy as np

    from vessel_seg.evaluation.evaluate import evaluate_folders
    from vessel_seg.imageio import ImageGeometry, write_image

    geometry = ImageGeometry(shape=(8, 8, 8), spacing=(1.0,) * 3, origin=(0.0,) * 3,
                             direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
        write_image(mask, geometry, tmp_path / folder / "case.nii.gz")
    result = evaluate_folders(tmp_path / "ref", tmp_path / "pred", None, labels=[7])
    assert any("label(s) [7] occur in none of the 1 reference map(s)" in w for w in result.warnings)
    assert not evaluate_folders(tmp_path / "ref", tmp_path / "pred", None, labels=[1]).warnings


def test_planning_warns_when_numtraining_disagrees_with_the_cases(tmp_path, monkeypatch, caplog):
    import logging

    from vessel_seg.dataset import DatasetInfo
    from vessel_seg.dataset_conversion.synthetic import generate_dataset
    from vessel_seg.planners.pipeline import plan_and_preprocess

    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / name))
    folder = generate_dataset(41, 2, num_test_cases=0, size=24, seed=2)
    info = DatasetInfo.load(folder / "dataset.json")
    info.num_training = 10
    info.save(folder / "dataset.json")
    caplog.set_level(logging.WARNING)
    plan_and_preprocess(41, ["3d_fullres"], plans_name="cpu", preprocess=False)
    assert any("numTraining is 10 but labelsTr holds 2 case(s)" in r.getMessage() for r in caplog.records)


def _nifti(tmp_path, name, affine=None, pixdim=None):
    import nibabel as nib
    import numpy as np

    image = nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), np.eye(4) if affine is None else affine)
    if pixdim is not None:
        image.header["pixdim"][1:4] = pixdim
    path = tmp_path / name
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("kind", ["singular", "skewed", "pixdim0"])
def test_headers_that_are_not_a_real_geometry_are_refused_by_name(kind, tmp_path):
    import numpy as np

    from vessel_seg.errors import ImageReadError
    from vessel_seg.imageio import read_array, read_geometry

    if kind == "pixdim0":
        import gzip
        import struct

        raw = bytearray(gzip.decompress(_nifti(tmp_path, "ok.nii.gz").read_bytes()))
        raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1]: nibabel itself would not write a 0
        path = tmp_path / "p.nii.gz"
        path.write_bytes(gzip.compress(bytes(raw)))
        expected = "not positive"
    else:
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.zeros((6, 7, 8), np.float32))
        matrix = (1, 0, 0, 0, 1, 0, 0, 0, 0) if kind == "singular" else (1, 0.3, 0, 0, 1, 0, 0, 0, 1)
        path = tmp_path / "d.mha"
        sitk.WriteImage(image, str(path))
        text = path.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                         ("TransformMatrix = " + " ".join(map(str, matrix))).encode())
        path.write_bytes(text)
        expected = "determinant is 0|singular" if kind == "singular" else "not orthonormal"
    for reader in (read_geometry, read_array):
        with pytest.raises(ImageReadError, match=expected) as caught:
            reader(path)
        assert str(path) in str(caught.value)


def _model_copy(tmp_path):
    import shutil

    from vessel_seg.builtin import PACKAGED_DIR

    folder = tmp_path / "vsTrainer__vs_builtin__3d_fullres"
    shutil.copytree(PACKAGED_DIR, folder)
    return folder


def _generated_mutations() -> dict:
    """Every way of contradicting the checkpoint through one value of the shipped plans' network: each stage's
    features doubled, each encoder/decoder block count raised, the bottleneck divisor changed, a stage dropped."""
    from vessel_seg.builtin import PACKAGED_DIR

    network = json.loads((PACKAGED_DIR / "plans.json").read_text())["configurations"]["3d_fullres"]["network"]
    mutations = {}
    for field, change in (("features_per_stage", lambda v: v * 2), ("blocks_per_stage", lambda v: v + 1),
                          ("blocks_per_stage_decoder", lambda v: v + 1)):
        for index in range(len(network[field])):
            def mutate(n, field=field, index=index, change=change):
                n[field][index] = change(n[field][index])
            mutations[f"{field}[{index}]"] = mutate
    mutations["bottleneck_divisor"] = lambda n: n.update(bottleneck_divisor=n["bottleneck_divisor"] * 2)
    per_stage = ("features_per_stage", "kernel_sizes", "strides", "blocks_per_stage")
    mutations["one stage fewer"] = lambda n: n.update({k: n[k][:-1] for k in (*per_stage, "blocks_per_stage_decoder")})
    return mutations


MUTATIONS = _generated_mutations()


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_plans_that_contradict_the_checkpoint_are_one_line_before_building(mutation, tmp_path):
    from vessel_seg.errors import CheckpointError
    from vessel_seg.inference.predictor import load_trained_model

    folder = _model_copy(tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    MUTATIONS[mutation](plans["configurations"]["3d_fullres"]["network"])
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(CheckpointError, match="do not fit the network of") as caught:
        load_trained_model(folder, ["all"], device="cpu")
    assert "\n" not in str(caught.value) and "plans.json" in str(caught.value)


@pytest.mark.parametrize("field, value", [("features_per_stage", [16, 32, 64, 128, 160000]),
                                          ("blocks_per_stage", [100000, 1, 1, 1, 1])])
def test_absurd_network_sizes_are_refused_when_the_plans_load(field, value, tmp_path):
    from vessel_seg.errors import PlansError
    from vessel_seg.planners.plans import Plans

    folder = _model_copy(tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["network"][field] = value
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(PlansError, match="at most"):
        Plans.load(folder / "plans.json")


def test_a_checkpoint_without_metadata_is_one_line(tmp_path):
    from vessel_seg.checkpoint import load_checkpoint, save_checkpoint
    from vessel_seg.errors import CheckpointError
    from vessel_seg.inference.predictor import load_trained_model

    folder = _model_copy(tmp_path)
    path = folder / "fold_all" / "checkpoint_final.pt"
    state = load_checkpoint(path)
    save_checkpoint({"network_weights": state["network_weights"], "metadata": {}}, path)
    with pytest.raises(CheckpointError, match="lacks a valid 'in_channels'"):
        load_trained_model(folder, ["all"], device="cpu")


def _builtin_archive(tmp_path, dataset="Dataset501_Synthetic", edit=None, drop=()):
    """A model archive made from the shipped model's files, as vs_export_model lays them out."""
    import zipfile

    from vessel_seg.builtin import PACKAGED_DIR

    folder = f"{dataset}/vsTrainer__vs_builtin__3d_fullres"
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("plans.json", "dataset.json", "fold_all/checkpoint_final.pt"):
            if name in drop:
                continue
            data = (PACKAGED_DIR / name).read_bytes()
            if name == "plans.json" and edit is not None:
                plans = json.loads(data)
                edit(plans)
                data = json.dumps(plans).encode()
            zf.writestr(f"{folder}/{name}", data)
    return path


@pytest.mark.parametrize("case, message", [
    ("os_system", "network_class must be a registered network name"),
    ("no_plans", "has no plans.json"),
    ("mismatch", "do not fit the network"),
])
def test_import_checks_the_model_folder_as_a_whole(case, message, tmp_path, monkeypatch, capsys):
    from vessel_seg.cli.model_sharing import import_main

    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / name))
    edits = {"os_system": lambda p: p["configurations"]["3d_fullres"]["network"].update(network_class="os.system"),
             "mismatch": lambda p: p["configurations"]["3d_fullres"]["network"].update(bottleneck_divisor=4)}
    archive = _builtin_archive(tmp_path, edit=edits.get(case), drop=("plans.json",) if case == "no_plans" else ())
    assert import_main([str(archive)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "results" / "Dataset501_Synthetic" / "vsTrainer__vs_builtin__3d_fullres").exists()


def test_import_refuses_a_dataset_id_that_is_taken(tmp_path, monkeypatch, capsys):
    from vessel_seg.cli.model_sharing import import_main

    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / name))
    (tmp_path / "raw" / "Dataset501_Synthetic").mkdir(parents=True)
    assert import_main([str(_builtin_archive(tmp_path, dataset="Dataset501_Other"))]) == 2
    assert "dataset id 501 is taken" in capsys.readouterr().err
    assert import_main([str(_builtin_archive(tmp_path))]) == 0  # the same name is fine


def test_export_refuses_links_out_of_the_model_folder(tmp_path, monkeypatch, capsys):
    import shutil

    from vessel_seg.builtin import PACKAGED_DIR
    from vessel_seg.cli.model_sharing import export_main

    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / name))
    folder = tmp_path / "results" / "Dataset501_Synthetic" / "vsTrainer__vs_builtin__3d_fullres"
    shutil.copytree(PACKAGED_DIR, folder)
    (folder / "dataset.json").unlink()
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    (folder / "dataset.json").symlink_to(secret)
    assert export_main(["501", "-o", str(tmp_path / "out.zip")]) == 2
    assert "symbolic link" in capsys.readouterr().err and not (tmp_path / "out.zip").exists()


def _write_dicom(folder, slices=range(6), series=lambda z: "1.2.3.4"):
    import numpy as np
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in slices:
        plane = np.full((5, 6), z * 10, np.int16)
        image = sitk.GetImageFromArray(plane)
        image.SetSpacing((0.7, 0.8))
        for tag, value in {"0008|0060": "CT", "0020|000d": "1.2.3", "0020|000e": series(z), "0020|0013": str(z + 1),
                           "0020|0032": f"10\\-20\\{30 + 2.5 * z:.4f}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0028|0030": "0.8\\0.7", "0018|0050": "2.5"}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{z:03d}.dcm"))
        writer.Execute(image)
    return folder


@pytest.mark.parametrize("kind, message", [
    ("two_series", "holds 2 DICOM series"),
    ("uid_per_file", "DICOM series"),
    ("gap", "unevenly spaced"),
])
def test_dicom_folders_that_are_not_one_whole_series_are_refused(kind, message, tmp_path):
    from vessel_seg.errors import ImageReadError
    from vessel_seg.imageio.reader import read_dicom_series

    if kind == "two_series":
        folder = _write_dicom(tmp_path / "d", series=lambda z: "1.2.3.4" if z < 3 else "1.2.3.5")
    elif kind == "uid_per_file":
        folder = _write_dicom(tmp_path / "d", series=lambda z: f"1.2.3.{z + 10}")
    else:
        folder = _write_dicom(tmp_path / "d", slices=[0, 1, 2, 4, 5])
    with pytest.raises(ImageReadError, match=message) as caught:
        read_dicom_series(folder)
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)
    whole = _write_dicom(tmp_path / "ok")
    array, geometry = read_dicom_series(whole)
    assert array.shape == (6, 5, 6) and abs(geometry.spacing[0] - 2.5) < 1e-6


def test_any_parser_failure_of_a_dicom_folder_is_one_line(tmp_path, monkeypatch):
    import SimpleITK as sitk

    from vessel_seg.errors import ImageReadError
    from vessel_seg.imageio.reader import read_dicom_series

    folder = _write_dicom(tmp_path / "d")

    def explode(self):
        raise ValueError("multi-component voxels")  # what an RGB series raised before

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", explode)
    with pytest.raises(ImageReadError, match="cannot read DICOM series"):
        read_dicom_series(folder)


def test_a_header_too_large_for_memory_is_refused_before_decompression(tmp_path, monkeypatch):
    import gzip
    import struct

    from vessel_seg import resources
    from vessel_seg.errors import ImageReadError
    from vessel_seg.imageio import read_array

    raw = bytearray(gzip.decompress(_nifti(tmp_path, "small.nii.gz").read_bytes()))
    raw[40:56] = struct.pack("<8h", 3, 3000, 3000, 3000, 1, 1, 1, 1)  # dim: a 3000^3 volume, by the header
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(bytes(raw)))  # the voxels are not there at all: nothing must try to read them
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 8 * 2**30)
    with pytest.raises(ImageReadError, match="3000x3000x3000 voxels, by its header.*GiB of memory"):
        read_array(bomb)


BOUNDARIES = {  # where untrusted data enters, and the dependency call that reads it there
    "image": ("nibabel", "load"),
    "plans": ("vessel_seg.planners.plans", "read_json"),
    "checkpoint": ("torch", "load"),
    "dataset": ("vessel_seg.dataset.DatasetInfo", "from_json"),
}
EXCEPTIONS = [ValueError, KeyError, IndexError, RuntimeError, OverflowError, TypeError, AttributeError,
              ZeroDivisionError, MemoryError, UnicodeDecodeError, NotImplementedError, OSError]


def _raise(kind):
    def boom(*args, **kwargs):
        if kind is UnicodeDecodeError:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        raise kind("injected failure")
    return boom


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    import numpy as np

    from vessel_seg.imageio import ImageGeometry, write_image

    folder = tmp_path_factory.mktemp("img")
    geometry = ImageGeometry(shape=(24, 24, 24), spacing=(1.0,) * 3, origin=(0.0,) * 3,
                             direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    write_image(np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32), geometry,
                folder / "case_0000.nii.gz")
    return folder


def test_random_dependency_failures_at_every_boundary_are_one_line_naming_the_file(one_image, tmp_path_factory):
    import importlib

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from vessel_seg.cli.predict import main as predict_main

    seen: set = set()

    @settings(max_examples=24, deadline=None, suppress_health_check=list(HealthCheck))
    @given(boundary=st.sampled_from(sorted(BOUNDARIES)), kind=st.sampled_from(EXCEPTIONS))
    def check(boundary, kind):
        module_name, attribute = BOUNDARIES[boundary]
        owner_name, _, cls = module_name.rpartition(".") if module_name.endswith("DatasetInfo") else (module_name, "", "")
        owner = importlib.import_module(owner_name)
        target = getattr(owner, cls) if cls else owner
        out = tmp_path_factory.mktemp("out")
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("VS_BUILTIN_MODEL", raising=False)
            mp.setattr(target, attribute, _raise(kind))
            import contextlib
            import io

            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = predict_main(["-i", str(one_image), "-o", str(out), "--model", "builtin", "--disable-tta"])
        lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
        assert rc == 2, (boundary, kind, err.getvalue()[-500:])
        assert len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()[-500:]
        assert "/" in lines[0], lines[0]  # names the file it could not use
        assert not any(out.glob("*.nii.gz"))
        seen.add((boundary, lines[0].split(":")[1][:60]))

    check()
    assert {boundary for boundary, _ in seen} == set(BOUNDARIES), seen  # every boundary was reached and failed


def test_a_dataset_folder_with_a_bad_name_is_named_not_skipped(tmp_path):
    from vessel_seg.errors import DatasetError
    from vessel_seg.paths import resolve_dataset

    (tmp_path / "Dataset614_Uni códe spaces").mkdir()
    with pytest.raises(DatasetError, match="Dataset614_Uni códe spaces: looks like dataset 614"):
        resolve_dataset(614, [tmp_path])
    with pytest.raises(DatasetError, match="no dataset with id 615"):
        resolve_dataset(615, [tmp_path])


def test_a_2d_case_in_a_3d_dataset_is_refused_by_name(tmp_path, monkeypatch):
    import numpy as np
    import SimpleITK as sitk

    from vessel_seg.dataset_conversion.synthetic import generate_dataset
    from vessel_seg.errors import DatasetError
    from vessel_seg.planners.fingerprint import extract_fingerprint

    folder = generate_dataset(42, 3, num_test_cases=0, size=24, seed=2, raw_root=tmp_path)
    flat = np.zeros((32, 32), np.float32)
    label = np.zeros((32, 32), np.uint8)
    label[10:14, :] = 1
    sitk.WriteImage(sitk.GetImageFromArray(flat), str(folder / "imagesTr" / "synth_001_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / "labelsTr" / "synth_001.nii.gz"))
    with pytest.raises(DatasetError, match="'synth_001' is a 2D image .* in a dataset of 3D volumes"):
        extract_fingerprint(folder)


def test_an_absurd_plans_spacing_is_blamed_on_the_plans_not_the_image(tmp_path):
    from dataclasses import replace

    from training_helpers import threshold_model

    from vessel_seg.errors import ImageReadError, PlansError
    from vessel_seg.imageio import ImageGeometry
    from vessel_seg.inference.prediction_inputs import check_resampling

    model = threshold_model()
    model.plans.original_median_spacing = [1.0, 1.0, 1.0]
    geometry = ImageGeometry(shape=(64, 64, 64), spacing=(1.0,) * 3, origin=(0.0,) * 3,
                             direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    check_resampling(tmp_path / "x.nii.gz", geometry, [model])  # a sane pair passes
    bad_plans = replace(model, config=replace(model.config, spacing=[1e-4, 1e-4, 1e-4]))
    with pytest.raises(PlansError, match="plans.json: configuration .* far finer than"):
        check_resampling(tmp_path / "x.nii.gz", geometry, [bad_plans])
    bad_header = replace(geometry, spacing=(1000.0, 1000.0, 1000.0))
    with pytest.raises(ImageReadError, match="check the spacing in the header"):
        check_resampling(tmp_path / "x.nii.gz", bad_header, [model])


@pytest.mark.parametrize("kind", [ValueError, RuntimeError, MemoryError, IndexError, OSError])
@pytest.mark.parametrize("cli", ["evaluate", "plan"])
def test_other_clis_turn_reader_failures_into_one_line(cli, kind, tmp_path, monkeypatch, capsys):
    import nibabel

    from vessel_seg.cli.evaluate import main as evaluate_main
    from vessel_seg.cli.plan_and_preprocess import main as plan_main
    from vessel_seg.dataset_conversion.synthetic import generate_dataset

    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / name))
    folder = generate_dataset(43, 2, num_test_cases=1, size=16, seed=2)
    monkeypatch.setattr(nibabel, "load", _raise(kind))
    if cli == "evaluate":
        rc = evaluate_main(["-ref", str(folder / "labelsTs"), "-pred", str(folder / "labelsTs"), "-o", str(tmp_path / "e")])
    else:
        rc = plan_main(["-d", "43", "-pl", "cpu", "-np", "1"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err and ".nii.gz" in lines[0], err[-400:]


@pytest.mark.parametrize("bad", ["../../x", "/etc/passwd", "best/../../y"])
def test_checkpoint_names_are_checked_too(bad, one_image, tmp_path, monkeypatch, capsys):
    from vessel_seg.cli.predict import main as predict_main

    monkeypatch.delenv("VS_BUILTIN_MODEL", raising=False)
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / name))
    import shutil

    from vessel_seg.builtin import PACKAGED_DIR

    shutil.copytree(PACKAGED_DIR, tmp_path / "results" / "Dataset501_S" / "vsTrainer__vs_builtin__3d_fullres")
    assert predict_main(["-i", str(one_image), "-o", str(tmp_path / "o"), "-d", "501", "-chk", bad]) == 2
    err = capsys.readouterr().err
    assert "is not valid: use one of" in err and "Traceback" not in err
