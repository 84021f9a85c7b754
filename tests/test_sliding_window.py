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
