"""Converters from public dataset layouts (tiny replicas built here) to the raw dataset format."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from vessel_seg.cli.convert_dataset import main as convert_main
from vessel_seg.dataset import DatasetInfo, training_cases
from vessel_seg.dataset_conversion.generic import convert_folder
from vessel_seg.dataset_conversion.msd_hepatic import convert_msd_hepatic
from vessel_seg.dataset_conversion.topcow import convert_topcow
from vessel_seg.dataset_conversion.vmr import convert_vmr, read_vti
from vessel_seg.errors import DatasetError, ImageReadError
from vessel_seg.imageio import ImageGeometry, read_array, read_label, write_image

GEO = ImageGeometry(shape=(8, 8, 8), spacing=(2.0, 0.8, 0.7), origin=(1.0, -2.0, 3.5))
RNG = np.random.default_rng(0)


def _image(path: Path, geometry: ImageGeometry = GEO) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = RNG.normal(size=geometry.shape).astype(np.float32)
    write_image(data, geometry, path)
    return data


def _label(path: Path, values: list[int], geometry: ImageGeometry = GEO) -> np.ndarray:
    """A label map holding each of ``values`` in its own slab along z."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros(geometry.shape, np.uint8)
    for i, value in enumerate(values):
        data[i + 1, 2:6, 2:6] = value
    write_image(data, geometry, path)
    return data


def _loaded(folder: Path) -> tuple[DatasetInfo, dict[str, np.ndarray]]:
    info, cases = training_cases(folder)
    return info, {c.case_id: read_label(c.label)[0] for c in cases}


# --- MSD Task08 -----------------------------------------------------------------------------------


@pytest.fixture
def msd(tmp_path) -> Path:
    task = tmp_path / "Task08_HepaticVessel"
    for i in (1, 2):
        _image(task / "imagesTr" / f"hepaticvessel_00{i}.nii.gz")
        _label(task / "labelsTr" / f"hepaticvessel_00{i}.nii.gz", [1, 2])
    _image(task / "imagesTs" / "hepaticvessel_003.nii.gz")
    (task / "imagesTr" / "._hepaticvessel_001.nii.gz").write_bytes(b"\0macOS resource fork")
    meta = {
        "name": "HepaticVessel", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "Vessel", "2": "Tumour"},
        "training": [{"image": f"./imagesTr/hepaticvessel_00{i}.nii.gz", "label": f"./labelsTr/hepaticvessel_00{i}.nii.gz"} for i in (1, 2)],
        "test": ["./imagesTs/hepaticvessel_003.nii.gz"],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def test_msd_vessel_only_folds_tumour_into_background(msd, data_roots):
    target = convert_msd_hepatic(msd.parent, 8)
    assert target == data_roots["raw"] / "Dataset008_HepaticVessel"
    info, labels = _loaded(target)
    assert info.labels == {"background": 0, "vessel": 1} and info.channel_names == {"0": "CT"}
    assert info.num_training == 2 and info.extra["numTest"] == 1
    assert sorted(labels) == ["hepaticvessel_001", "hepaticvessel_002"]
    assert all(set(np.unique(v)) == {0, 1} for v in labels.values())
    assert (labels["hepaticvessel_001"][1] == 1).sum() == 16 and labels["hepaticvessel_001"][2].sum() == 0
    # Images are byte copies under their channel name; the test image lands in imagesTs.
    copied = target / "imagesTr" / "hepaticvessel_001_0000.nii.gz"
    assert copied.read_bytes() == (msd / "imagesTr" / "hepaticvessel_001.nii.gz").read_bytes()
    assert (target / "imagesTs" / "hepaticvessel_003_0000.nii.gz").is_file()
    assert not [p for p in data_roots["raw"].iterdir() if p.name.startswith(".")], "staging left behind"


def test_msd_with_tumour_keeps_label_two_and_overwrite_rules(msd, data_roots):
    target = convert_msd_hepatic(msd, 8, with_tumour=True, include_test=False)
    info, labels = _loaded(target)
    assert info.labels == {"background": 0, "vessel": 1, "tumour": 2}
    assert set(np.unique(labels["hepaticvessel_002"])) == {0, 1, 2}
    assert not (target / "imagesTs").exists()
    with pytest.raises(DatasetError, match="already exists.*--overwrite"):
        convert_msd_hepatic(msd, 8)
    assert _loaded(convert_msd_hepatic(msd, 8, overwrite=True))[0].labels == {"background": 0, "vessel": 1}
    with pytest.raises(DatasetError, match="already used by Dataset008_HepaticVessel"):
        convert_msd_hepatic(msd, 8, name="Other")


def test_msd_source_problems_are_one_clear_line(msd, data_roots):
    (msd / "labelsTr" / "hepaticvessel_002.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"hepaticvessel_002.nii.gz: label of training image"):
        convert_msd_hepatic(msd, 8)
    (msd / "imagesTr" / "hepaticvessel_002.nii.gz").unlink()
    with pytest.raises(DatasetError, match="listed in dataset.json but missing"):
        convert_msd_hepatic(msd, 8)
    (msd / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Liver"}}))
    with pytest.raises(DatasetError, match="not 'Vessel'"):
        convert_msd_hepatic(msd, 8)
    with pytest.raises(DatasetError, match="not an MSD Task08_HepaticVessel folder"):
        convert_msd_hepatic(msd / "imagesTs", 8)
    _label(msd / "labelsTr" / "hepaticvessel_001.nii.gz", [1, 7])
    (msd / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Vessel"}}))
    with pytest.raises(DatasetError, match="label value 7 is not a Task08_HepaticVessel label"):
        convert_msd_hepatic(msd, 8)
    assert list(data_roots["raw"].iterdir()) == []


# --- TopCoW ---------------------------------------------------------------------------------------


@pytest.fixture
def topcow(tmp_path) -> Path:
    release = tmp_path / "download" / "TopCoW2024_Data_Release"
    for case, values in (("ct_001", [1, 4, 15]), ("ct_002", [12, 8]), ("mr_001", [2, 3])):
        _image(release / "imagesTr" / f"topcow_{case}_0000.nii.gz")
        _label(release / "cow_seg_labelsTr" / f"topcow_{case}.nii.gz", values)
    (release / "roi_loc_labelsTr").mkdir()
    return release


def test_topcow_binary_ct_skips_mr(topcow, data_roots):
    target = convert_topcow(topcow.parent, 5)
    assert target.name == "Dataset005_TopCoW_CT"
    info, labels = _loaded(target)
    assert info.labels == {"background": 0, "vessel": 1} and info.channel_names == {"0": "CTA"}
    assert sorted(labels) == ["topcow_ct_001", "topcow_ct_002"]
    assert labels["topcow_ct_001"].sum() == 3 * 16  # three classes, 16 voxels each, all 1


def test_topcow_multiclass_renumbers_3rd_a2(topcow, data_roots):
    info, labels = _loaded(convert_topcow(topcow, 6, multiclass=True))
    assert info.labels["3rd-A2"] == 13 and info.labels["L-ACA"] == 12 and len(info.labels) == 14
    assert sorted(info.labels.values()) == list(range(14))
    assert [int(labels["topcow_ct_001"][z].max()) for z in (1, 2, 3)] == [1, 4, 13]
    info, labels = _loaded(convert_topcow(topcow, 7, modality="mr", multiclass=True))
    assert list(labels) == ["topcow_mr_001"] and info.channel_names == {"0": "MRA"}
    _label(topcow / "cow_seg_labelsTr" / "topcow_ct_002.nii.gz", [14])
    with pytest.raises(DatasetError, match="label value 14 is not a TopCoW label"):
        convert_topcow(topcow, 9, multiclass=True)


def test_topcow_2023_layout_and_errors(tmp_path, data_roots):
    release = tmp_path / "topcow_batch-1_40pairMRCT_30062023"
    for region in ("whole", "roi"):
        _image(release / "imagesTr" / f"topcow_mr_{region}_024_0000.nii.gz")
        _label(release / "mul_labelsTr" / f"topcow_mr_{region}_024.nii.gz", [10])
        _label(release / "bin_labelsTr" / f"topcow_mr_{region}_024.nii.gz", [1])
    _, labels = _loaded(convert_topcow(release, 10, modality="mr", multiclass=True))
    assert list(labels) == ["topcow_mr_whole_024"] and labels["topcow_mr_whole_024"].max() == 10
    _, labels = _loaded(convert_topcow(release, 11, modality="mr", region="roi", name="CoWroi"))
    assert list(labels) == ["topcow_mr_roi_024"]
    with pytest.raises(DatasetError, match="no whole CT images"):
        convert_topcow(release, 12, modality="ct")
    with pytest.raises(DatasetError, match="no imagesTr/ folder found"):
        convert_topcow(tmp_path / "missing", 12)


# --- VMR / SeqSeg ---------------------------------------------------------------------------------


def _vtk_streams(data: bytes, header: str, compress: bool) -> list[bytes]:
    """The byte streams VTK writes for one array: [count + data], or [block header, blocks]."""
    dtype = np.dtype("<u4" if header == "UInt32" else "<u8")
    if not compress:
        return [np.array([len(data)], dtype).tobytes() + data]
    blocks = [data[i : i + 64] for i in range(0, len(data), 64)]
    packed = [zlib.compress(b) for b in blocks]
    head = np.array([len(blocks), 64, len(blocks[-1]), *map(len, packed)], dtype).tobytes()
    return [head, b"".join(packed)]


def write_vti(path: Path, array: np.ndarray, spacing, origin, *, fmt: str, compress=False, header="UInt32", start=(0, 0, 0), direction=None):
    """A VTK XML ImageData file as VTK's writer lays it out (x fastest)."""
    nz, ny, nx = array.shape
    x0, y0, z0 = start
    extent = f"{x0} {x0 + nx - 1} {y0} {y0 + ny - 1} {z0} {z0 + nz - 1}"
    vtk_type = {"f4": "Float32", "u1": "UInt8", "i2": "Int16"}[array.dtype.str[1:]]
    raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    streams = _vtk_streams(raw, header, compress)
    attrs = f'type="{vtk_type}" Name="scalars"'
    appended = b""
    if fmt == "ascii":
        element = f'<DataArray {attrs} format="ascii">{" ".join(str(v) for v in array.ravel())}</DataArray>'
    elif fmt == "binary":
        text = b"".join(base64.b64encode(s) for s in streams).decode()
        element = f'<DataArray {attrs} format="binary">\n  {text}\n</DataArray>'
    else:
        encoding = "raw" if fmt == "appended-raw" else "base64"
        dummy = b"\x00" * 5  # another array first, so that the offset matters
        body = b"".join(streams if encoding == "raw" else [base64.b64encode(s) for s in streams])
        element = f'<DataArray {attrs} format="appended" offset="{len(dummy)}"/>'
        appended = f'<AppendedData encoding="{encoding}">\n_'.encode() + dummy + body + b"\n</AppendedData>\n"
    compressor = ' compressor="vtkZLibDataCompressor"' if compress else ""
    direction_attr = f' Direction="{" ".join(str(v) for v in direction)}"' if direction is not None else ""
    head = (
        f'<?xml version="1.0"?>\n<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" '
        f'header_type="{header}"{compressor}>\n<ImageData WholeExtent="{extent}" '
        f'Origin="{" ".join(map(str, origin))}" Spacing="{" ".join(map(str, spacing))}"{direction_attr}>\n'
        f'<Piece Extent="{extent}"><PointData Scalars="scalars">{element}</PointData><CellData/></Piece>\n</ImageData>\n'
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + appended + b"</VTKFile>\n")


@pytest.mark.parametrize(
    "fmt,compress,header",
    [("ascii", False, "UInt32"), ("binary", False, "UInt32"), ("binary", True, "UInt64"),
     ("appended-raw", False, "UInt64"), ("appended-raw", True, "UInt32"), ("appended-base64", True, "UInt64")],
)
def test_read_vti_matches_vtk_layout(tmp_path, fmt, compress, header):
    data = RNG.integers(-500, 500, size=(3, 4, 5)).astype(np.int16)
    rot = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    write_vti(tmp_path / "a.vti", data, (0.5, 0.6, 0.7), (1.0, 2.0, 3.0), fmt=fmt, compress=compress,
              header=header, start=(2, 0, 1), direction=rot)
    back, geometry = read_vti(tmp_path / "a.vti")
    np.testing.assert_array_equal(back, data)
    assert geometry.shape == (3, 4, 5) and geometry.spacing == (0.7, 0.6, 0.5) and geometry.direction == rot
    # Extent starting at i=2, k=1: origin moves by D @ (2 * 0.5, 0, 1 * 0.7).
    np.testing.assert_allclose(geometry.origin, (1.0, 3.0, 3.7))
    (tmp_path / "b.vti").write_bytes((tmp_path / "a.vti").read_bytes()[:-60])
    with pytest.raises(ImageReadError, match="b.vti: cannot read VTK image"):
        read_vti(tmp_path / "b.vti")


@pytest.fixture
def vmr(tmp_path) -> Path:
    root = tmp_path / "seqseg_data"
    for model in ("0001_H_AO_SVD", "0002_H_ABAO_AAA", "0003_H_CERE"):
        _image(root / "images" / f"{model}.mha")
        truth = np.zeros(GEO.shape, np.uint8)
        truth[2:5, 3:5, 1:7] = 255
        write_vti(root / "truths" / f"{model}.vti", truth, GEO.spacing[::-1], GEO.origin, fmt="appended-raw", compress=True)
    (root / "centerlines").mkdir()
    return root


def test_vmr_flat_layout_with_split_and_scale(vmr, tmp_path, data_roots):
    split = tmp_path / "split.txt"
    split.write_text("# SeqSeg test models\n0003_H_CERE.vtp\n")
    target = convert_vmr(vmr, 20, split_file=split, scale=10.0)
    info, labels = _loaded(target)
    assert info.labels == {"background": 0, "vessel": 1} and info.num_training == 2
    assert sorted(labels) == ["0001_H_AO_SVD", "0002_H_ABAO_AAA"]
    assert labels["0001_H_AO_SVD"].sum() == 3 * 2 * 6
    _, geometry = read_array(target / "imagesTr" / "0001_H_AO_SVD_0000.nii.gz")
    np.testing.assert_allclose(geometry.spacing, np.array(GEO.spacing) * 10, rtol=1e-5)
    np.testing.assert_allclose(geometry.origin, np.array(GEO.origin) * 10, rtol=1e-5)
    assert (target / "imagesTs" / "0003_H_CERE_0000.nii.gz").is_file()
    assert (target / "labelsTs" / "0003_H_CERE.nii.gz").is_file()
    split.write_text(json.dumps({"train": ["0001_H_AO_SVD"], "test": ["0009_missing"]}))
    with pytest.raises(DatasetError, match="names model '0009_missing'"):
        convert_vmr(vmr, 21, split_file=split)


def test_vmr_per_model_folders_need_truth_volumes(tmp_path, data_roots):
    root = tmp_path / "vmr"
    for model in ("0110_0001", "0111_0001"):
        _image(root / model / "Images" / f"{model}.nii.gz")
        (root / model / "Models").mkdir()
    _label(root / "0110_0001" / "truths" / "0110_0001.nii.gz", [1])
    split = tmp_path / "split.json"
    split.write_text(json.dumps(["0111_0001"]))
    target = convert_vmr(root, 22, split_file=split, modality="mr")
    info, labels = _loaded(target)
    assert list(labels) == ["0110_0001"] and info.channel_names == {"0": "MR"}
    assert (target / "imagesTs" / "0111_0001_0000.nii.gz").is_file() and not (target / "labelsTs").exists()
    with pytest.raises(DatasetError, match="0111_0001 has no truth volume.*rasterise"):
        convert_vmr(root, 23)


# --- generic folders and the CLI ------------------------------------------------------------------


def test_generic_folder_pairs_by_stem_and_keeps_geometry(tmp_path, data_roots):
    oblique = ImageGeometry(GEO.shape, GEO.spacing, GEO.origin, (0.0, 1.0, 0.0, 0.6, 0.0, 0.8, 0.8, 0.0, -0.6))
    image = _image(tmp_path / "img" / "a.nrrd", oblique)
    _image(tmp_path / "img" / "b_0000.mha")
    _label(tmp_path / "msk" / "a.nii.gz", [2], oblique)
    _label(tmp_path / "msk" / "b.nrrd", [1, 3])
    target = convert_folder(tmp_path / "img", tmp_path / "msk", 30, "Folder")
    info, labels = _loaded(target)
    assert info.labels == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    assert info.channel_names == {"0": "image"} and sorted(labels) == ["a", "b"]
    back, geometry = read_array(target / "imagesTr" / "a_0000.nii.gz")
    np.testing.assert_array_equal(back, image)
    assert geometry.matches(oblique, rtol=1e-6, atol=1e-6)
    _, labels = _loaded(convert_folder(tmp_path / "img", tmp_path / "msk", 31, "Bin", binarise_masks=True))
    assert labels["b"].max() == 1 and labels["b"].sum() == 32


def test_generic_folder_errors(tmp_path, data_roots):
    _image(tmp_path / "img" / "a.nii.gz")
    _label(tmp_path / "msk" / "a.nii.gz", [1], ImageGeometry(GEO.shape, (1.0, 1.0, 1.0)))
    with pytest.raises(DatasetError, match="a.nii.gz: label geometry differs from image a.nii.gz .spacing"):
        convert_folder(tmp_path / "img", tmp_path / "msk", 32, "Bad")
    assert list(data_roots["raw"].iterdir()) == [], "a failed conversion must leave nothing behind"
    _label(tmp_path / "msk" / "c.nii.gz", [1])
    with pytest.raises(DatasetError, match="c.nii.gz: no image named c"):
        convert_folder(tmp_path / "img", tmp_path / "msk", 32, "Bad")
    _image(tmp_path / "img" / "d.mha")
    with pytest.raises(DatasetError, match="d.mha: no mask named d"):
        convert_folder(tmp_path / "img", tmp_path / "msk", 32, "Bad")


def test_cli_subcommands(msd, tmp_path, data_roots, capsys):
    assert convert_main(["msd-hepatic", str(msd), "-d", "8", "--with-tumour", "-np", "2"]) == 0
    assert "Dataset008_HepaticVessel" in capsys.readouterr().out
    assert convert_main(["msd-hepatic", str(msd), "-d", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--overwrite" in err and "\n" not in err
    _image(tmp_path / "img" / "x.nii.gz")
    _label(tmp_path / "msk" / "x.nii.gz", [4])
    argv = ["folder", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "msk"), "-d", "40",
            "--name", "Mine", "--channel-name", "CT", "--binarise"]
    assert convert_main(argv) == 0
    info, labels = _loaded(data_roots["raw"] / "Dataset040_Mine")
    assert info.is_ct(0) and labels["x"].max() == 1
