"""Losses on hand-built tubes: minima, what clDice and centreline weighting punish, deep supervision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vessel_seg.trainers.losses import (
    CenterlineWeightedCELoss,
    DeepSupervisionLoss,
    DiceCELoss,
    SoftClDiceLoss,
    SoftDiceLoss,
    build_loss,
    centerline_weights,
    deep_supervision_weights,
    downsample_target,
    loss_entry,
    loss_names,
)
from vessel_seg.trainers.losses_topology import soft_dilate, soft_erode, soft_skeleton
from vessel_seg.trainers.skeleton_target import SkeletonTarget

LOSS_NAMES = ("dice_ce", "dice_ce_cldice", "dice_ce_center", "dice_ce_skeleton_recall")


def target_for(name: str, labels: torch.Tensor) -> torch.Tensor:
    """``labels`` (B, 1, *S) with the skeleton channel appended when the loss ``name`` reads it (as the pipeline does)."""
    if not loss_entry(name).needs_skeleton:
        return labels
    batch = SkeletonTarget()(target=labels.numpy().astype(np.uint8))
    return torch.from_numpy(batch["target"]).long()


def tube(shape=(16, 16, 32), radius=3.5) -> torch.Tensor:
    """Boolean cylinder along the last axis, centred in the first two."""
    z, y, _ = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    cz, cy = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    return (z - cz) ** 2 + (y - cy) ** 2 <= radius**2


def disk_2d(shape=(24, 24), radius=6.0) -> torch.Tensor:
    y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    return (y - shape[0] / 2) ** 2 + (x - shape[1] / 2) ** 2 <= radius**2


def confident_logits(mask: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """Two-class logits (1, 2, *spatial) that predict ``mask`` with probability ~1."""
    return torch.stack([~mask, mask]).float().unsqueeze(0) * scale - scale / 2


def remove(mask: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    out = mask.clone()
    out[tuple(coords.T)] = False
    return out


def test_perfect_prediction_is_the_minimum_zero_in_2d_and_3d():
    for mask in (tube(), disk_2d()):
        for name in LOSS_NAMES:
            target = target_for(name, mask.long()[None, None])
            loss = build_loss(name, deep_supervision=False)
            assert loss(confident_logits(mask), target).item() == pytest.approx(0.0, abs=1e-4), name
            assert loss(confident_logits(~mask), target).item() > 0.5, name


def test_target_layouts_agree_and_bad_shapes_raise():
    mask = tube((8, 8, 8), 2.0)
    logits = torch.randn(1, 2, 8, 8, 8)
    loss = build_loss("dice_ce_cldice", deep_supervision=False)
    torch.testing.assert_close(loss(logits, mask.long()[None, None]), loss(logits, mask.long()[None]))
    with pytest.raises(ValueError, match="does not match"):
        loss(logits, torch.zeros(1, 8, 8, 7, dtype=torch.long))


def test_cldice_punishes_a_gap_more_than_the_same_voxels_lost_at_the_surface():
    mask = tube()
    target = mask.long()[None, None]
    gap = mask.clone()
    gap[:, :, 15] = False  # cuts the tube in two
    lost = int(mask[:, :, 15].sum())
    surface = (mask & (soft_erode(mask[None, None].float())[0, 0] == 0)).nonzero()
    chosen = surface[torch.randperm(len(surface), generator=torch.Generator().manual_seed(0))[:lost]]
    thinned = remove(mask, chosen)
    assert int(thinned.sum()) == int(gap.sum())
    dice = SoftDiceLoss()
    torch.testing.assert_close(dice(confident_logits(gap), target), dice(confident_logits(thinned), target))
    cldice = SoftClDiceLoss()
    gap_loss, thin_loss = cldice(confident_logits(gap), target), cldice(confident_logits(thinned), target)
    assert gap_loss > 0.01
    assert thin_loss < gap_loss / 5


def test_soft_morphology_matches_max_pooling():
    x = torch.rand(2, 3, 6, 7, 8)
    torch.testing.assert_close(soft_dilate(x), F.max_pool3d(x, 3, 1, 1))
    lines = [(3, 1, 1), (1, 3, 1), (1, 1, 3)]
    cross = torch.stack([-F.max_pool3d(-x, k, 1, [v // 2 for v in k]) for k in lines]).amin(0)
    torch.testing.assert_close(soft_erode(x), cross)
    image = torch.rand(2, 1, 9, 10)
    torch.testing.assert_close(soft_dilate(image), F.max_pool2d(image, 3, 1, 1))
    torch.testing.assert_close(soft_dilate(x, (1, 3, 3)), F.max_pool3d(x, (1, 3, 3), 1, (0, 1, 1)))


def test_soft_skeleton_of_a_tube_is_its_centreline():
    mask = tube((15, 15, 32), radius=2.5)[None, None].float()  # centred on voxel (7, 7)
    skeleton = soft_skeleton(mask, iterations=5)[0, 0]
    expected = torch.zeros_like(skeleton)
    expected[7, 7, :] = 1
    torch.testing.assert_close(skeleton, expected)


def test_centerline_weights_peak_on_every_centreline_and_are_one_outside():
    trunk = tube((20, 20, 24), radius=4.5)
    branch = torch.zeros_like(trunk)
    branch[2, 2, :] = True  # a one-voxel vessel
    weights = centerline_weights((trunk | branch)[None, None], beta=3.0, gamma=2.0)[0, 0]
    assert torch.all(weights[~(trunk | branch)] == 1.0)
    assert torch.all(weights[branch] == 4.0)  # thin vessel: all centre
    centre_line = weights[9:11, 9:11, :]
    assert torch.all(centre_line == 4.0)
    wall = trunk & (soft_erode(trunk[None, None].float())[0, 0] == 0)
    assert weights[wall].max() < 1.5


def test_missing_the_centre_costs_more_than_missing_the_border_with_centre_weighting():
    mask = tube()
    target = mask.long()[None, None]
    weights = centerline_weights(mask[None, None])[0, 0]
    count = 64
    centre = (weights == weights.max()).nonzero()[:count]
    wall = mask & (soft_erode(mask[None, None].float())[0, 0] == 0)
    border = wall.nonzero()[:count]
    assert len(centre) == len(border) == count
    hole, thinned = confident_logits(remove(mask, centre)), confident_logits(remove(mask, border))
    plain = DiceCELoss()
    torch.testing.assert_close(plain(hole, target), plain(thinned, target))
    weighted = CenterlineWeightedCELoss()
    assert weighted(hole, target) > 2 * weighted(thinned, target)
    combined = build_loss("dice_ce_center", deep_supervision=False)
    assert combined(hole, target) > combined(thinned, target)


def test_anisotropic_kernel_leaves_the_first_axis_alone():
    slab = torch.zeros(1, 1, 5, 12, 12)
    slab[0, 0, 2, 2:10, 2:10] = 1  # one slice thick
    assert soft_erode(slab).sum() == 0
    assert soft_erode(slab, (1, 3, 3)).sum() == 36
    weights = centerline_weights(slab, kernel_size=(1, 3, 3))[0, 0, 2]
    assert weights[5:7, 5:7].eq(4.0).all() and weights[2, 2] < 1.5


def test_deep_supervision_weights_follow_nnunet():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_downsample_target_takes_strided_centres_and_falls_back_to_interpolation():
    target = torch.arange(2 * 6 * 8 * 10).reshape(2, 1, 6, 8, 10) % 3
    half = downsample_target(target, (3, 4, 5))
    torch.testing.assert_close(half, target[:, :, ::2, ::2, ::2])
    aniso = downsample_target(target[:, 0], (6, 4, 5))  # (B, *spatial) layout, z kept
    torch.testing.assert_close(aniso, target[:, 0, :, ::2, ::2])
    odd = downsample_target(target, (6, 3, 10))  # 8 -> 3: not a stride, interpolated
    assert odd.shape == (2, 1, 6, 3, 10) and odd.dtype == target.dtype
    assert set(odd.unique().tolist()) <= {0, 1, 2}


def test_deep_supervision_loss_combines_outputs_against_downsampled_targets():
    torch.manual_seed(0)
    target = tube((8, 16, 16), 3.0).long()[None, None]
    outputs = [torch.randn(1, 2, 8, 16, 16), torch.randn(1, 2, 4, 8, 8), torch.randn(1, 2, 2, 4, 4, requires_grad=True)]
    base = DiceCELoss()
    loss = build_loss("dice_ce", deep_supervision=True, num_outputs=3)
    assert isinstance(loss, DeepSupervisionLoss)
    expected = 2 / 3 * base(outputs[0], target) + 1 / 3 * base(outputs[1], target[:, :, ::2, ::2, ::2])
    value = loss(outputs, target)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert outputs[2].grad is not None and outputs[2].grad.abs().sum() == 0  # lowest output: zero weight
    torch.testing.assert_close(loss(outputs[0], target), base(outputs[0], target))  # single tensor
    with pytest.raises(ValueError, match="outputs"):
        loss(outputs[:2], target)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradients_are_finite_in_2d_and_3d_even_without_vessels(name):
    torch.manual_seed(0)
    loss = build_loss(name, deep_supervision=True, num_outputs=2, batch_dice=True)
    for spatial in ((16, 16), (8, 16, 16)):
        for labels in (torch.randint(0, 2, (2, 1, *spatial)), torch.zeros(2, 1, *spatial, dtype=torch.long)):
            target = target_for(name, labels)
            full = torch.randn(2, 2, *spatial, requires_grad=True)
            half = torch.randn(2, 2, *(s // 2 for s in spatial), requires_grad=True)
            value = loss([full, half], target)
            value.backward()
            assert torch.isfinite(value) and value >= 0
            assert torch.isfinite(full.grad).all() and full.grad.abs().sum() > 0


def test_losses_run_in_float32_under_bf16_autocast():
    mask = tube((8, 16, 16), 3.0)
    logits = torch.randn(1, 2, 8, 16, 16)
    for name in LOSS_NAMES:
        loss = build_loss(name, deep_supervision=False)
        target = target_for(name, mask.long()[None, None])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(logits.bfloat16(), target)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, loss(logits.bfloat16().float(), target))


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(ValueError, match="dice_ce, dice_ce_cldice, dice_ce_center, dice_ce_skeleton_recall"):
        build_loss("focal", deep_supervision=False)
    with pytest.raises(ValueError, match="unexpected keyword"):
        build_loss("dice_ce", deep_supervision=False, cldice_alhpa=0.3)
    assert set(LOSS_NAMES) <= set(loss_names())

