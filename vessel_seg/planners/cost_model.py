"""Memory and FLOP estimates of one training step of the ResU-Net (``vessel_seg.networks.resunet``).

This is a model, not a measurement: it counts the convolutions of the network a
:class:`~vessel_seg.planners.plans.NetworkTopology` describes and the tensors autograd keeps for the
backward pass, so that the planner can compare patch sizes quickly and consistently.

Network assumed (per sample; ``v_i`` = voxels of stage ``i``'s feature map, ``f_i`` its features,
``b_i = max(f_i // bottleneck_divisor, min_bottleneck_features)``):

* stem: kxk conv ``in_channels -> f_0`` + norm + LeakyReLU;
* encoder stage ``i``: bottleneck blocks, the first mapping ``f_{i-1} -> f_i`` with the stage's
  stride on its kxk conv; a block is 1x1 conv (reduce to ``b_i``, at the input resolution) -> kxk
  conv ``b_i -> b_i`` -> 1x1 conv (expand to ``f_i``), each with norm, LeakyReLU after the first
  two and after the residual sum; a 1x1 (strided) projection conv + norm on the shortcut when the
  channels or the resolution change;
* decoder stage ``i``: transposed conv ``f_{i+1} -> f_i`` with kernel = stride, concatenation with
  the skip (``2 f_i`` channels), blocks (the first ``2 f_i -> f_i`` with a projection shortcut);
* one 1x1 segmentation head per decoder stage (deep supervision), else one at full resolution.

FLOPs count a multiply-add as 2: a conv costs ``2 * prod(kernel) * c_in * c_out * v_out``; a
transposed conv with kernel = stride costs ``2 * c_in * c_out * v_out``. Norms, activations,
concatenations and the loss are not counted (memory-bound, a few percent of the convolutions).

Memory counts what stays alive at the end of the forward pass (what autograd saved for backward),
checked against ``torch.autograd.graph.saved_tensors_hooks`` on the real network:

* conv -> norm -> LeakyReLU (in place): 2 tensors of the output's size (the conv output, which the
  norm saves, and the activation output, which the next conv saves);
* conv -> norm before the residual sum (expand, projection): 1 tensor (the norm's input), plus 1
  for the activation after the sum;
* concatenation output (``2 f_i`` channels), the network input, and the logits of each head
  (2 tensors: logits and the softmax the loss keeps).

To that the model adds the transient gradients of the backward pass
(:data:`BACKWARD_TRANSIENT_TENSORS` times the largest saved tensor), parameters with their gradient
and optimiser state (:data:`BYTES_PER_PARAMETER`), and a fixed ``overhead_gb`` (CUDA context, cuDNN
workspace, allocator slack). ``bytes_per_element`` is 2 under mixed precision (the GPU default) and 4
in fp32 (CPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from vessel_seg.planners.plans import NetworkTopology

BACKWARD_TRANSIENT_TENSORS = 2.0
BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + SGD momentum + a half-precision copy and slack
DEFAULT_OVERHEAD_GB = 0.5


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer for one sample: forward FLOPs, saved elements, parameters, output elements."""

    flops: float
    saved: float
    params: int
    out_elements: float


def _conv(c_in: int, c_out: int, kernel: Sequence[int], v_out: float, saved_copies: float, head: bool = False) -> LayerCost:
    """A conv followed by an affine norm, or a head (conv with bias, no norm)."""
    taps = math.prod(kernel)
    return LayerCost(
        flops=2.0 * taps * c_in * c_out * v_out,
        saved=saved_copies * c_out * v_out,
        params=taps * c_in * c_out + (1 if head else 2) * c_out,
        out_elements=c_out * v_out,
    )


def _width(topology: NetworkTopology, features: int) -> int:
    return max(features // topology.bottleneck_divisor, topology.min_bottleneck_features)


def _block(
    t: NetworkTopology, c_in: int, c_out: int, kernel: Sequence[int], strided: bool, v_in: float, v_out: float
) -> Iterator[LayerCost]:
    b = _width(t, c_out)
    ones = [1] * t.dim
    yield _conv(c_in, b, ones, v_in, 2)  # reduce: conv output + activation output
    yield _conv(b, b, kernel, v_out, 2)  # spatial (carries the stride)
    yield _conv(b, c_out, ones, v_out, 1)  # expand: norm input only
    if c_in != c_out or strided:
        yield _conv(c_in, c_out, ones, v_out, 1)  # projection shortcut
    yield LayerCost(0.0, float(c_out * v_out), 0, c_out * v_out)  # activation after the sum


def layer_costs(
    topology: NetworkTopology, patch_size: Sequence[int], in_channels: int, num_classes: int
) -> list[LayerCost]:
    """Per-layer costs of one sample of ``patch_size`` voxels (see the module docstring)."""
    t = topology
    if len(patch_size) != t.dim:
        raise ValueError(f"patch_size {list(patch_size)} does not match a {t.dim}D topology")
    voxels = []
    shape = [float(p) for p in patch_size]
    for stride in t.strides:
        shape = [math.ceil(n / s) for n, s in zip(shape, stride, strict=True)]
        voxels.append(float(math.prod(shape)))
    f = t.features_per_stage
    n = t.num_stages
    costs = [LayerCost(0.0, float(in_channels * voxels[0]), 0, in_channels * voxels[0])]  # network input
    costs.append(_conv(in_channels, f[0], t.kernel_sizes[0], voxels[0], 2))  # stem
    for i in range(n):
        c_in, v_in = f[max(i - 1, 0)], voxels[max(i - 1, 0)]
        strided = any(s != 1 for s in t.strides[i])
        for k in range(t.blocks_per_stage[i]):
            first = k == 0
            costs.extend(
                _block(t, c_in if first else f[i], f[i], t.kernel_sizes[i], strided and first, v_in if first else voxels[i], voxels[i])
            )
    for i in range(n - 2, -1, -1):
        taps = math.prod(t.strides[i + 1])  # kernel = stride: each output voxel gets one tap per channel
        costs.append(LayerCost(2.0 * f[i + 1] * f[i] * voxels[i], 0.0, taps * f[i + 1] * f[i], f[i] * voxels[i]))
        costs.append(LayerCost(0.0, 2.0 * f[i] * voxels[i], 0, 2 * f[i] * voxels[i]))  # concatenation
        for k in range(t.blocks_per_stage_decoder[i]):
            c_in = 2 * f[i] if k == 0 else f[i]
            costs.extend(_block(t, c_in, f[i], t.kernel_sizes[i], False, voxels[i], voxels[i]))
    heads = max(n - 1, 1) if t.deep_supervision else 1
    for i in range(heads):
        costs.append(_conv(f[i], num_classes, [1] * t.dim, voxels[i], 2, head=True))
    return costs


def estimate_gflops(
    topology: NetworkTopology, patch_size: Sequence[int], batch_size: int, in_channels: int, num_classes: int
) -> float:
    """Forward-pass GFLOPs (1e9 floating-point operations) of one batch; training costs about 3x this."""
    costs = layer_costs(topology, patch_size, in_channels, num_classes)
    return batch_size * sum(c.flops for c in costs) / 1e9


def estimate_parameters(topology: NetworkTopology, in_channels: int, num_classes: int) -> int:
    """Number of trainable parameters (convolution weights, head biases, norm affine weights)."""
    probe = [4] * topology.dim  # parameters do not depend on the patch
    return sum(c.params for c in layer_costs(topology, probe, in_channels, num_classes))


def estimate_memory_gb(
    topology: NetworkTopology,
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int,
    num_classes: int,
    *,
    bytes_per_element: int = 2,
    overhead_gb: float = DEFAULT_OVERHEAD_GB,
) -> float:
    """Peak memory in GB (1e9 bytes) of one training step (forward + backward + optimiser step).

    Parameters
    ----------
    topology : NetworkTopology
        The network.
    patch_size : sequence of int
        Patch edge lengths in voxels, divisible by the product of the strides.
    batch_size : int
        Samples per step.
    in_channels, num_classes : int
        Input channels and output classes (background included).
    bytes_per_element : int
        2 for mixed-precision training, 4 for fp32.
    overhead_gb : float
        Fixed memory outside the tensors (runtime context, workspaces).

    Returns
    -------
    float
        Estimated peak in GB (see the module docstring for the model).
    """
    costs = layer_costs(topology, patch_size, in_channels, num_classes)
    saved = sum(c.saved for c in costs)
    largest = max(c.out_elements for c in costs)
    params = sum(c.params for c in costs)
    activations = batch_size * bytes_per_element * (saved + BACKWARD_TRANSIENT_TENSORS * largest)
    return (activations + BYTES_PER_PARAMETER * params) / 1e9 + overhead_gb
