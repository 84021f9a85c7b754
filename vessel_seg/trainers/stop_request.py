"""Stopping a training run cleanly on SIGTERM or SIGINT: finish the iteration, save, say how to resume.

Inside :class:`StopRequest` the first SIGTERM or SIGINT only sets :attr:`StopRequest.signal_name`; the
training loop looks at :attr:`StopRequest.requested` after every iteration and ends the run through
:class:`TrainingInterrupted` once the latest checkpoint is saved. A second signal raises
``KeyboardInterrupt`` at once (the user insists). Handlers are installed from the main thread only
(Python's rule) and the previous ones are restored on exit.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from vessel_seg.errors import TrainingError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(TrainingError):
    """The run was stopped by a signal after saving its latest checkpoint; the message says how to resume."""


class StopRequest:
    """Context manager that turns SIGTERM/SIGINT into a request the training loop honours between iterations."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt  # a second signal: stop now, without waiting for the iteration
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def resume_command(dataset: str, configuration: str, fold: str, plans: str, trainer: str, default_trainer: str) -> str:
    """The ``vs_train`` command line that continues this run."""
    extra = f" -tr {trainer}" if trainer != default_trainer else ""
    return f"vs_train {dataset} {configuration} {fold} -pl {plans}{extra} --continue"
