"""Trainer variants by name: what ``vs_train -tr NAME`` trains with, and the run folder it writes.

A variant is a name, the settings it changes (on top of :class:`TrainingSettings`' defaults, below
explicit command-line flags) and optionally a :class:`~vessel_seg.trainers.trainer.Trainer`
subclass that overrides steps. The run folder is ``<NAME>__<plans>__<configuration>``, so runs of
different variants never mix. Register one from a plugin (``VS_PLUGINS``)::

    from vessel_seg.trainers.trainer import Trainer
    from vessel_seg.trainers.variants import register_trainer

    class NoMirrorTrainer(Trainer):
        def make_augmentation(self, train):
            aug = super().make_augmentation(train)
            ...

    register_trainer("vsTrainer_noMirror", trainer_class=NoMirrorTrainer, description="...")

A ``-tr`` name that is not registered trains the default trainer into a folder of that name (one
log line says so), which keeps nnU-Net-style run names usable for A/B runs of single flags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

from vessel_seg.model_folder import DEFAULT_TRAINER
from vessel_seg.registry import Registry
from vessel_seg.trainers.settings import TrainingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerVariant:
    """A registered variant: settings it changes, the trainer class that runs it, one line of help."""

    name: str
    settings: dict = field(default_factory=dict)
    trainer_class: type | None = None  # None: vessel_seg.trainers.trainer.Trainer
    description: str = ""


TRAINERS: Registry[TrainerVariant] = Registry("trainer variant")


def register_trainer(
    name: str, *, settings: dict | None = None, trainer_class: type | None = None, description: str = "",
    replace_existing: bool = False,
) -> TrainerVariant:
    """Register the variant ``name``; ``settings`` keys must be :class:`TrainingSettings` fields (checked now)."""
    unknown = set(settings or {}) - {f.name for f in fields(TrainingSettings)}
    if unknown:
        raise ValueError(f"trainer variant {name!r}: unknown settings {', '.join(sorted(unknown))}")
    variant = TrainerVariant(name, dict(settings or {}), trainer_class, description)
    return TRAINERS.add(name, variant, replace_existing=replace_existing)


def variant_settings(name: str, explicit: dict | None = None) -> TrainingSettings:
    """Defaults, then the variant's settings (if ``name`` is registered), then ``explicit`` values that are not None."""
    values = dict(TRAINERS.get(name).settings) if name in TRAINERS else {}
    values.update({k: v for k, v in (explicit or {}).items() if v is not None})
    return TrainingSettings(**values)


def trainer_for(name: str, settings: TrainingSettings | None) -> tuple[type | None, TrainingSettings]:
    """The trainer class of ``name`` (None: the default Trainer) and the settings to run: ``settings`` when given,
    else the variant's."""
    if name not in TRAINERS:
        log.info("trainer %s is not a registered variant (%s): default trainer, run folder %s__...",
                 name, ", ".join(TRAINERS), name)
        return None, settings or TrainingSettings()
    variant = TRAINERS.get(name)
    if settings is None:
        settings = variant_settings(name)
    elif variant.settings and any(getattr(settings, k) != v for k, v in variant.settings.items()):
        changed = ", ".join(f"{k}={getattr(settings, k)!r}" for k, v in variant.settings.items() if getattr(settings, k) != v)
        log.info("trainer %s: settings given explicitly override the variant's (%s)", name, changed)
    return variant.trainer_class, settings


register_trainer(DEFAULT_TRAINER, description="defaults: Dice + centreline-weighted CE, AdamW 3e-3, nnU-Net's augmentation "
                 "and schedule")
register_trainer("vsTrainer_diceCE", settings={"loss": "dice_ce"}, description="nnU-Net's loss: Dice + CE")
register_trainer("vsTrainer_sgd", settings={"optimizer": "sgd"},
                 description="nnU-Net's optimiser: SGD, Nesterov momentum 0.99, lr 1e-2")
register_trainer("vsTrainer_clDice", settings={"loss": "dice_ce_cldice"}, description="Dice + CE + 0.5 soft-clDice")
register_trainer("vsTrainer_centerline", settings={"loss": "dice_ce_center"}, description="Dice + centreline-weighted CE")
register_trainer("vsTrainer_skeletonRecall", settings={"loss": "dice_ce_skeleton_recall"},
                 description="Dice + CE + skeleton recall (Kirchhoff et al. 2024)")
register_trainer("vsTrainer_noMirroring", settings={"augmentation": {"mirror_axes": []}},
                 description="no mirroring in training (and so none in test-time augmentation)")
