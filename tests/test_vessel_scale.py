"""Test-time vessel scale of modality-free models: coarser grids for wide vessels, fused by the maximum."""

from __future__ import annotations

import numpy as np
import pytest

from vessel_seg.builtin import PACKAGED_DIR
from vessel_seg.cli.predict import main as predict_main
from vessel_seg.errors import VesselSegError
from vessel_seg.imageio import ImageGeometry, read_array, write_image
from vessel_seg.inference import vessel_scale as vs
from vessel_seg.inference.predictor import load_trained_model, predict_original_probabilities


@pytest.fixture(scope="module")
def builtin():
    return load_trained_model(PACKAGED_DIR, ["all"], device="cpu")


def _tube_image(shape=(40, 48, 48), radius=9.0):
    """A bright straight tube of ``radius`` voxels along x on a noisy background, at 0.7 mm."""
    z, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    inside = ((z - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 <= radius**2)[..., None].repeat(shape[2], axis=2)
    image = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32) + 6.0 * inside
    geometry = ImageGeometry(shape=shape, spacing=(0.7, 0.7, 0.7), origin=(0.0, 0.0, 0.0),
                             direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    return image, inside, geometry


@pytest.mark.parametrize("text, expected", [("multi", "multi"), ("MULTI", "multi"), ("2", 2.0), (1, 1.0)])
def test_parse_accepts_multi_and_factors(text, expected):
    assert vs.parse_vessel_scale(text) == expected


@pytest.mark.parametrize("bad", ["0.5", "nan", "inf", "17", "big", None])
def test_parse_refuses_other_values_in_one_line(bad):
    with pytest.raises(VesselSegError, match="--vessel-scale"):
        vs.parse_vessel_scale(bad)


def test_multi_skips_factors_that_leave_too_few_voxels():
    small = ImageGeometry(shape=(30, 60, 200), spacing=(1.0,) * 3, origin=(0.0,) * 3, direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert vs.scale_factors("multi", small) == [1.0]
    large = ImageGeometry(shape=(100, 200, 200), spacing=(1.0,) * 3, origin=(0.0,) * 3, direction=small.direction)
    assert vs.scale_factors("multi", large) == [1.0, 2.0, 4.0]
    assert vs.scale_factors(3, small) == [3.0]


def test_a_scaled_model_predicts_on_a_coarser_grid_with_the_same_networks(builtin):
    coarse = vs.scaled_model(builtin, 2.0)
    assert coarse.networks is builtin.networks and coarse.config.spacing == [2.0, 2.0, 2.0]
    assert builtin.config.spacing == [1.0, 1.0, 1.0]  # the original is untouched
    assert vs.scaled_model(builtin, 1.0) is builtin


def test_thick_parts_keep_what_a_ball_fits_in():
    mask = np.zeros((40, 40, 40), dtype=bool)
    zz, yy, xx = np.ogrid[:40, :40, :40]
    mask |= (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 12) ** 2 <= 8**2  # a ball of radius 8
    mask[18:22, 18:22, 20:40] = True  # a thin rod of half-width 2 attached to it
    thick = vs.thick_parts(mask, 5.0)
    assert thick[20, 20, 12] and not thick[20, 20, 35]  # the ball stays, the rod goes
    assert (thick & ~mask).sum() == 0  # an opening never grows the mask
    assert not vs.thick_parts(mask, 20.0).any()


def test_coarse_passes_count_only_inside_wide_vessels(builtin, monkeypatch):
    """Fused = native, except where the coarse mask is wide (a ball of WIDE_RADIUS_VOXELS fits) and more confident."""
    image, _, geometry = _tube_image()
    fused = vs.predict_fused_probabilities(builtin, image[None], geometry, "tube", False, 0.5, [1.0, 2.0])
    native = predict_original_probabilities([builtin], image[None], geometry, "tube", False, 0.5).astype(np.float32)
    coarse = predict_original_probabilities([vs.scaled_model(builtin, 2.0)], image[None], geometry, "tube", False,
                                            0.5).astype(np.float32)
    assert fused.shape == native.shape == (2, *geometry.shape)
    wide = vs.thick_parts(coarse[0] < 0.5, vs.WIDE_RADIUS_VOXELS)
    expected = np.where(wide, np.minimum(native[0], coarse[0]), native[0])
    assert np.allclose(fused[0].astype(np.float32), expected, atol=2e-3)
    monkeypatch.setattr(vs, "WIDE_RADIUS_VOXELS", 1000.0)  # nothing is wide: the native pass alone
    alone = vs.predict_fused_probabilities(builtin, image[None], geometry, "tube", False, 0.5, [1.0, 2.0])
    assert np.allclose(alone[0].astype(np.float32), native[0], atol=2e-3)


def test_mm_models_refuse_vessel_scale(builtin):
    from dataclasses import replace

    mm = replace(builtin, config=replace(builtin.config, spacing_mode="mm"))
    with pytest.raises(VesselSegError, match="modality-free"):
        vs.check_vessel_scale(2.0, [mm])
    vs.check_vessel_scale(1.0, [mm])  # the native grid is every model's default
    with pytest.raises(VesselSegError, match="one model"):
        vs.check_vessel_scale("multi", [builtin, builtin])


def test_vs_predict_vessel_scale_writes_masks_in_the_input_geometry(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("VS_BUILTIN_MODEL", raising=False)
    image, inside, geometry = _tube_image()
    (tmp_path / "in").mkdir()
    write_image(image, geometry, tmp_path / "in" / "tube_0000.nii.gz")
    for scale in ("2", "multi"):
        out = tmp_path / f"out_{scale}"
        assert predict_main(["-i", str(tmp_path / "in"), "-o", str(out), "--model", "builtin", "--disable-tta",
                             "--vessel-scale", scale]) == 0
        mask, written = read_array(out / "tube.nii.gz")
        assert written.shape == geometry.shape and np.allclose(written.spacing, geometry.spacing)
        assert mask.any()
    assert predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "bad"), "--model", "builtin",
                         "--vessel-scale", "0"]) == 2
    assert "--vessel-scale" in capsys.readouterr().err


def test_dark_polarity_inverts_the_image_and_is_for_modality_free_models_only(builtin, tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from vessel_seg.inference.vessel_polarity import check_vessel_polarity, oriented

    image = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    assert np.array_equal(oriented(image, "dark"), -image) and oriented(image, "bright") is image
    mm = replace(builtin, config=replace(builtin.config, spacing_mode="mm"))
    with pytest.raises(VesselSegError, match="modality-free"):
        check_vessel_polarity("dark", [mm])
    with pytest.raises(VesselSegError, match="bright"):
        check_vessel_polarity("grey", [builtin])
    # a dark tube predicted with --vessel-polarity dark gives the mask of the same bright tube
    monkeypatch.delenv("VS_BUILTIN_MODEL", raising=False)
    bright, _, geometry = _tube_image(radius=4.0)
    for name, array in (("bright", bright), ("dark", -bright)):
        (tmp_path / name).mkdir()
        write_image(array, geometry, tmp_path / name / "tube_0000.nii.gz")
    assert predict_main(["-i", str(tmp_path / "bright"), "-o", str(tmp_path / "out_b"), "--model", "builtin",
                         "--disable-tta"]) == 0
    assert predict_main(["-i", str(tmp_path / "dark"), "-o", str(tmp_path / "out_d"), "--model", "builtin",
                         "--disable-tta", "--vessel-polarity", "dark"]) == 0
    a, _ = read_array(tmp_path / "out_b" / "tube.nii.gz")
    b, _ = read_array(tmp_path / "out_d" / "tube.nii.gz")
    assert a.any() and np.array_equal(a, b)


def test_auto_resolves_for_modality_free_models_only(builtin):
    from dataclasses import replace

    assert vs.resolve_auto("auto", [builtin]) == vs.AUTO_MODALITY_FREE
    mm = replace(builtin, config=replace(builtin.config, spacing_mode="mm"))
    assert vs.resolve_auto("auto", [mm]) == 1.0 and vs.resolve_auto("auto", [builtin, builtin]) == 1.0
    assert vs.resolve_auto("2", [mm]) == 2.0  # an explicit value is kept (and refused later for mm models)
