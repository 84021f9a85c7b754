"""Training hyper-parameters that are not part of the plans (they describe the run, not the data)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vessel_seg.trainers.losses import loss_entry

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"adamw": 3e-3, "sgd": 1e-2}  # initial learning rate when none is given
COMPILE_MODES = ("auto", "on", "off")
# Keyword arguments of trainers.augmentation.training_transforms that a run may change.
AUGMENTATION_OPTIONS = ("mirror_axes", "rotation_deg", "scale_range", "p_rotation", "p_scale", "elastic", "p_elastic",
                        "spatial_order")


@dataclass
class TrainingSettings:
    """One training run.

    Defaults follow nnU-Net v2 (poly decay with exponent 0.9, weight decay 3e-5, 250 iterations per
    epoch, gradient norm clipped at 12) except the loss (centreline-weighted, see ``loss``) and the optimiser: AdamW at lr 3e-3 instead of SGD with
    Nesterov momentum 0.99 at lr 1e-2 (still available: ``optimizer="sgd"``). Why: with bottleneck
    residual blocks, SGD left held-out Dice flat at ~0.70 for hundreds of iterations (the network
    kept segmenting bone-like blobs), while AdamW reached 0.85-0.88 after 100-200 iterations on the
    same data (benchmarks/learning_curves.py, docs/benchmarks.md, 2026-11-30). Fewer epochs than
    nnU-Net because vessels on the synthetic set converge much earlier; set ``epochs`` for real data.
    """

    epochs: int = 100
    iterations_per_epoch: int = 250
    validation_iterations: int = 20
    # Dice + centreline-weighted CE: on held-out synthetic trees (tuning seed 31, 500 iterations, TTA and default
    # postprocessing) Dice 0.921 / clDice 0.967 / 1.0 component per case against 0.913 / 0.960 / 1.8 for Dice + CE,
    # at 1.13x the step time; skeleton recall 0.901 / 0.971 / 1.5 (1.08x), clDice 0.919 / 0.965 / 1.0 (1.99x).
    loss: str = "dice_ce_center"
    optimizer: str = "adamw"
    learning_rate: float | None = None  # None: DEFAULT_LR of the optimiser (3e-3 AdamW, 1e-2 SGD)
    weight_decay: float = 3e-5
    momentum: float = 0.99  # SGD only
    grad_clip: float = 12.0
    # Steps of linear learning-rate warm-up at the start of a run (0: none).
    warmup_iterations: int = 0
    # Augmentation worker processes; None: VS_N_PROC_DA, else nnUNet_n_proc_DA, else chosen from the CPUs and
    # device at train time (vessel_seg.trainers.workers).
    num_workers: int | None = None
    device: str = "auto"
    # Mixed precision where the hardware has it natively: bf16 on CUDA GPUs (Ampere+) and CPUs with
    # AVX512-BF16/AMX, fp16 with loss scaling on older CUDA GPUs (vessel_seg.device.amp_dtype).
    amp: bool = True
    # torch.compile: "auto" compiles on CUDA for long runs only (vessel_seg.trainers.step.compile_decision);
    # True/False are accepted as "on"/"off".
    compile: str = "auto"
    # channels_last_3d activations where they are faster (CPU; CUDA with bf16/fp16); False: always NCDHW.
    channels_last: bool = True
    # checkpoint_latest.pt after every epoch (atomic): a killed run loses at most the epoch in progress; the cost,
    # measured in benchmarks/checkpoint_cost.py, is a small fraction of an epoch (docs/benchmarks.md).
    checkpoint_every: int = 1
    # Keep the weights every N epochs as checkpoint_epochNNNN.pt (0: never), e.g. for held-out learning curves.
    snapshot_every: int = 0
    seed: int = 12345
    final_validation: bool = True
    # Also write fold_K/validation/CASE.npz (float16 probabilities) for ensemble and gap-bridging selection.
    save_validation_probabilities: bool = True
    # Changes to nnU-Net's augmentation recipe, by training_transforms keyword (AUGMENTATION_OPTIONS), e.g.
    # {"mirror_axes": [1, 2], "p_rotation": 0.0}; empty: the recipe as it is.
    augmentation: dict = field(default_factory=dict)
    # Best checkpoint: highest exponential moving average of validation.selection_score (pseudo-Dice, clDice, components).
    ema_decay: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):
            self.compile = "on" if self.compile else "off"
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}: use one of {', '.join(COMPILE_MODES)}")
        loss_entry(self.loss)  # ValueError naming the registered losses
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.snapshot_every < 0:
            raise ValueError("snapshot_every must be 0 (off) or a positive number of epochs")
        if self.warmup_iterations < 0:
            raise ValueError("warmup_iterations must be 0 (off) or a positive number of steps")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError("num_workers must be 0 or more (or None to choose automatically)")
        if self.epochs < 1 or self.iterations_per_epoch < 1:
            raise ValueError("epochs and iterations per epoch must be at least 1")
        unknown = set(self.augmentation) - set(AUGMENTATION_OPTIONS)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {', '.join(sorted(unknown))}: use {', '.join(AUGMENTATION_OPTIONS)}")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Values, not only types: a negative or NaN learning rate would train a broken model silently."""
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--lr must be a positive finite number, got {self.learning_rate}")
        for name, value in (("weight_decay", self.weight_decay), ("grad_clip", self.grad_clip)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be at least 1 epoch, got {self.checkpoint_every}")
        if self.validation_iterations < 0:
            raise ValueError(f"--val-iterations must be 0 or more, got {self.validation_iterations}")

    @property
    def initial_lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LR[self.optimizer]
