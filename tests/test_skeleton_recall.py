"""Skeleton recall on hand-built tubes: the skeleton target of a broken tube, what the loss punishes, the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from vessel_seg.trainers.augmentation import training_transforms, validation_transforms
from vessel_seg.trainers.losses import DiceCELoss, SkeletonRecallLoss, build_loss
from vessel_seg.trainers.skeleton_target import SkeletonTarget, tubed_skeleton


def tube(shape=(16, 16, 40), radius=3.0, centre=(7.5, 7.5)) -> np.ndarray:
    """Boolean cylinder along the last axis."""
    z, y, _ = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


def test_skeleton_of_a_broken_tube_follows_each_piece_and_skips_the_gap():
    broken = tube()
    broken[..., 18:22] = False  # a 4-voxel break
    skeleton = tubed_skeleton(broken.astype(np.uint8), tube_radius=0)
    assert skeleton.dtype == np.uint8 and set(np.unique(skeleton)) == {0, 1}
    assert not skeleton[..., 18:22].any()
    assert ndimage.label(skeleton > 0, np.ones((3, 3, 3)))[1] == 2  # one line per piece
    along = np.argwhere(skeleton > 0)
    assert np.abs(along[:, 0] - 7.5).max() <= 1.5 and np.abs(along[:, 1] - 7.5).max() <= 1.5  # on the axis
    assert len(np.unique(along[:, 2])) >= 28  # covers (nearly) the whole length of both pieces
    tubed = tubed_skeleton(broken.astype(np.uint8), tube_radius=1)
    assert (tubed > 0).sum() > 3 * (skeleton > 0).sum()  # thickened ...
    assert not tubed[~broken].any() and not tubed[..., 18:22].any()  # ... inside the vessel, the gap stays empty


def test_each_label_gets_its_own_skeleton_and_2d_patches_work():
    labels = np.zeros((16, 16, 40), np.uint8)
    labels[tube(radius=2.0, centre=(4.5, 4.5))] = 1
    labels[tube(radius=2.0, centre=(11.5, 11.5))] = 2
    skeleton = tubed_skeleton(labels)
    assert set(np.unique(skeleton)) == {0, 1, 2}
    assert np.all(labels[skeleton > 0] == skeleton[skeleton > 0])
    flat = np.zeros((2, 1, 1, 24, 24), np.uint8)  # a 2D configuration's (B, 1, 1, Y, X) batch
    flat[:, 0, 0, 10:14, 2:22] = 1
    out = SkeletonTarget()(target=flat)["target"]
    assert out.shape == (2, 2, 1, 24, 24) and out[:, 1, 0, 12, 5:19].all()


def test_skeleton_recall_punishes_a_missed_thin_vessel_more_than_a_thinned_thick_one():
    thick, thin = tube(radius=4.0, centre=(7.5, 7.5)), tube((16, 16, 40), radius=1.0, centre=(13.5, 2.5))
    truth = (thick | thin).astype(np.uint8)
    target = torch.from_numpy(SkeletonTarget()(target=truth[None, None])["target"]).long()

    def logits(mask: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(mask)
        return torch.stack([~m, m]).float().unsqueeze(0) * 20 - 10

    missed_thin = logits(thick)  # the thin vessel lost completely: few voxels, a whole branch
    thinned_thick = logits(tube(radius=2.5, centre=(7.5, 7.5)) | thin)  # many voxels, no branch lost
    recall, dice = SkeletonRecallLoss(), DiceCELoss()
    assert (truth.sum() - thick.sum()) < (thick.sum() - tube(radius=2.5).sum())
    assert recall(missed_thin, target) > 0.2 > recall(thinned_thick, target)
    assert dice(missed_thin, target) < dice(thinned_thick, target)  # Dice sees it the other way round
    assert recall(logits(truth.astype(bool)), target).item() == pytest.approx(0.0, abs=1e-3)


def test_skeleton_recall_without_skeleton_channel_says_what_is_missing():
    loss = build_loss("dice_ce_skeleton_recall", deep_supervision=False)
    with pytest.raises(ValueError, match="skeleton as target channel 1"):
        loss(torch.randn(1, 2, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8, dtype=torch.long))


def test_pipelines_append_the_skeleton_of_the_augmented_label():
    rng = np.random.default_rng(0)
    aug = training_transforms((24, 24, 24), (1.0, 1.0, 1.0), skeleton_target=True, p_rotation=1.0)
    labels = np.zeros((2, 1, *aug.sample_patch_size), np.uint8)
    centre = [s // 2 for s in aug.sample_patch_size]
    labels[:, :, centre[0] - 2:centre[0] + 2, centre[1] - 2:centre[1] + 2, :] = 1
    data = rng.normal(size=labels.shape).astype(np.float32)
    batch = aug.transform(data=data, target=labels)
    target = batch["target"]
    assert target.shape == (2, 2, 24, 24, 24) and target.dtype == np.uint8
    assert target[:, 1].any() and np.all(target[:, 0][target[:, 1] > 0] == 1)  # skeleton inside the (rotated) label
    plain = validation_transforms((24, 24, 24))
    assert plain.transform(data=data[:, :, :24, :24, :24], target=labels[:, :, :24, :24, :24])["target"].shape[1] == 1


def test_checkpoint_score_counts_fragments_that_dice_and_cldice_barely_see():
    from vessel_seg.trainers.validation import PseudoMetrics, selection_score

    truth = tube(radius=2.0)
    specks = truth.copy()
    for x in (2, 10, 30):  # three specks beside the vessel: a few voxels of Dice, no clDice, three fragments
        specks[1, 1, x] = True
    broken = truth.copy()
    broken[..., 20] = False  # one cut: one extra fragment

    def metrics(pred: np.ndarray) -> PseudoMetrics:
        m = PseudoMetrics(2)
        logits = torch.from_numpy(np.stack([~pred, pred]).astype(np.float32))[None]
        m.update(logits, torch.from_numpy(truth.astype(np.uint8))[None, None])
        return m

    perfect, speckled, cut = metrics(truth), metrics(specks), metrics(broken)
    assert perfect.betti0_error == 0 and speckled.betti0_error == 3 and cut.betti0_error == 1
    assert speckled.dice > 0.98 and speckled.cldice > 0.98  # the overlap terms hardly move ...
    scores = [selection_score(m.dice, m.cldice, m.betti0_error) for m in (perfect, cut, speckled)]
    assert scores[0] == pytest.approx(1.0) and scores[0] > scores[1] > scores[2]  # ... the score does
    assert scores[0] - scores[2] > 0.2
