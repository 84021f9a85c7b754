"""Per-epoch training log (JSON lines) and the ``progress.png`` curves."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vessel_seg.atomic import write_atomic, write_text_atomic  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    pseudo_dice: float
    pseudo_cldice: float
    ema_score: float
    learning_rate: float
    epoch_seconds: float
    data_wait_seconds: float


class TrainingLog:
    """Append-only JSON-lines log that survives restarts (a resumed run truncates to its epoch)."""

    def __init__(self, fold_dir: Path):
        self.path = fold_dir / "training_log.jsonl"
        self.plot_path = fold_dir / "progress.png"
        self.records: list[EpochRecord] = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self.records.append(EpochRecord(**json.loads(line)))

    def truncate(self, num_epochs: int) -> None:
        """Forget epochs at or after ``num_epochs`` (they are redone after a resume)."""
        self.records = [r for r in self.records if r.epoch < num_epochs]
        self._write()

    def append(self, record: EpochRecord) -> None:
        self.records.append(record)
        self._write()
        self.plot()

    def _write(self) -> None:
        write_text_atomic(self.path, "".join(json.dumps(asdict(r)) + "\n" for r in self.records))

    def plot(self) -> None:
        if not self.records:
            return
        epochs = [r.epoch for r in self.records]
        fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
        axes[0].plot(epochs, [r.train_loss for r in self.records], label="train loss")
        axes[0].plot(epochs, [r.val_loss for r in self.records], label="val loss")
        axes[1].plot(epochs, [r.pseudo_dice for r in self.records], label="pseudo Dice")
        axes[1].plot(epochs, [r.pseudo_cldice for r in self.records], label="pseudo clDice")
        axes[1].plot(epochs, [r.ema_score for r in self.records], label="EMA score (best ckpt)")
        axes[2].plot(epochs, [r.epoch_seconds for r in self.records], label="epoch s")
        axes[2].plot(epochs, [r.data_wait_seconds for r in self.records], label="data wait s")
        ax_lr = axes[2].twinx()
        ax_lr.plot(epochs, [r.learning_rate for r in self.records], color="grey", linestyle=":", label="lr")
        for ax in axes:
            ax.legend(loc="best", fontsize=8)
            ax.grid(alpha=0.3)
        axes[2].set_xlabel("epoch")
        fig.tight_layout()
        write_atomic(self.plot_path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
        plt.close(fig)
