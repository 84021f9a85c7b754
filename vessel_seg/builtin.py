"""The built-in pretrained vessel model: where it is, and the one log line that says it is used.

The model folder ships inside the package (``vessel_seg/builtin_model/vsTrainer__vs_builtin__3d_fullres``,
written by ``vs_pretrain``; see its ``MODEL_CARD.md``). ``VS_BUILTIN_MODEL`` points to another
folder of the same layout (e.g. one you pretrained longer) and takes precedence.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vessel_seg.errors import VesselSegError

log = logging.getLogger(__name__)

BUILTIN_NAME = "builtin"
BUILTIN_FOLDER = "vsTrainer__vs_builtin__3d_fullres"
PACKAGED_DIR = Path(__file__).resolve().parent / "builtin_model" / BUILTIN_FOLDER
BUILTIN_PLANS = "vs_builtin"  # plans name of datasets planned from the built-in model (fine-tuning)


def builtin_model_dir() -> Path:
    """The built-in model folder (``VS_BUILTIN_MODEL`` if set), checked to hold plans and weights."""
    override = os.environ.get("VS_BUILTIN_MODEL")
    folder = Path(override) if override else PACKAGED_DIR
    if not (folder / "plans.json").is_file() or not (folder / "fold_all" / "checkpoint_final.pt").is_file():
        where = "VS_BUILTIN_MODEL" if override else "this installation"
        raise VesselSegError(
            f"{folder}: the built-in model is missing from {where} (needs plans.json and fold_all/checkpoint_final.pt); "
            "reinstall vessel_seg or rebuild it with vs_pretrain --export"
        )
    return folder


def announce_builtin(folder: Path, reason: str) -> None:
    """The one log line that says predictions come from the built-in model in ``folder``, and why."""
    log.info("using the built-in pretrained vessel model (%s): zero-shot, trained on synthetic data only; "
             "see %s for its limits", reason, folder / "MODEL_CARD.md")
