"""Console entry points: argument parsing only, each a thin wrapper over the library API."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from vessel_seg.errors import VesselSegError


def sleep_idle_openmp_threads() -> None:
    """Let idle OpenMP threads sleep instead of spin, for commands with worker processes beside torch.

    With as many torch threads as cores, a spinning barrier that loses its core to a
    data-augmentation worker stalls every parallel region: measured here, 15 s instead of 1.8 s per
    training iteration on 2 cores with one busy worker. Without such neighbours spinning is faster
    (``vs_predict`` took 18 s per case with sleeping threads, 12-14 s without), so only commands that
    train call this. It must run before torch is imported; a user's own setting wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s" if verbose else "%(message)s", stream=sys.stderr)


def run_cli(
    parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int | None], argv: Sequence[str] | None
) -> int:
    """Parse ``argv``, run ``command`` and turn user errors into one line on stderr and exit code 2."""
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    previous = _terminate_as_exception()
    try:
        from vessel_seg.plugins import load_plugins

        load_plugins()  # registrations of VS_PLUGINS modules (losses, ...) before the command looks names up
        return int(command(args) or 0)
    except VesselSegError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        message = environment_failure(exc)
        if message is None or args.verbose:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"error: stopped by SIGTERM; finished work is kept (outputs are written atomically): run {parser.prog} "
              "again with the same arguments to resume", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, ``timeout``, a scheduler): unwinds like KeyboardInterrupt, to one line and exit 2."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def _terminate_as_exception():
    """Install the SIGTERM handler of a command (main thread only); returns the previous handler or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


# Failures of the machine, not of the code: a full disk, a quota, a read-only or forbidden target.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this filesystem or limit", errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "file name too long", errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder is in the way of a file",
}


def environment_failure(exc: OSError) -> str | None:
    """One line for an ``OSError`` caused by the machine (disk, permissions), naming the path; else None.

    Every writer is atomic (temporary, then rename), so such a failure leaves no partial output; the
    line says what to fix. Other ``OSError`` s keep their traceback: they may be bugs.
    """
    reason = ENVIRONMENT_ERRNOS.get(exc.errno or -1)
    if reason is None:
        return None
    where = exc.filename if exc.filename is not None else "an output file"
    return f"{where}: {reason}; free space or choose a writable location, then run again"
