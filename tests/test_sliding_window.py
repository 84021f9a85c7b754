"""Sliding-window prediction: coverage, Gaussian weighting, mirroring and the 2D path."""

from __future__ import annotations

import torch
from torch import nn

from vessel_seg.inference.sliding_window import gaussian_importance, predict_logits, tile_starts


class PointwiseNet(nn.Module):
    """Logits that depend only on each voxel's own value: tiling must reproduce them exactly."""

    def __init__(self, dim: int):
        super().__init__()
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        self.conv = conv(1, 2, 1)

    def forward(self, x):
        return self.conv(x)


def test_tiles_cover_the_image_with_overlap():
    starts = tile_starts((50, 20, 7), (16, 16, 8), step=0.5)
    for axis_starts, size, patch in zip(starts, (50, 20, 7), (16, 16, 8), strict=True):
        assert axis_starts[0] == 0 and axis_starts[-1] == max(size - patch, 0)
        assert all(b - a <= patch * 0.5 + 1 for a, b in zip(axis_starts, axis_starts[1:], strict=False))
    weights = gaussian_importance((9, 9, 9))
    assert weights.max() == weights[4, 4, 4] == 1.0 and weights.min() > 0


def test_pointwise_network_is_reproduced_in_3d_with_padding_and_mirroring():
    torch.manual_seed(0)
    net = PointwiseNet(3).eval()
    data = torch.randn(1, 21, 30, 9)  # smaller than the patch along x: padded and cropped back
    with torch.no_grad():
        expected = net(data[None])[0]
    out = predict_logits(net, data.numpy(), (12, 16, 16), 2, mirror_axes=(0, 1, 2), tiles_per_batch=3)
    assert out.shape == (2, 21, 30, 9)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_2d_network_predicts_slice_by_slice():
    torch.manual_seed(1)
    net = PointwiseNet(2).eval()
    data = torch.randn(1, 5, 40, 33)
    with torch.no_grad():
        expected = torch.stack([net(data[:, z][None])[0] for z in range(5)], dim=1)
    out = predict_logits(net, data, (16, 16), 2, mirror_axes=(1, 2))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _whole_volume_reference(net, data, patch, step, num_classes):
    """Gaussian-weighted tile average with volume-sized accumulators (the definition)."""
    from vessel_seg.inference.sliding_window import gaussian_importance as gauss

    weights = gauss(patch)
    accum = torch.zeros((num_classes, *data.shape[1:]))
    norm = torch.zeros(data.shape[1:])
    grid = tile_starts(data.shape[1:], patch, step)
    with torch.no_grad():
        for z in grid[0]:
            for y in grid[1]:
                for x in grid[2]:
                    sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                    accum[(slice(None), *sl)] += net(data[(slice(None), *sl)][None])[0] * weights
                    norm[sl] += weights
    return accum / norm


def test_slabs_are_final_consecutive_and_match_whole_volume_accumulation():
    from vessel_seg.inference.sliding_window import iter_logit_slabs

    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 3, 3, padding=1)).eval()
    data = torch.randn(1, 37, 29, 20)
    slabs = list(iter_logit_slabs(net, data, (12, 16, 16), 3, step=0.4, tiles_per_batch=3))
    assert len(slabs) > 2 and slabs[0][0].start == 0 and slabs[-1][0].stop == 37
    assert all(a[0].stop == b[0].start for a, b in zip(slabs, slabs[1:], strict=False))
    joined = torch.cat([s for _, s in slabs], dim=1)
    torch.testing.assert_close(joined, _whole_volume_reference(net, data, (12, 16, 16), 0.4, 3), atol=1e-6, rtol=1e-6)
    assert torch.equal(joined, predict_logits(net, data, (12, 16, 16), 3, step=0.4, tiles_per_batch=3))


def test_streamed_labels_equal_labels_of_float16_probabilities_of_an_ensemble():
    from types import SimpleNamespace

    from vessel_seg.inference.case_prediction import labels_from_probabilities, predict_labels, predict_probabilities

    torch.manual_seed(3)
    nets = [nn.Sequential(nn.Conv3d(1, 3, 3, padding=1)).eval() for _ in range(2)]
    nets[0].deep_supervision = True
    config = SimpleNamespace(patch_size=(8, 16, 16))
    data = torch.randn(1, 20, 18, 17).numpy()
    probs = predict_probabilities(nets, data, config, 3, mirror_axes=(1,), dtype=torch.float16)
    reference = predict_probabilities(nets, data, config, 3, mirror_axes=(1,))
    assert probs.dtype == torch.float16 and torch.equal(probs, reference.half())
    torch.testing.assert_close(reference.sum(0), torch.ones(20, 18, 17))
    labels = predict_labels(nets, data, config, [0, 1, 5], mirror_axes=(1,))
    np_labels = labels_from_probabilities(probs, [0, 1, 5])
    assert labels.dtype == np_labels.dtype and (labels == np_labels).all()
    assert nets[0].deep_supervision is True  # restored after streaming
