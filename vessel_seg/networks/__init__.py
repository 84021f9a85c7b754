"""ResU-Nets built from bottleneck residual blocks, 2D and 3D, from the plans topology."""
