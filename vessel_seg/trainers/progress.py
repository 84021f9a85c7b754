"""Per-epoch training log (JSON lines), the fold's text log and the ``progress.png`` curves."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vessel_seg.atomic import write_atomic, write_text_atomic  # noqa: E402

log = logging.getLogger(__name__)

TEXT_LOG = "training_log.txt"


@contextlib.contextmanager
def fold_text_log(fold_dir: Path, enabled: bool = True) -> Iterator[Path | None]:
    """Copy the run's log lines (with a timestamp) into ``fold_dir/training_log.txt``.

    Appends, so a resumed run continues the same file; the console keeps its own lines. The file
    gets what the ``vessel_seg`` loggers emit: INFO and above under ``vs_train``; in library use
    whatever level the caller configured (logging's default: warnings only), never changed here.
    """
    if not enabled:
        yield None
        return
    path = fold_dir / TEXT_LOG
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    package = logging.getLogger("vessel_seg")
    package.addHandler(handler)
    try:
        yield path
    finally:
        package.removeHandler(handler)
        handler.close()


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
    # Mean |components(prediction) - components(reference)| over the validation patches (0 in logs before it existed).
    pseudo_betti0_error: float = 0.0


class TrainingLog:
    """Append-only JSON-lines log that survives restarts (a resumed run truncates to its epoch)."""

    def __init__(self, fold_dir: Path):
        self.path = fold_dir / "training_log.jsonl"
        self.plot_path = fold_dir / "progress.png"
        self.records: list[EpochRecord] = []
        known = {f.name for f in fields(EpochRecord)}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    values = json.loads(line)
                    self.records.append(EpochRecord(**{k: v for k, v in values.items() if k in known}))

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
        axes[1].plot(epochs, [1 / (1 + r.pseudo_betti0_error) for r in self.records], label="1 / (1 + Betti-0 error)")
        axes[1].plot(epochs, [r.ema_score for r in self.records], label="EMA score (best ckpt)")
        axes[2].plot(epochs, [r.epoch_seconds for r in self.records], label="epoch s")
        axes[2].plot(epochs, [r.data_wait_seconds for r in self.records], label="data wait s")
        ax_lr = axes[2].twinx()
        ax_lr.plot(epochs, [r.learning_rate for r in self.records], color="grey", linestyle=":", label="learning rate")
        ax_lr.set_ylabel("learning rate")
        ax_lr.legend(loc="upper right", fontsize=8)
        for ax, ylabel in zip(axes, ("loss", "validation patches (0-1)", "seconds per epoch"), strict=True):
            ax.set_ylabel(ylabel)
            ax.legend(loc="upper left" if ax is axes[2] else "best", fontsize=8)
            ax.grid(alpha=0.3)
        axes[0].set_title("training progress (best checkpoint: highest EMA score)")
        axes[2].set_xlabel("epoch")
        fig.tight_layout()
        write_atomic(self.plot_path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
        plt.close(fig)
