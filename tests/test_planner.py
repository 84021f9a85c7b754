"""Experiment planner, spacing rules and topology on hand-built fingerprints."""

from __future__ import annotations

import math

import pytest
import torch

from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import PlansError
from vessel_seg.networks.resunet import build_network
from vessel_seg.planners.fingerprint import CaseFingerprint, DatasetFingerprint, RadiusStats
from vessel_seg.planners.planner import CPU_FORWARD_GFLOP_BUDGET, plan_experiment
from vessel_seg.planners.plans import ChannelIntensity, Plans
from vessel_seg.planners.spacing import lowres_spacing_cap
from vessel_seg.planners.topology import (
    build_topology,
    estimate_gflops,
    estimate_memory_gb,
    fit_patch_to_topology,
    shape_divisor,
)

CT = DatasetInfo({"0": "CT"}, {"background": 0, "vessel": 1}, 12, ".nii.gz")
MRI = DatasetInfo({"0": "MRA"}, {"background": 0, "vessel": 1}, 12, ".nii.gz")
# radius percentiles p05..p95, max (mm) of vessels 0.5-2 mm
RADII_05_2 = (0.55, 0.6, 0.75, 1.0, 1.3, 1.7, 1.85, 2.0)


def fingerprint(shape, spacing, n=12, radii=RADII_05_2, spacings=None) -> DatasetFingerprint:
    cases = [
        CaseFingerprint(f"case_{i:03d}", list(spacings[i] if spacings else spacing), list(shape), list(shape))
        for i in range(n)
    ]
    return DatasetFingerprint(
        "Dataset900_Test", cases, {"0": ChannelIntensity(200.0, 80.0, -50.0, 600.0, 190.0, -100.0, 900.0)},
        RadiusStats(*radii, num_samples=5000),
    )


def memory(config, plans: Plans) -> float:
    bytes_per_element = 2 if plans.preset == "gpu" else 4
    overhead = 0.5 if plans.preset == "gpu" else 0.25
    return estimate_memory_gb(
        config.network, config.patch_size, config.batch_size, len(plans.channel_names), len(plans.labels),
        bytes_per_element=bytes_per_element, overhead_gb=overhead,
    )


def test_isotropic_small_images_get_2d_and_fullres_only():
    plans = plan_experiment(fingerprint([96, 96, 96], [1.0, 1.0, 1.0], radii=(3.0,) * 8), CT, "Dataset900_Test")
    assert set(plans.configurations) == {"2d", "3d_fullres"}
    full = plans.configuration("3d_fullres")
    assert full.spacing == [1.0, 1.0, 1.0]
    assert full.patch_size == [96, 96, 96] and full.batch_size >= 2
    assert all(k == [3, 3, 3] for k in full.network.kernel_sizes)
    assert all(len(set(s)) == 1 for s in full.network.strides)  # isotropic downsampling
    assert full.network.blocks_per_stage == [1, 2, 2, 3, 3][: full.network.num_stages]
    assert full.network.blocks_per_stage_decoder == [1] * (full.network.num_stages - 1)
    assert full.normalization == ["ct_soft"] and full.data_identifier == "vs_plans_3d_fullres"
    assert (full.resampling_order_image, full.resampling_order_label) == (3, 1)
    assert plans.configuration("2d").network.dim == 2 and len(plans.configuration("2d").spacing) == 2
    assert plan_experiment(fingerprint([96] * 3, [1.0] * 3), MRI, "D").configuration("2d").normalization == ["zscore"]
    assert plans.labels == CT.labels and plans.channel_names == CT.channel_names and plans.file_ending == ".nii.gz"
    assert plans.intensity_properties["0"].percentile_99_5 == 600.0


def test_anisotropic_data_uses_in_plane_kernels_and_no_early_z_downsampling():
    plans = plan_experiment(fingerprint([40, 256, 256], [3.0, 0.5, 0.5]), CT, "D")
    full = plans.configuration("3d_fullres")
    assert full.spacing[0] == pytest.approx(3.0)
    net = full.network
    assert net.kernel_sizes[0] == [1, 3, 3] and net.kernel_sizes[1] == [1, 3, 3]
    assert net.strides[1] == [1, 2, 2] and net.strides[2] == [1, 2, 2]
    assert net.kernel_sizes[2][0] == 3  # z spacing 3 mm vs 2 mm in-plane after two poolings
    assert any(s[0] == 2 for s in net.strides)
    assert any("anisotropic" in note for note in plans.notes)


def test_vessel_rule_makes_spacing_finer_than_median_for_thin_vessels():
    spacings = [[1.0] * 3] * 7 + [[0.6] * 3] * 5  # median 1.0 mm, finest native 0.6 mm
    # r10 = 0.525 mm: a diameter of 1.05 mm must span 1.5 voxels -> spacing <= 0.7 mm
    thin = (0.45, 0.525, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0)
    plans = plan_experiment(fingerprint([128] * 3, [1.0] * 3, radii=thin, spacings=spacings), CT, "D")
    assert plans.original_median_spacing == [1.0, 1.0, 1.0]
    assert plans.configuration("3d_fullres").spacing == pytest.approx([0.7, 0.7, 0.7])
    assert any("limited by vessel radius rule" in note for note in plans.notes)
    thick = tuple(3 * r for r in thin)
    plans = plan_experiment(fingerprint([128] * 3, [1.0] * 3, radii=thick, spacings=spacings), CT, "D")
    assert plans.configuration("3d_fullres").spacing == pytest.approx([1.0, 1.0, 1.0])


def test_vessel_rule_refines_no_further_than_the_finest_native_spacing():
    thin = tuple(r / 2 for r in RADII_05_2)  # r10 0.3 mm wants 0.4 mm; the finest native spacing is 0.5 mm
    plans = plan_experiment(fingerprint([96] * 3, [0.8, 0.5, 0.5], radii=thin), CT, "D")
    assert plans.configuration("3d_fullres").spacing == pytest.approx([0.5, 0.5, 0.5])
    assert plans.configuration("3d_fullres").median_shape == [154, 96, 96]
    # Vessels of radius 0.5-2 mm (r10 0.6 mm, 1.2 mm across) already span 1.5 voxels at 0.8 mm.
    plans = plan_experiment(fingerprint([96] * 3, [0.8, 0.5, 0.5]), CT, "D")
    assert plans.configuration("3d_fullres").spacing == pytest.approx([0.8, 0.5, 0.5])


def test_large_images_trigger_lowres_and_cascade_small_ones_do_not():
    plans = plan_experiment(fingerprint([600, 512, 512], [0.5] * 3), CT, "D")
    assert set(plans.configurations) == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
    full, low, cascade = (plans.configuration(c) for c in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    assert all(lo > fu for lo, fu in zip(low.spacing, full.spacing, strict=True))
    assert max(low.spacing) <= lowres_spacing_cap(RadiusStats(*RADII_05_2, num_samples=1)) + 1e-9  # relaxed rule
    assert math.prod(low.median_shape) < 0.5 * math.prod(full.median_shape)
    assert low.next_stage == "3d_cascade_fullres" and low.previous_stage is None
    assert cascade.previous_stage == "3d_lowres" and cascade.next_stage is None
    assert cascade.patch_size == full.patch_size and cascade.spacing == full.spacing
    assert cascade.data_identifier == full.data_identifier  # same preprocessed data
    assert low.data_identifier == "vs_plans_3d_lowres"
    small = plan_experiment(fingerprint([96, 96, 96], [0.5] * 3), CT, "D")
    assert "3d_lowres" not in small.configurations and "3d_cascade_fullres" not in small.configurations


def test_memory_budget_is_respected_and_a_larger_budget_gives_a_larger_patch():
    fp = fingerprint([400, 400, 400], [0.6] * 3)
    volumes = []
    for budget in (4.0, 8.0, 16.0):
        plans = plan_experiment(fp, CT, "D", gpu_memory_gb=budget)
        full = plans.configuration("3d_fullres")
        for config in plans.configurations.values():
            assert memory(config, plans) <= budget
        volumes.append(math.prod(full.patch_size))
    assert volumes[0] < volumes[1] < volumes[2]
    with pytest.raises(PlansError, match="gpu-memory-gb"):
        plan_experiment(fp, CT, "D", gpu_memory_gb=0.3)


def test_cpu_preset_is_smaller_than_gpu_and_within_its_flop_budget():
    fp = fingerprint([96] * 3, [0.8, 0.5, 0.5])
    gpu = plan_experiment(fp, CT, "D", preset="gpu")
    cpu = plan_experiment(fp, CT, "D", plans_name="cpu", preset="cpu")
    for name, config in cpu.configurations.items():
        t = config.network
        flops = estimate_gflops(t, config.patch_size, config.batch_size, 1, 2)
        assert flops <= CPU_FORWARD_GFLOP_BUDGET
        assert t.features_per_stage[0] == 16 and max(t.features_per_stage) <= 128
        assert config.batch_size >= 2
        if name in gpu.configurations:
            g = gpu.configurations[name]
            assert flops < estimate_gflops(g.network, g.patch_size, g.batch_size, 1, 2)
    patch = cpu.configuration("3d_fullres").patch_size
    assert 40**3 <= math.prod(patch) <= 72**3  # around 48^3 - 64^3
    assert cpu.configuration("3d_fullres").data_identifier == "cpu_3d_fullres"


@pytest.mark.parametrize(
    "shape, spacing",
    [([600, 512, 512], [0.5] * 3), ([40, 256, 256], [3.0, 0.5, 0.5]), ([77, 131, 93], [1.0, 0.7, 0.7])],
)
def test_patches_are_divisible_by_their_strides(shape, spacing):
    for preset in ("gpu", "cpu"):
        plans = plan_experiment(fingerprint(shape, spacing), CT, "D", preset=preset)
        for config in plans.configurations.values():
            divisor = shape_divisor(config.network)
            assert all(p % d == 0 for p, d in zip(config.patch_size, divisor, strict=True)), config.name


def test_planned_topology_builds_a_network_that_accepts_the_patch():
    plans = plan_experiment(fingerprint([24, 64, 64], [3.0, 0.5, 0.5]), CT, "D", preset="cpu")
    config = plans.configuration("3d_fullres")
    net = build_network(config.network, 1, 2)
    net.deep_supervision = False
    with torch.no_grad():
        out = net(torch.zeros(1, 1, *config.patch_size))
    assert tuple(out.shape) == (1, 2, *config.patch_size)


def test_plans_round_trip(tmp_path):
    plans = plan_experiment(fingerprint([600, 512, 512], [0.5] * 3), CT, "D")
    loaded = Plans.load(plans.save(tmp_path / "vs_plans.json"))
    assert loaded == plans
    assert loaded.configuration("3d_lowres").network.strides == plans.configuration("3d_lowres").network.strides


def test_single_slice_dataset_gets_only_2d():
    fp = fingerprint([1, 584, 565], [999.0, 0.02, 0.02], n=20, radii=(0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15))
    plans = plan_experiment(fp, MRI, "D")
    assert list(plans.configurations) == ["2d"]
    config = plans.configuration("2d")
    assert len(config.spacing) == 2 and len(config.patch_size) == 2 and config.network.dim == 2


def test_invalid_inputs_raise_plans_errors():
    fp = fingerprint([96] * 3, [1.0] * 3)
    with pytest.raises(PlansError, match="preset"):
        plan_experiment(fp, CT, "D", preset="tpu")
    two_channels = DatasetInfo({"0": "CT", "1": "MR"}, {"background": 0, "vessel": 1}, 12, ".nii.gz")
    with pytest.raises(PlansError, match="channels"):
        plan_experiment(fp, two_channels, "D")


def test_build_topology_defaults_and_patch_fitting():
    t = build_topology([128, 128, 128], [1.0] * 3, 3)
    assert t.features_per_stage == [32, 64, 128, 256, 320, 320]
    assert t.blocks_per_stage == [1, 2, 2, 3, 3, 3] and t.deep_supervision
    assert t.strides[0] == [1, 1, 1] and shape_divisor(t) == [32, 32, 32]
    patch, t = fit_patch_to_topology([154, 96, 50], [0.5] * 3, 3)
    assert patch == [160, 96, 56] and all(p % d == 0 for p, d in zip(patch, shape_divisor(t), strict=True))
    t2 = build_topology([256, 256], [1.0, 1.0], 2, max_features=512)
    assert t2.dim == 2 and t2.num_stages == 7 and t2.features_per_stage[-1] == 512


def test_cost_model_scales_with_batch():
    t = build_topology([64, 64, 64], [1.0] * 3, 3, 16, 128)
    g1, g2 = (estimate_gflops(t, [64] * 3, b, 1, 2) for b in (1, 2))
    assert g2 == pytest.approx(2 * g1)
    m1, m2, m4 = (estimate_memory_gb(t, [64] * 3, b, 1, 2) for b in (1, 2, 4))
    assert m1 < m2 < m4 and m4 - m2 == pytest.approx(2 * (m2 - m1))


def test_a_preset_registered_from_a_test_plans_its_network_class_and_is_found_by_plans_name():
    import dataclasses

    from vessel_seg.planners.pipeline import preset_for
    from vessel_seg.planners.planner import PRESETS, register_preset

    tiny = dataclasses.replace(PRESETS.get("cpu"), base_features=8, max_features_3d=32, network_class="OtherNet")
    register_preset("tinytest", tiny)
    try:
        plans = plan_experiment(fingerprint([96] * 3, [1.0] * 3), CT, "D", preset="tinytest")
        network = plans.configuration("3d_fullres").network
        assert network.network_class == "OtherNet" and network.features_per_stage[0] == 8
        assert max(network.features_per_stage) <= 32
        assert preset_for("tinytest", None) == "tinytest" and preset_for("vs_plans", None) == "gpu"
        assert preset_for("cpu", None) == "cpu" and preset_for("tinytest", "gpu") == "gpu"
        with pytest.raises(ValueError, match="already registered"):
            register_preset("tinytest", tiny)
    finally:
        PRESETS.remove("tinytest")
