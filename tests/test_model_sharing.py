"""vs_export_model / vs_import_model: round trip, and refusal of unsafe archives."""

from __future__ import annotations

import pickle
import stat
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vessel_seg.cli.model_sharing import export_main, import_main
from vessel_seg.cli.predict import main as predict_main
from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.imageio import read_array
from vessel_seg.planners.pipeline import plan_and_preprocess
from vessel_seg.trainers.settings import TrainingSettings
from vessel_seg.trainers.trainer import TrainingJob, train

DATASET = "Dataset007_Synthetic"
MODEL = f"{DATASET}/vsTrainer__cpu__3d_fullres"


class _Payload:
    """Unpickling this would create a marker file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _import_error(capsys, zip_path, *extra) -> str:
    assert import_main([str(zip_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_export_import_round_trip_then_predict(tmp_path, monkeypatch, capsys):
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"VS_{name.upper()}", str(tmp_path / name))
    generate_dataset(7, 3, num_test_cases=1, size=32, seed=3)
    plan_and_preprocess(7, plans_name="cpu", num_workers=1)
    settings = TrainingSettings(epochs=1, iterations_per_epoch=1, validation_iterations=1, num_workers=0,
                                final_validation=False)
    train(TrainingJob(7, "3d_fullres", "all", "cpu", settings))
    archive = tmp_path / "model.zip"
    assert export_main(["7", "-o", str(archive), "-c", "3d_fullres", "-pl", "cpu"]) == 0
    names = set(zipfile.ZipFile(archive).namelist())
    assert {f"{MODEL}/plans.json", f"{MODEL}/dataset.json", f"{MODEL}/fold_all/checkpoint_final.pt"} <= names
    assert not any("latest" in n for n in names)

    monkeypatch.setenv("VS_RESULTS", str(tmp_path / "elsewhere"))
    assert import_main([str(archive)]) == 0
    assert (tmp_path / "elsewhere" / MODEL / "fold_all" / "checkpoint_final.pt").is_file()
    assert "already exists" in _import_error(capsys, archive)
    assert import_main([str(archive), "--overwrite"]) == 0
    assert not [p for p in (tmp_path / "elsewhere" / DATASET).iterdir() if p.name.startswith(".")]

    image = next((tmp_path / "raw" / DATASET / "imagesTs").glob("*_0000.nii.gz"))
    assert predict_main(["-i", str(image), "-o", str(tmp_path / "pred"), "--disable-tta"]) == 0
    (mask,) = (tmp_path / "pred").glob("*.nii.gz")
    assert read_array(mask)[1].mismatch(read_array(image)[1]) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [("../evil.json", "leaves"), (f"{MODEL}/../../../evil.json", "leaves"), ("/tmp/evil.json", "absolute"),
     (f"{MODEL}/notes.txt", "not part of")],
)
def test_unsafe_entries_are_refused(data_roots, tmp_path, capsys, entry, message):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{MODEL}/plans.json", "{}")
        zf.writestr(entry, "{}")
    assert message in _import_error(capsys, archive)
    assert list(data_roots["results"].iterdir()) == []


def test_symlink_entry_is_refused(data_roots, tmp_path, capsys):
    archive = tmp_path / "link.zip"
    link = zipfile.ZipInfo(f"{MODEL}/dataset.json")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    assert "symbolic link" in _import_error(capsys, archive)
    assert list(data_roots["results"].iterdir()) == []


def test_malicious_checkpoint_is_refused(data_roots, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        torch.save({"network_weights": _Payload(marker)}, handle, pickle_module=pickle)
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{MODEL}/plans.json", "{}")
        zf.write(evil, f"{MODEL}/fold_0/checkpoint_final.pt")
    err = _import_error(capsys, archive)
    assert "checkpoint_final.pt refused" in err
    assert not marker.exists()
    assert not (data_roots["results"] / MODEL).exists()
    assert list(data_roots["results"].iterdir()) == []


def _valid_checkpoint(path) -> bytes:
    torch.save({"network_weights": {"w": torch.zeros(2)}, "metadata": {"fold": "0"}}, path)
    return path.read_bytes()


def _encrypted(zf: zipfile.ZipFile, tmp_path) -> None:
    info = zipfile.ZipInfo(f"{MODEL}/dataset.json")
    zf.writestr(info, "{}")
    info.flag_bits |= 0x1  # the header says "encrypted"


def _unknown_compression(zf: zipfile.ZipFile, tmp_path) -> None:
    info = zipfile.ZipInfo(f"{MODEL}/dataset.json")
    zf.writestr(info, "{}")
    info.compress_type = 99


def _tensor_only(zf: zipfile.ZipFile, tmp_path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "t.pt")
    zf.write(tmp_path / "t.pt", f"{MODEL}/fold_0/checkpoint_final.pt")


def _recipe_outside(zf: zipfile.ZipFile, tmp_path) -> None:
    recipe = {"dataset_name": DATASET, "plans_name": "cpu", "configurations": ["3d_fullres"], "folds": ["0"],
              "trainer": "../../../ELSE/x"}
    zf.writestr(f"{DATASET}/inference_recipe.json", __import__("json").dumps(recipe))


def _many_folds(zf: zipfile.ZipFile, tmp_path) -> None:
    data = _valid_checkpoint(tmp_path / "ok.pt")
    for k in range(25):
        zf.writestr(f"{MODEL}/fold_{k}/checkpoint_final.pt", data)


ARCHIVE_DAMAGE = {
    "encrypted flag": (_encrypted, "encrypted"),
    "unknown compression": (_unknown_compression, "compression method 99"),
    "tensor-only checkpoint": (_tensor_only, "no vessel_seg network weights"),
    "recipe trainer outside VS_RESULTS": (_recipe_outside, "plain name"),
    "25 folds": (_many_folds, "25 folds"),
}


@pytest.mark.parametrize("name", list(ARCHIVE_DAMAGE))
def test_damaged_or_foreign_archives_are_refused_before_install(data_roots, tmp_path, capsys, name):
    damage, message = ARCHIVE_DAMAGE[name]
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{MODEL}/plans.json", "{}")
        damage(zf, tmp_path)
    assert message in _import_error(capsys, archive)
    assert list(data_roots["results"].iterdir()) == []


def _rewrite_entry_bytes(archive, edit) -> None:
    data = bytearray(archive.read_bytes())
    edit(data)
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["crc", "lying size"])
def test_corrupt_entries_are_refused(data_roots, tmp_path, capsys, damage):
    archive = tmp_path / "bad.zip"
    payload = _valid_checkpoint(tmp_path / "ok.pt")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{MODEL}/plans.json", "{}")
        zf.writestr(f"{MODEL}/fold_0/checkpoint_final.pt", payload)
    blob = archive.read_bytes()
    start = blob.index(payload)
    if damage == "crc":
        _rewrite_entry_bytes(archive, lambda d: d.__setitem__(start + len(payload) // 2, d[start + len(payload) // 2] ^ 0xFF))
    else:  # the central directory claims 10 bytes for the checkpoint: extraction must stop there
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(f"{MODEL}/fold_0/checkpoint_final.pt")
        size_field = blob.rindex(b"PK\x01\x02") + 24  # the last central record is the checkpoint's

        _rewrite_entry_bytes(archive, lambda d: d.__setitem__(slice(size_field, size_field + 4), (10).to_bytes(4, "little")))
        assert info.file_size == len(payload)
    err = _import_error(capsys, archive)
    assert "checkpoint_final.pt" in err and ("damaged" in err or "declared" in err or "refused" in err)
    assert list(data_roots["results"].iterdir()) == []


def _small_archive(tmp_path) -> bytes:
    path = tmp_path / "seed.zip"
    payload = _valid_checkpoint(tmp_path / "seed.pt")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{MODEL}/plans.json", '{"plans_name": "cpu"}')
        zf.writestr(f"{MODEL}/fold_0/checkpoint_final.pt", payload)
    return path.read_bytes()


@settings(max_examples=int(__import__("os").environ.get("VS_FUZZ_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
       from_end=st.booleans(), cut=st.one_of(st.none(), st.integers(1, 400)))
def test_mutated_archives_import_or_fail_in_one_line(tmp_path_factory, monkeypatch, edits, from_end, cut):
    """Bytes changed anywhere (local headers, data, central directory) or cut: import works or one line, no trace."""
    from vessel_seg.errors import VesselSegError
    from vessel_seg.inference.model_sharing import import_model

    base = tmp_path_factory.mktemp("zipfuzz")
    monkeypatch.setenv("VS_RESULTS", str(base / "results"))
    blob = bytearray(_small_archive(base))
    for position, value in edits:  # from_end: aim at the central directory and end record
        index = len(blob) - 1 - position % len(blob) if from_end else position % len(blob)
        blob[index] = value
    archive = base / "fuzz.zip"
    archive.write_bytes(bytes(blob[: len(blob) - cut] if cut else blob))
    try:
        import_model(archive)
    except VesselSegError as exc:
        assert "\n" not in str(exc)
        leftovers = [p for p in (base / "results").rglob("*")] if (base / "results").exists() else []
        assert not [p for p in leftovers if p.is_file()]
