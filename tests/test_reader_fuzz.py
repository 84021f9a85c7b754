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
