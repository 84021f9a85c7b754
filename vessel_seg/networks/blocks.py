"""Building blocks of the ResU-Net, written once for 2D and 3D (``dim`` picks the layer types).

The central piece is :class:`BottleneckResidualBlock`, the "BR" block of CerebralDoc's ResU-Net
(Nat. Commun. 2020): a 1x1(x1) convolution that reduces the width, a kxk(xk) convolution that
carries the block's stride, and a 1x1(x1) convolution that expands back, each followed by a norm
and a LeakyReLU, the last activation applied after the residual sum.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vessel_seg.planners.plans_checks import NORMS


def conv_layer(dim: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d`` for ``dim`` 2 or 3."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[dim]


def conv_transpose_layer(dim: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d`` for ``dim`` 2 or 3."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dim]


def norm_layer(dim: int, norm: str, channels: int) -> nn.Module:
    """A normalisation layer over ``channels`` feature maps.

    Parameters
    ----------
    dim : int
        Spatial dimensionality, 2 or 3.
    norm : str
        ``"instance"`` (per-sample, per-channel statistics with a learned affine transform, the
        nnU-Net default that behaves the same with batch size 2 in training and 1 in inference)
        or ``"batch"``.
    channels : int
        Number of feature maps.
    """
    if norm == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim](channels, eps=1e-5, affine=True)
    if norm == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim](channels, eps=1e-5)
    raise ValueError(f"unknown norm {norm!r}: use one of {', '.join(NORMS)}")


def same_padding(kernel_size: Sequence[int]) -> list[int]:
    """Per-axis padding that keeps the size of a stride-1 convolution with odd ``kernel_size``."""
    return [k // 2 for k in kernel_size]


def bottleneck_width(features: int, divisor: int, minimum: int) -> int:
    """Inner width of a bottleneck block: ``max(features // divisor, minimum)``."""
    return max(features // divisor, minimum)


class ConvNormAct(nn.Sequential):
    """Convolution (no bias: the norm removes it) -> norm -> LeakyReLU, padded to keep the size.

    With ``stride`` s the output has ``ceil(n / s)`` voxels along an axis of ``n``.
    """

    def __init__(
        self,
        dim: int,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        stride: Sequence[int] | int = 1,
        norm: str = "instance",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(
            conv_layer(dim)(
                in_features,
                out_features,
                list(kernel_size),
                stride=stride,
                padding=same_padding(kernel_size),
                bias=False,
            ),
            norm_layer(dim, norm, out_features),
            nn.LeakyReLU(negative_slope, inplace=True),
        )


class BottleneckResidualBlock(nn.Module):
    """``act(norm(conv1(act(norm(convk(act(norm(conv1(x)))))))) + shortcut(x))``.

    Parameters
    ----------
    dim : int
        Spatial dimensionality, 2 or 3.
    in_features, out_features : int
        Channels in and out.
    kernel_size : sequence of int
        Odd kernel of the middle convolution, one value per spatial axis (e.g. ``(1, 3, 3)``).
    stride : sequence of int
        Stride of the middle convolution (and of the projected shortcut), one per axis.
    bottleneck_features : int
        Width of the reduced middle part.
    norm : str
        ``"instance"`` or ``"batch"``.
    negative_slope : float
        Slope of the LeakyReLU for negative inputs.

    Notes
    -----
    The shortcut is the identity when the block keeps channels and resolution, otherwise a strided
    1x1(x1) convolution followed by a norm (ResNet's projection shortcut, option B).
    """

    def __init__(
        self,
        dim: int,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        bottleneck_features: int,
        norm: str = "instance",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        ones = [1] * dim
        self.reduce = ConvNormAct(dim, in_features, bottleneck_features, ones, 1, norm, negative_slope)
        self.spatial = ConvNormAct(
            dim, bottleneck_features, bottleneck_features, kernel_size, stride, norm, negative_slope
        )
        self.expand = nn.Sequential(
            conv_layer(dim)(bottleneck_features, out_features, ones, bias=False),
            norm_layer(dim, norm, out_features),
        )
        if in_features == out_features and all(s == 1 for s in stride):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                conv_layer(dim)(in_features, out_features, ones, stride=list(stride), bias=False),
                norm_layer(dim, norm, out_features),
            )
        self.act = nn.LeakyReLU(negative_slope, inplace=True)

    def zero_init_residual(self) -> None:
        """Start the residual branch at zero: the expand norm's scale is set to 0.

        The block then begins as its shortcut (the identity, or the projection), so a deep stack of
        blocks starts as a shallow network whose output variance does not grow with depth; the
        branch switches on as the scale learns (Goyal et al. 2017; nnU-Net's ResEnc U-Nets do the same).
        """
        nn.init.zeros_(self.expand[1].weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.expand(self.spatial(self.reduce(x))) + self.shortcut(x))


class ResidualStage(nn.Sequential):
    """``num_blocks`` bottleneck blocks; the first maps ``in_features`` to ``out_features`` with ``stride``."""

    def __init__(
        self,
        dim: int,
        num_blocks: int,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        bottleneck_features: int,
        norm: str = "instance",
        negative_slope: float = 0.01,
    ) -> None:
        blocks = [
            BottleneckResidualBlock(
                dim,
                in_features if i == 0 else out_features,
                out_features,
                kernel_size,
                stride if i == 0 else [1] * dim,
                bottleneck_features,
                norm,
                negative_slope,
            )
            for i in range(num_blocks)
        ]
        super().__init__(*blocks)


def init_weights(module: nn.Module, negative_slope: float = 0.01) -> None:
    """Kaiming-normal init of every (transposed) convolution for LeakyReLU(``negative_slope``), zero biases.

    Apply with ``network.apply(lambda m: init_weights(m, slope))``; norm layers keep their
    defaults (weight 1, bias 0).
    """
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=negative_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
