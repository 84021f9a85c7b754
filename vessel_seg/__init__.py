"""vessel_seg: an nnU-Net-style self-configuring framework for 3D blood-vessel segmentation."""

__version__ = "0.1.0"
