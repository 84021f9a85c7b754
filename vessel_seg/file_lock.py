"""Advisory file locks (``fcntl.flock``) for outputs that two processes may share.

- :func:`exclusive_lock` around a read-modify-write of a shared file (blocking: the second writer waits
  its turn, then reads what the first wrote);
- :func:`hold_or_refuse` for work that must not run twice at once (a training fold): the second process
  gets a one-line error naming the first one's process id, host and start time.

The lock is tied to an open file description, so the kernel releases it when its process ends, however it
ends: a killed run never leaves a stale lock behind. Where ``fcntl`` is missing (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from vessel_seg.errors import VesselSegError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class Busy(VesselSegError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block, waiting for it if needed.

    ``path`` may be a folder (Linux and macOS lock a folder's descriptor like a file's): locking an output
    folder itself leaves no lock file among the outputs. A file is created if missing.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDONLY) if Path(path).is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def hold_or_refuse(path: Path, what: str, hint: str) -> Iterator[None]:
    """Hold ``path``'s lock for the block, or raise :class:`Busy` at once if another process holds it.

    The holder writes ``process PID on HOST since TIME`` into the file, which the refusal quotes.
    """
    with open(path, "a+", encoding="utf-8") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                raise Busy(f"{what} is in use by {owner}; {hint}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
