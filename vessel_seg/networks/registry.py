"""Networks by name: the plans' ``NetworkTopology.network_class`` picks the class that :func:`build_network` builds.

A network is registered with :func:`register_network` as a factory ``build(topology, in_channels,
num_classes) -> nn.Module``. Training and prediction need from the module:

* ``forward(x)``: logits ``(B, num_classes, *spatial)`` for ``x`` ``(B, in_channels, *spatial)``, or under
  deep supervision a list of them, full resolution first, each coarser by the topology's strides;
* attributes ``deep_supervision`` (bool), ``num_outputs`` (int, 1 without deep supervision) and
  ``divisibility`` (per-axis factor every input size must be a multiple of).

The planner sizes patches and batches with the ResU-Net's cost model whatever the class (an
estimate); a network much heavier than the ResU-Net of the same topology should come with its
own preset (:mod:`vessel_seg.planners.planner`) or plans edited by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from vessel_seg.errors import PlansError
from vessel_seg.planners.plans import NetworkTopology
from vessel_seg.registry import Registry

NetworkFactory = Callable[[NetworkTopology, int, int], nn.Module]


@dataclass(frozen=True)
class NetworkEntry:
    name: str
    build: NetworkFactory
    description: str = ""


NETWORKS: Registry[NetworkEntry] = Registry("network")


def register_network(name: str, *, description: str = "", replace_existing: bool = False) -> Callable[[NetworkFactory], NetworkFactory]:
    """Decorator registering ``build(topology, in_channels, num_classes)`` as the network class ``name``."""

    def decorate(build: NetworkFactory) -> NetworkFactory:
        NETWORKS.add(name, NetworkEntry(name, build, description), replace_existing=replace_existing)
        return build

    return decorate


def build_network(topology: NetworkTopology, in_channels: int, num_classes: int) -> nn.Module:
    """The network ``topology.network_class`` describes, with fresh weights.

    Raises :class:`~vessel_seg.errors.PlansError` for an unregistered class (plans from another
    installation or a plugin not loaded) and when the topology does not fit the class.
    """
    if topology.network_class not in NETWORKS:
        raise PlansError(
            f"the plans name network class {topology.network_class!r}, which is not registered (registered: "
            f"{', '.join(NETWORKS)}); load the module that registers it with VS_PLUGINS"
        )
    return NETWORKS.get(topology.network_class).build(topology, in_channels, num_classes)
