"""Console entry points: argument parsing only, each a thin wrapper over the library API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
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
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )


def run_cli(
    parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int | None], argv: Sequence[str] | None
) -> int:
    """Parse ``argv``, run ``command`` and turn user errors into one line on stderr and exit code 2."""
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(command(args) or 0)
    except VesselSegError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
