"""The learning-rate schedule: nnU-Net's poly decay per epoch, with an optional linear warm-up per step."""

from __future__ import annotations

import pytest

from vessel_seg.cli.train import build_parser
from vessel_seg.trainers.optimization import poly_lr, scheduled_lr
from vessel_seg.trainers.settings import TrainingSettings


def test_without_warmup_the_schedule_is_poly_per_epoch():
    settings = TrainingSettings(epochs=10, iterations_per_epoch=5, learning_rate=1e-2)
    assert scheduled_lr(settings, 0, 0) == pytest.approx(1e-2)
    assert scheduled_lr(settings, 3, 4) == pytest.approx(poly_lr(1e-2, 3, 10)) == pytest.approx(1e-2 * 0.7**0.9)
    assert scheduled_lr(settings, 9, 4) == pytest.approx(1e-2 * 0.1**0.9)


def test_warmup_ramps_linearly_over_steps_across_epochs_then_follows_poly():
    settings = TrainingSettings(epochs=10, iterations_per_epoch=4, warmup_iterations=8, learning_rate=1e-2)
    ramp = [scheduled_lr(settings, e, i) for e in range(2) for i in range(4)]
    poly = [poly_lr(1e-2, e, 10) for e in range(2) for _ in range(4)]
    assert ramp == pytest.approx([p * (k + 1) / 8 for k, p in enumerate(poly)])
    assert scheduled_lr(settings, 2, 0) == pytest.approx(poly_lr(1e-2, 2, 10))  # step 8: warm-up over


def test_default_optimiser_is_adamw_and_each_optimiser_has_its_learning_rate():
    assert TrainingSettings().optimizer == "adamw" and TrainingSettings().initial_lr == pytest.approx(3e-3)
    assert TrainingSettings(optimizer="sgd").initial_lr == pytest.approx(1e-2)
    assert TrainingSettings(optimizer="sgd", learning_rate=0.5).initial_lr == 0.5
    from vessel_seg.trainers.variants import variant_settings

    assert build_parser().parse_args(["501", "3d_fullres", "0"]).optimizer is None  # not given: the variant decides
    assert variant_settings("vsTrainer", {}).optimizer == "adamw" and variant_settings("vsTrainer_sgd", {}).optimizer == "sgd"


def test_warmup_setting_is_validated_and_reaches_the_cli():
    with pytest.raises(ValueError, match="warmup_iterations"):
        TrainingSettings(warmup_iterations=-1)
    args = build_parser().parse_args(["501", "3d_fullres", "0", "--warmup-iterations", "50"])
    assert args.warmup_iterations == 50
