import numpy as np
import pytest
import SimpleITK as sitk

from vessel_seg.errors import ImageReadError, ImageWriteError
from vessel_seg.imageio import ImageGeometry, read_array, read_image, read_label, write_image

OBLIQUE = tuple(np.array([[0.0, 1.0, 0.0], [0.6, 0.0, 0.8], [0.8, 0.0, -0.6]]).ravel())
GEOMETRY = ImageGeometry(shape=(5, 6, 7), spacing=(2.5, 0.7, 0.8), origin=(1.5, -3.25, 10.0), direction=OBLIQUE)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, ext):
    data = np.random.default_rng(0).normal(size=GEOMETRY.shape).astype(np.float32)
    path = write_image(data, GEOMETRY, tmp_path / f"case{ext}")
    back, geometry = read_array(path)
    np.testing.assert_array_equal(back, data)
    assert geometry.shape == GEOMETRY.shape
    np.testing.assert_allclose(geometry.spacing, GEOMETRY.spacing, rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, GEOMETRY.origin, atol=1e-5)
    np.testing.assert_allclose(geometry.direction, GEOMETRY.direction, atol=1e-6)
    # Our array order agrees with SimpleITK's own reader.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), back)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_read_image_stacks_channels_and_rejects_mismatch(tmp_path):
    a = np.zeros(GEOMETRY.shape, np.float32)
    write_image(a, GEOMETRY, tmp_path / "c_0000.nrrd")
    write_image(a + 1, GEOMETRY, tmp_path / "c_0001.nrrd")
    data, _ = read_image([tmp_path / "c_0000.nrrd", tmp_path / "c_0001.nrrd"])
    assert data.shape == (2, *GEOMETRY.shape) and data.dtype == np.float32 and data[1].min() == 1
    other = ImageGeometry(shape=GEOMETRY.shape, spacing=(1.0, 1.0, 1.0))
    write_image(a, other, tmp_path / "c_0002.nrrd")
    with pytest.raises(ImageReadError, match="c_0002.nrrd"):
        read_image([tmp_path / "c_0000.nrrd", tmp_path / "c_0002.nrrd"])


def test_truncated_nifti_is_rejected(tmp_path):
    data = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)
    path = write_image(data, ImageGeometry(shape=(20, 20, 20), spacing=(1, 1, 1)), tmp_path / "t.nii.gz")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ImageReadError, match="t.nii.gz"):
        read_array(path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_nan_voxels_are_rejected(tmp_path, ext):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    path = write_image(data, ImageGeometry(shape=(4, 4, 4), spacing=(1, 1, 1)), tmp_path / f"n{ext}")
    with pytest.raises(ImageReadError, match="NaN or Inf"):
        read_array(path)


def test_not_an_image_and_empty_file(tmp_path):
    (tmp_path / "e.nii.gz").write_bytes(b"")
    (tmp_path / "j.nii.gz").write_bytes(b"hello, I am not an image" * 10)
    for name in ("e.nii.gz", "j.nii.gz"):
        with pytest.raises(ImageReadError, match=name):
            read_array(tmp_path / name)


def test_label_reading_and_2d(tmp_path):
    lab = np.zeros((3, 4, 5), np.float32)
    lab[1, 1, 1] = 2
    write_image(lab, ImageGeometry(shape=(3, 4, 5), spacing=(1, 1, 1)), tmp_path / "l.nii.gz")
    back, _ = read_label(tmp_path / "l.nii.gz")
    assert back.dtype == np.uint8 and back[1, 1, 1] == 2
    flat = ImageGeometry(shape=(1, 8, 9), spacing=(999.0, 0.5, 0.25), origin=(2.0, 3.0, 0.0), ndim=2)
    write_image(np.ones((1, 8, 9), np.float32), flat, tmp_path / "flat.nii.gz")
    arr, geo = read_array(tmp_path / "flat.nii.gz")
    assert arr.shape == (1, 8, 9) and geo.ndim == 2 and geo.spacing[1:] == (0.5, 0.25)


def test_write_to_missing_folder_fails_cleanly(tmp_path):
    with pytest.raises(ImageWriteError, match="does not exist"):
        write_image(np.zeros((2, 2, 2)), ImageGeometry(shape=(2, 2, 2), spacing=(1, 1, 1)), tmp_path / "no" / "x.nii.gz")


def test_library_warnings_join_the_error_line_instead_of_printing(tmp_path, monkeypatch, capfd):
    import os

    from vessel_seg.imageio import reader

    path = tmp_path / "x.nrrd"
    path.write_bytes(b"NRRD0004\n")

    def noisy(_path):
        os.write(2, b"WARNING: In itkNrrdImageIO.cxx: unknown field\n")  # as C++ code prints it
        raise RuntimeError("Could not read header")

    monkeypatch.setattr(reader, "_header_geometry", noisy)
    with pytest.raises(ImageReadError, match="Could not read header; WARNING: In itkNrrdImageIO"):
        reader.read_geometry(path)
    assert "WARNING" not in capfd.readouterr().err
