"""Training: losses, data loading, augmentation, the training loop, checkpoints, DDP."""
