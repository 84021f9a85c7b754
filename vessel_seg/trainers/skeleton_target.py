"""The tubed skeleton of a label patch, the target of the skeleton-recall loss.

Computed in the data workers after spatial augmentation, once per patch, so it follows the
rotated and scaled vessels exactly and costs the training step nothing (Kirchhoff et al., ECCV
2024, do the same in nnU-Net's pipeline). The skeleton is skimage's (Lee's thinning in 3D, Zhang's
in 2D) per label, thickened by one voxel in the 4/6-neighbourhood ("tubed", so that a
prediction shifted by a voxel still meets it) and kept inside the label's own voxels.

Lee's thinning can erase a whole object: a straight tube of even, symmetric cross-section
(e.g. 6 voxels across) thins to nothing in skimage 0.26. A vessel must never drop out of the
target, so the shared :func:`vessel_seg.morphology.skeleton` gives such components their medial
ridge instead.
"""

from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage

from vessel_seg.morphology import skeleton as vessel_skeleton

TARGET = "target"


def tubed_skeleton(labels: np.ndarray, tube_radius: int = 1) -> np.ndarray:
    """Skeleton of each label of ``labels`` (2D or 3D int array), thickened, as a uint8 label map.

    Parameters
    ----------
    labels : ndarray of int
        Class indices of one patch, ``(Y, X)`` or ``(Z, Y, X)``; 0 is background.
    tube_radius : int
        Dilations of the skeleton by the cross-shaped neighbourhood (0: the bare skeleton).

    Returns
    -------
    ndarray of uint8
        Same shape; the label value on its tubed skeleton, 0 elsewhere. Labels touch only inside
        their own voxels, so a tube never claims another label's or the background's voxels.
    """
    out = np.zeros(labels.shape, dtype=np.uint8)
    cross = ndimage.generate_binary_structure(labels.ndim, 1)
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        skeleton = vessel_skeleton(mask)
        if tube_radius > 0 and skeleton.any():
            skeleton = ndimage.binary_dilation(skeleton, cross, iterations=tube_radius) & mask
        out[skeleton] = value
    return out


class SkeletonTarget(AbstractTransform):
    """Append the tubed skeleton of target channel 0 as channel 1: ``(B, 1, *S)`` -> ``(B, 2, *S)`` uint8.

    A 3D patch whose first spatial axis has length 1 (a 2D configuration's slice) is skeletonised
    in 2D.
    """

    def __init__(self, tube_radius: int = 1) -> None:
        self.tube_radius = tube_radius

    def __call__(self, **batch):
        target = batch[TARGET]
        skeletons = np.empty_like(target[:, :1], dtype=np.uint8)
        for b in range(target.shape[0]):
            labels = target[b, 0]
            flat = labels.ndim == 3 and labels.shape[0] == 1
            skeleton = tubed_skeleton(labels[0] if flat else labels, self.tube_radius)
            skeletons[b, 0] = skeleton[None] if flat else skeleton
        batch[TARGET] = np.ascontiguousarray(np.concatenate([target.astype(np.uint8, copy=False), skeletons], axis=1))
        return batch
