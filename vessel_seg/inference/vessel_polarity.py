"""Vessel polarity for modality-free models: the built-in model segments *bright* vessels.

It was pretrained on bright vessels only (``vessel_seg.pretraining.PRETRAIN_RANGES``), because a model that
accepts both polarities takes dark fat, air and cavities for dark vessels. Images whose vessels are darker
than their surroundings (black-blood MR, bright-field or negative-stain microscopy) are inverted before
prediction with ``vs_predict --vessel-polarity dark``; the percentile normalisation that follows makes the
inversion's offset irrelevant. Models trained with labels learned their data's own polarity and take
only the default.
"""

from __future__ import annotations

import numpy as np

from vessel_seg.errors import VesselSegError

POLARITIES = ("bright", "dark")


def check_vessel_polarity(polarity: str, models) -> str:
    """``polarity`` checked (one-line :class:`VesselSegError`): a known value, and ``dark`` only for modality-free models."""
    if polarity not in POLARITIES:
        raise VesselSegError(f"--vessel-polarity {polarity!r}: use bright (vessels brighter than their surroundings, "
                             "as in CTA, MRA, fluorescence) or dark (black-blood MR, bright-field microscopy)")
    if polarity == "dark":
        for model in models:
            if model.config.spacing_mode != "finest_voxel":
                raise VesselSegError(f"{model.model_dir}: --vessel-polarity dark is for modality-free models "
                                     "(--model builtin); a model trained with labels knows its data's polarity")
    return polarity


def oriented(images: np.ndarray, polarity: str) -> np.ndarray:
    """``images`` ``(C, Z, Y, X)`` with vessels bright: negated for ``dark`` (a new array), as they are otherwise."""
    return np.negative(images) if polarity == "dark" else images
