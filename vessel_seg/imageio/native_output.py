"""What C++ libraries (ITK, GDCM, niftilib) print on file descriptor 2, captured so errors stay one line."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_STDERR_LOCK = threading.Lock()


@contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Route what C++ code prints on file descriptor 2 into the yielded list (filled on exit).

    ITK's writers print their own diagnostics ("** ERROR: NWAD: wrote only ...") besides, or
    instead of, raising; they become part of the one-line error or a debug message. The
    descriptor is shared by all threads, so the redirect is kept to the write call alone and one
    thread at a time holds it (nested redirects would restore the wrong descriptor).
    """
    lines: list[str] = []
    with _STDERR_LOCK:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable descriptor 2 (embedded interpreter): nothing to capture
            yield lines
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read().decode(errors="replace")
                lines.extend(line.strip() for line in text.splitlines() if line.strip())
