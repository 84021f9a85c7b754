"""ResU-Net: shapes in 2D/3D, deep supervision, bottleneck structure, parameter count, gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from vessel_seg.errors import PlansError
from vessel_seg.networks.blocks import BottleneckResidualBlock
from vessel_seg.networks.resunet import ResUNet, build_network
from vessel_seg.planners.plans import NetworkTopology

ANISO = NetworkTopology(
    dim=3,
    features_per_stage=[8, 16, 24],
    kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3]],
    strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    blocks_per_stage=[1, 2, 2],
    blocks_per_stage_decoder=[1, 1],
)


def topology(dim: int, features: list[int], deep_supervision: bool = True, **kw) -> NetworkTopology:
    n = len(features)
    return NetworkTopology(
        dim=dim,
        features_per_stage=features,
        kernel_sizes=[[3] * dim] * n,
        strides=[[1] * dim] + [[2] * dim] * (n - 1),
        blocks_per_stage=kw.pop("blocks", [1] * n),
        blocks_per_stage_decoder=[1] * (n - 1),
        deep_supervision=deep_supervision,
        **kw,
    )


def test_anisotropic_3d_shapes_with_and_without_deep_supervision():
    net = build_network(ANISO, in_channels=2, num_classes=3)
    x = torch.randn(2, 2, 4, 16, 24)
    outputs = net(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 4, 16, 24), (2, 3, 4, 8, 12)]
    assert net.output_scales == [[1, 1, 1], [1, 2, 2]]
    assert net.divisibility == [2, 4, 4]
    net.deep_supervision = False
    assert tuple(net(x).shape) == (2, 3, 4, 16, 24)


def test_deep_supervision_list_is_highest_resolution_first_2d_and_3d():
    for dim, size in ((2, (32, 48)), (3, (16, 16, 32))):
        net = build_network(topology(dim, [4, 8, 8, 16]), 1, 2)
        outputs = net(torch.randn(1, 1, *size))
        assert net.num_outputs == 3
        expected = [(1, 2, *(s // 2**i for s in size)) for i in range(3)]
        assert [tuple(o.shape) for o in outputs] == expected


def test_no_deep_supervision_topology_builds_one_head():
    net = build_network(topology(3, [4, 8, 8], deep_supervision=False), 1, 2)
    assert net.num_outputs == 1 and not net.deep_supervision
    assert tuple(net(torch.randn(1, 1, 8, 8, 8)).shape) == (1, 2, 8, 8, 8)


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k


def _bottleneck(c_in: int, c_out: int, width: int, k: int, projected: bool) -> int:
    """Convs without bias, each followed by an affine InstanceNorm (2 parameters per channel)."""
    reduce = _conv(c_in, width, 1) + 2 * width
    spatial = _conv(width, width, k) + 2 * width
    expand = _conv(width, c_out, 1) + 2 * c_out
    shortcut = _conv(c_in, c_out, 1) + 2 * c_out if projected else 0
    return reduce + spatial + expand + shortcut


def test_parameter_count_matches_hand_formula():
    t = topology(3, [4, 8], deep_supervision=False, bottleneck_divisor=2, min_bottleneck_features=2)
    net = build_network(t, in_channels=1, num_classes=2)
    k = 27
    expected = (
        _conv(1, 4, k)
        + 2 * 4  # stem
        + _bottleneck(4, 4, 2, k, projected=False)  # encoder 0
        + _bottleneck(4, 8, 4, k, projected=True)  # encoder 1, stride 2
        + _conv(8, 4, 8)  # transposed conv 2x2x2
        + _bottleneck(8, 4, 2, k, projected=True)  # decoder 0 after concat
        + _conv(4, 2, 1)
        + 2  # head with bias
    )
    assert expected == 1270
    assert sum(p.numel() for p in net.parameters()) == expected


def test_blocks_are_one_k_one_bottlenecks():
    net = build_network(ANISO, 1, 2)
    blocks = [m for m in net.modules() if isinstance(m, BottleneckResidualBlock)]
    assert len(blocks) == sum(ANISO.blocks_per_stage) + sum(ANISO.blocks_per_stage_decoder)
    for stage, kernel, stride in zip(net.encoder, ANISO.kernel_sizes, ANISO.strides, strict=True):
        for i, block in enumerate(stage):
            reduce, spatial, expand = block.reduce[0], block.spatial[0], block.expand[0]
            out_features = expand.out_channels
            width = max(out_features // ANISO.bottleneck_divisor, ANISO.min_bottleneck_features)
            assert reduce.kernel_size == (1, 1, 1) and expand.kernel_size == (1, 1, 1)
            assert spatial.kernel_size == tuple(kernel)
            assert reduce.out_channels == spatial.out_channels == width
            assert spatial.stride == (tuple(stride) if i == 0 else (1, 1, 1))
            assert reduce.stride == (1, 1, 1)
            assert isinstance(block.reduce[1], nn.InstanceNorm3d) and block.reduce[1].affine
            assert block.act.negative_slope == ANISO.negative_slope
            projected = block.reduce[0].in_channels != out_features or any(s != 1 for s in spatial.stride)
            assert isinstance(block.shortcut, nn.Identity) != projected


def _squared_output_gradients(net: nn.Module) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    outputs = net(torch.randn(2, 1, 4, 16, 16, generator=torch.Generator().manual_seed(0)))
    sum(o.square().mean() for o in outputs).backward()
    return {name: p.grad for name, p in net.named_parameters()}


def test_gradients_reach_every_parameter():
    """Without zero-initialised branches every parameter gets a gradient at once; with them, after one step."""
    for name, grad in _squared_output_gradients(build_network(ANISO, 1, 2)).items():
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    net = build_network(dataclasses.replace(ANISO, zero_init_residual=True), 1, 2)
    first = _squared_output_gradients(net)
    assert all(g is not None and torch.isfinite(g).all() for g in first.values())
    # A zero branch scale blocks the gradient of the branch's convolutions, but not of the scale itself.
    assert first["encoder.0.0.reduce.0.weight"].abs().sum() == 0
    assert first["encoder.0.0.expand.1.weight"].abs().sum() > 0
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    for name, grad in _squared_output_gradients(net).items():
        assert grad.abs().sum() > 0, name


def test_residual_branches_start_at_zero():
    """With zero_init_residual every bottleneck block starts as its shortcut: its output equals act(shortcut(x))."""
    net = build_network(dataclasses.replace(ANISO, zero_init_residual=True), 1, 2)
    blocks = [m for m in net.modules() if isinstance(m, BottleneckResidualBlock)]
    assert blocks and all(torch.count_nonzero(b.expand[1].weight) == 0 for b in blocks)
    block = blocks[0]
    x = torch.randn(1, block.reduce[0].in_channels, 4, 8, 8)
    assert torch.allclose(block(x), block.act(block.shortcut(x)))
    off = build_network(ANISO, 1, 2)  # the default: branches start at full scale
    assert all(torch.all(m.expand[1].weight == 1) for m in off.modules() if isinstance(m, BottleneckResidualBlock))


def test_2d_and_3d_share_code_and_compute_the_same_function():
    """A 3D net with (1, k, k) kernels on a one-slice input equals the 2D net with the same weights."""
    net2 = build_network(topology(2, [4, 8, 16], blocks=[1, 2, 1]), 1, 2).eval()
    t3 = NetworkTopology(
        dim=3,
        features_per_stage=[4, 8, 16],
        kernel_sizes=[[1, 3, 3]] * 3,
        strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2]],
        blocks_per_stage=[1, 2, 1],
        blocks_per_stage_decoder=[1, 1],
    )
    net3 = build_network(t3, 1, 2).eval()
    assert [type(m) for m in net2.modules() if not isinstance(m, nn.modules.conv._ConvNd)] == [
        type(m) if not isinstance(m, nn.InstanceNorm3d) else nn.InstanceNorm2d
        for m in net3.modules()
        if not isinstance(m, nn.modules.conv._ConvNd)
    ]
    state = {k: v.unsqueeze(2) if v.dim() == 4 else v for k, v in net2.state_dict().items()}
    net3.load_state_dict(state)
    x = torch.randn(2, 1, 16, 24)
    with torch.no_grad():
        out2, out3 = net2(x), net3(x[:, :, None])
    for a, b in zip(out2, out3, strict=True):
        torch.testing.assert_close(a, b[:, :, 0], rtol=1e-4, atol=1e-5)


def test_kaiming_normal_init_for_leaky_relu():
    net = build_network(topology(3, [32, 64], deep_supervision=False), 1, 2)
    weight = net.encoder[1][0].spatial[0].weight  # 32 -> 32, 3x3x3: 27648 samples
    fan_in = weight.shape[1] * 27
    expected = math.sqrt(2.0 / (1 + 0.01**2)) / math.sqrt(fan_in)
    assert abs(weight.std().item() / expected - 1) < 0.05
    assert torch.count_nonzero(net.heads[0].bias) == 0


def test_channels_last_3d_runs_and_matches():
    net = build_network(ANISO, 1, 2).eval()
    x = torch.randn(2, 1, 4, 16, 16)
    with torch.no_grad():
        reference = net(x)
        net = net.to(memory_format=torch.channels_last_3d)
        outputs = net(x.to(memory_format=torch.channels_last_3d))
    for a, b in zip(reference, outputs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compiles_without_graph_breaks():
    net = build_network(topology(3, [4, 8, 8]), 1, 2)
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    x = torch.randn(1, 1, 8, 8, 8)
    for a, b in zip(compiled(x), net(x), strict=True):
        torch.testing.assert_close(a, b)


def test_batch_norm_option():
    net = build_network(topology(2, [4, 8], norm="batch"), 1, 2)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert tuple(net(torch.randn(2, 1, 8, 8))[0].shape) == (2, 2, 8, 8)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strides": [[1, 1, 1], [2, 2]]}, "strides"),
        ({"kernel_sizes": [[3, 3, 3], [2, 2, 2]]}, "odd"),
        ({"blocks_per_stage_decoder": []}, "blocks_per_stage_decoder"),
        ({"norm": "group"}, "norm"),
        ({"strides": [[2, 2, 2], [2, 2, 2]]}, "strides[0]"),
    ],
)
def test_inconsistent_topology_is_a_plans_error(change, message):
    t = topology(3, [4, 8])
    for key, value in change.items():
        setattr(t, key, value)
    with pytest.raises(PlansError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ResUNet(t, 1, 2)


def test_input_not_divisible_by_strides_is_rejected():
    net = build_network(ANISO, 1, 2)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 4, 16, 18))


def test_a_network_registered_from_a_test_builds_from_plans_and_unknown_classes_fail_in_one_line():
    import dataclasses

    from torch import nn

    from vessel_seg.errors import PlansError
    from vessel_seg.networks.registry import NETWORKS, register_network

    class TinyNet(nn.Module):
        deep_supervision, num_outputs, divisibility = False, 1, [1, 1, 1]

        def __init__(self, in_channels, num_classes):
            super().__init__()
            self.conv = nn.Conv3d(in_channels, num_classes, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    register_network("TinyNetForTest")(lambda topology, c_in, classes: TinyNet(c_in, classes))
    try:
        tiny = dataclasses.replace(topology(3, [4, 8]), network_class="TinyNetForTest")
        net = build_network(tiny, 1, 3)
        assert isinstance(net, TinyNet) and net(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)
        with pytest.raises(ValueError, match="already registered"):
            register_network("TinyNetForTest")(lambda *a: None)
    finally:
        NETWORKS.remove("TinyNetForTest")
    with pytest.raises(PlansError, match="'TinyNetForTest', which is not registered .*ResUNet.*VS_PLUGINS"):
        build_network(tiny, 1, 3)
