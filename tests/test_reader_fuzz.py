"""Fuzzing the image readers: mutated NIfTI/NRRD files either read or raise ImageReadError, nothing else."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vessel_seg.errors import ImageReadError
from vessel_seg.imageio import ImageGeometry, read_array, read_label, write_image

GEOMETRY = ImageGeometry(shape=(4, 5, 6), spacing=(2.0, 0.5, 0.75), origin=(1.0, 2.0, 3.0))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_seeds")
    data = np.random.default_rng(0).normal(size=GEOMETRY.shape).astype(np.float32)
    out = {}
    for ext in (".nii", ".nrrd", ".mha"):
        out[ext] = write_image(data, GEOMETRY, folder / f"seed{ext}").read_bytes()
    out[".nii.gz"] = gzip.compress(out[".nii"])
    return out


def _mutate(blob: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(blob)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data[:cut] if cut else data)


@settings(max_examples=int(__import__("os").environ.get("VS_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ext=st.sampled_from([".nii", ".nii.gz", ".nrrd", ".mha"]),
    header_edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    body_edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(1, 2000)),
)
def test_mutated_files_read_or_raise_our_error(seeds, tmp_path, ext, header_edits, body_edits, cut):
    blob = seeds[ext]
    if ext == ".nii.gz":  # mutate the uncompressed stream too, then recompress (plus raw truncation below)
        blob = gzip.compress(_mutate(gzip.decompress(blob), header_edits, None))
        blob = _mutate(blob, body_edits[:1], cut)
    else:
        blob = _mutate(blob, header_edits + body_edits, cut)
    path = tmp_path / f"fuzz{ext}"
    path.write_bytes(blob)
    for reader in (read_array, read_label):
        try:
            array, geometry = reader(path)
        except ImageReadError as exc:
            assert str(path) in str(exc)
        else:
            assert array.ndim == 3 and tuple(array.shape) == tuple(geometry.shape)


SCALES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([1e38, -1e38, 3.0e38, 1e30, 0.0, -0.0, 1.0]),
)


@settings(max_examples=int(__import__("os").environ.get("VS_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(slope=SCALES, inter=SCALES, dtype=st.sampled_from(["int16", "uint8", "float32"]))
def test_nifti_scaling_fields_give_finite_float32_or_our_error(tmp_path, slope, inter, dtype):
    """scl_slope / scl_inter of any value: the image reads as finite float32, or ImageReadError."""
    import nibabel as nib

    from vessel_seg.imageio import read_image

    data = (np.arange(120).reshape(6, 5, 4) % 100).astype(dtype)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(1.0, 0.0)
    image.header["scl_slope"], image.header["scl_inter"] = slope, inter
    path = tmp_path / "scaled.nii.gz"
    nib.save(image, str(path))
    try:
        array, _ = read_image(path)
    except ImageReadError as exc:
        assert str(path) in str(exc)
    else:
        assert array.dtype == np.float32 and np.isfinite(array).all()


def test_nifti_slope_overflowing_float32_is_refused(tmp_path):
    import nibabel as nib

    image = nib.Nifti1Image(np.full((4, 4, 4), 1000, np.int16), np.eye(4))
    image.header["scl_slope"], image.header["scl_inter"] = 1e38, 0.0
    path = tmp_path / "slope.nii.gz"
    nib.save(image, str(path))
    with pytest.raises(ImageReadError, match="beyond what float32 holds"):
        read_array(path)


def test_nifti_whose_qform_and_sform_disagree_is_refused(tmp_path):
    import nibabel as nib

    from vessel_seg.imageio import read_geometry

    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4))
    shifted = np.eye(4)
    shifted[:3, 3] = (10.0, 0.0, 0.0)
    image.set_qform(np.eye(4), code=1)
    image.set_sform(shifted, code=1)
    path = tmp_path / "two_frames.nii.gz"
    nib.save(image, str(path))
    for reader in (read_array, read_geometry):
        with pytest.raises(ImageReadError, match="qform and sform disagree by up to 10 mm"):
            reader(path)
    image.set_sform(np.eye(4), code=1)  # equal transforms: fine
    nib.save(image, str(path))
    assert read_array(path)[0].shape == (6, 5, 4)
