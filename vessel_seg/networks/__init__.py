"""Segmentation networks by name (:mod:`~vessel_seg.networks.registry`); the built-in one is the ResU-Net of
bottleneck residual blocks, 2D and 3D, built from the plans topology."""

from vessel_seg.networks import resunet as _resunet  # noqa: F401  (registers "ResUNet")
