"""The ResU-Net: a U-Net whose stages are bottleneck residual blocks, 2D or 3D, built from the plans.

Layout for ``n`` stages (lists indexed by stage, 0 = full resolution)::

    stem        kxk conv in_channels -> features[0] (+ norm, LeakyReLU), stride 1
    encoder i   blocks_per_stage[i] bottleneck blocks, the first with strides[i]
    decoder i   (i = n-2 .. 0) transposed conv features[i+1] -> features[i] (kernel = stride = strides[i+1]),
                concat with encoder i's output, blocks_per_stage_decoder[i] blocks 2*features[i] -> features[i]
    head i      1x1 conv features[i] -> num_classes on decoder i's output

The stem is our addition to CerebralDoc's design: a bottleneck block's first layer is a 1x1 conv,
which on a single-channel image can only rescale intensities, so without a stem the first spatial
filter would see one channel's worth of information.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vessel_seg.errors import PlansError
from vessel_seg.networks.registry import build_network, register_network

__all__ = ["ResUNet", "build_network", "build_resunet"]  # build_network: re-exported (dispatches on the class)
from vessel_seg.networks.blocks import (
    BottleneckResidualBlock,
    ConvNormAct,
    ResidualStage,
    bottleneck_width,
    conv_layer,
    conv_transpose_layer,
    init_weights,
)
from vessel_seg.planners.plans import NetworkTopology
from vessel_seg.planners.plans_checks import topology_problem


def validate_topology(topology: NetworkTopology) -> None:
    """Raise :class:`~vessel_seg.errors.PlansError` if the lists of ``topology`` do not fit together."""
    problem = topology_problem(topology)
    if problem:
        raise PlansError(f"plans network topology: {problem}; fix plans.json or re-run vs_plan_and_preprocess")


class ResUNet(nn.Module):
    """U-Net of bottleneck residual blocks (see the module docstring for the layout).

    Parameters
    ----------
    topology : NetworkTopology
        Stages, features, kernels, strides and blocks, from the plans.
    in_channels : int
        Image channels.
    num_classes : int
        Output channels (softmax classes, background included).

    Attributes
    ----------
    deep_supervision : bool
        When True, ``forward`` returns a list of logits, one per decoder stage, full resolution
        first (``[full, 1/2, 1/4, ...]`` for isotropic strides of 2). Predictors set it to False to
        get only the full-resolution logits. Starts as ``topology.deep_supervision``; heads for the
        lower stages exist only when the topology asks for deep supervision.
    """

    def __init__(self, topology: NetworkTopology, in_channels: int, num_classes: int) -> None:
        super().__init__()
        validate_topology(topology)
        t = topology
        self.topology = t
        self.dim = t.dim
        self.deep_supervision = bool(t.deep_supervision)
        feats = t.features_per_stage
        n = t.num_stages

        def stage(num_blocks: int, c_in: int, c_out: int, kernel: list[int], stride: list[int]) -> ResidualStage:
            width = bottleneck_width(c_out, t.bottleneck_divisor, t.min_bottleneck_features)
            return ResidualStage(t.dim, num_blocks, c_in, c_out, kernel, stride, width, t.norm, t.negative_slope)

        self.stem = ConvNormAct(t.dim, in_channels, feats[0], t.kernel_sizes[0], 1, t.norm, t.negative_slope)
        self.encoder = nn.ModuleList(
            stage(t.blocks_per_stage[i], feats[max(i - 1, 0)], feats[i], t.kernel_sizes[i], t.strides[i])
            for i in range(n)
        )
        # Index i of upsample / decoder / heads belongs to resolution stage i (i = 0 is full resolution).
        self.upsample = nn.ModuleList(
            conv_transpose_layer(t.dim)(feats[i + 1], feats[i], t.strides[i + 1], stride=t.strides[i + 1], bias=False)
            for i in range(n - 1)
        )
        self.decoder = nn.ModuleList(
            stage(t.blocks_per_stage_decoder[i], 2 * feats[i], feats[i], t.kernel_sizes[i], [1] * t.dim)
            for i in range(n - 1)
        )
        num_heads = max(n - 1, 1) if t.deep_supervision else 1
        self.heads = nn.ModuleList(conv_layer(t.dim)(feats[i], num_classes, 1, bias=True) for i in range(num_heads))
        self.apply(lambda m: init_weights(m, t.negative_slope))
        if t.zero_init_residual:
            for module in self.modules():
                if isinstance(module, BottleneckResidualBlock):
                    module.zero_init_residual()
        self._divisibility = tuple(math.prod(s[a] for s in t.strides) for a in range(t.dim))

    @property
    def num_outputs(self) -> int:
        """Length of the list ``forward`` returns under deep supervision."""
        return len(self.heads)

    @property
    def output_scales(self) -> list[list[int]]:
        """Per output (full resolution first), its downsampling factor per spatial axis."""
        cumulative = [1] * self.dim
        scales = []
        for stride in self.topology.strides[: self.num_outputs]:
            cumulative = [c * s for c, s in zip(cumulative, stride, strict=True)]
            scales.append(list(cumulative))
        return scales

    @property
    def divisibility(self) -> list[int]:
        """Per spatial axis, the factor every input size must be a multiple of (product of the strides)."""
        return list(self._divisibility)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits ``(B, num_classes, *spatial)``, or a list of them under deep supervision.

        ``x`` is ``(B, in_channels, *spatial)`` with every spatial size a multiple of
        :attr:`divisibility`.
        """
        self._check_input(x)
        skips = []
        x = self.stem(x)
        for encoder_stage in self.encoder:
            x = encoder_stage(x)
            skips.append(x)
        decoded: list[Tensor] = [x]  # the deepest stage's output when there is no decoder
        for i in range(len(self.decoder) - 1, -1, -1):
            x = self.upsample[i](x)
            x = self.decoder[i](torch.cat([x, skips[i]], dim=1))
            decoded.insert(0, x)
        if not self.deep_supervision:
            return self.heads[0](decoded[0])
        # ``decoded`` also holds the deepest stage, which has no head.
        return [head(features) for head, features in zip(self.heads, decoded, strict=False)]

    def _check_input(self, x: Tensor) -> None:
        # A plain loop over ints: torch.compile traces it without graph breaks.
        divisible = x.dim() == self.dim + 2
        for axis, factor in enumerate(self._divisibility):
            divisible = divisible and x.shape[2 + axis] % factor == 0
        if not divisible:
            raise ValueError(
                f"ResUNet expects (B, C, *spatial) with {self.dim} spatial axes divisible by {self.divisibility}, "
                f"got shape {tuple(x.shape)}"
            )


@register_network("ResUNet", description="U-Net of bottleneck residual blocks (CerebralDoc), 2D and 3D")
def build_resunet(topology: NetworkTopology, in_channels: int, num_classes: int) -> ResUNet:
    """The ResU-Net described by ``topology`` with fresh Kaiming-normal weights.

    Raises :class:`~vessel_seg.errors.PlansError` when the topology's lists do not fit together.
    """
    return ResUNet(topology, in_channels, num_classes)
