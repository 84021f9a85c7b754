"""Domain randomisation v2: registered label-0 distractors and acquisition artefacts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vessel_seg.dataset_conversion import randomization_terms as terms
from vessel_seg.dataset_conversion.domain_randomization import (
    RandomizationRanges,
    _distractors,
    random_geometry,
    randomized_case,
)
from vessel_seg.dataset_conversion.synthetic import case_rng

SMALL = RandomizationRanges(extent_voxels=(32, 40), trees=(1, 2), root_radius_voxels=(1.0, 4.0))


@pytest.fixture
def geometry():
    sd, geom, _ = random_geometry(case_rng(3, 0), SMALL)
    return sd, geom.spacing


@pytest.mark.parametrize("term", terms.DISTRACTORS, ids=lambda t: t.name)
def test_every_distractor_is_a_fraction_map_of_the_volume(term, geometry):
    sd, spacing = geometry
    fraction = term.apply(np.random.default_rng(0), sd.shape, spacing, sd)
    assert fraction.shape == sd.shape and np.isfinite(fraction).all()
    assert fraction.min() >= 0.0 and fraction.max() <= 1.0 + 1e-6 and fraction.max() > 0.2


def test_distractors_carry_label_0_and_are_drawn_near_the_tree(geometry, monkeypatch):
    sd, spacing = geometry
    everything = [replace(t, probability=1.0) for t in terms.DISTRACTORS]
    monkeypatch.setattr("vessel_seg.dataset_conversion.domain_randomization.DISTRACTORS", everything)
    layer, styles = _distractors(np.random.default_rng(1), sd.shape, spacing, sd, 3.0, SMALL)
    assert styles["distractors"] == [t.name for t in terms.DISTRACTORS]
    assert np.all(layer[sd < 0] == 0)  # never on a labelled voxel
    wall = (sd > 0.5) & (sd < 2.5)
    assert np.count_nonzero(layer[wall]) > 0  # some touch a vessel wall


def test_vessel_like_distractors_take_the_vessels_own_contrast(geometry, monkeypatch):
    sd, spacing = geometry
    blobs = [replace(next(t for t in terms.DISTRACTORS if t.name == "blobs"), probability=1.0)]
    monkeypatch.setattr("vessel_seg.dataset_conversion.domain_randomization.DISTRACTORS", blobs)
    ranges = replace(SMALL, vessel_like_distractor_probability=1.0)
    layer, _ = _distractors(np.random.default_rng(2), sd.shape, spacing, sd, -4.0, ranges)
    assert layer.min() < -2.0 and layer.max() <= 0.0  # as dark as the (dark) vessels, within +-30 %
    assert layer.min() >= -4.0 * 1.3 - 1e-5


@pytest.mark.parametrize("term", terms.ARTEFACTS, ids=lambda t: t.name)
def test_every_artefact_keeps_shape_and_finiteness_and_changes_the_image(term):
    image = np.random.default_rng(0).normal(100, 10, (20, 24, 28)).astype(np.float32)
    out = term.apply(np.random.default_rng(1), image.copy())
    assert out.shape == image.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert not np.allclose(out, image)


def test_histogram_shift_is_monotone():
    image = np.linspace(-5, 5, 4000, dtype=np.float32).reshape(10, 20, 20)
    shift = next(t for t in terms.ARTEFACTS if t.name == "histogram_shift")
    out = shift.apply(np.random.default_rng(4), image)
    assert np.all(np.diff(out.ravel()) >= -1e-6)


def test_a_registered_term_is_applied_without_editing_the_renderer(monkeypatch):
    calls = []

    def stripe(rng, image):
        calls.append(image.shape)
        return image + 1.0

    monkeypatch.setattr("vessel_seg.dataset_conversion.domain_randomization.ARTEFACTS",
                        [terms.Term("stripe", 1.0, stripe)])
    case = randomized_case(case_rng(7, 1), SMALL)
    assert calls == [case.image.shape] and "stripe" in case.styles["artefacts"]


def test_v2_cases_are_reproducible_and_record_their_terms():
    a, b = randomized_case(case_rng(8, 2), SMALL), randomized_case(case_rng(8, 2), SMALL)
    assert np.array_equal(a.image, b.image) and a.styles == b.styles
    assert {"distractors", "artefacts", "inverted", "added"} <= set(a.styles)


@pytest.mark.parametrize("seed", range(4))
def test_inverted_images_keep_vessels_darker_than_their_surroundings(seed):
    from scipy import ndimage

    ranges = replace(SMALL, dark_vessel_probability=1.0, inversion_probability=1.0, contrast=(5.0, 6.0),
                     snr=(25.0, 30.0), vessel_like_distractor_probability=0.0)
    case = randomized_case(case_rng(seed, 0), ranges)
    assert case.styles["inverted"]
    lumen = case.label > 0
    shell = ndimage.binary_dilation(lumen, iterations=3) & ~ndimage.binary_dilation(lumen, iterations=1)
    assert case.image[lumen].mean() < case.image[shell].mean()


def test_default_ranges_reach_wide_vessels():
    assert RandomizationRanges().root_radius_voxels[1] >= 12.0
