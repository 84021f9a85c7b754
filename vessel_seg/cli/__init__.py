"""Console entry points: argument parsing only, each a thin wrapper over the library API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from vessel_seg.errors import VesselSegError


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
