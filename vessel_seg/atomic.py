"""Atomic file writes: every output goes to a hidden temporary sibling and is renamed into place.

A reader, or a run killed half-way, never sees a partial file under the real name, and a failed
write leaves nothing behind. The temporary name keeps the target's extensions, so writers that
choose a format (or append one, like numpy) from the name behave as for the real path. Writers
that produce several files referring to each other by name (``.mhd`` + ``.raw``) use a hidden
staging folder instead (:func:`staging_folder`).

Every temporary name holds :data:`TEMP_MARKER`. Only a killed process (SIGKILL, power loss)
leaves one behind; :func:`remove_stale_temporaries` deletes those older than an hour, an age no
write in progress reaches without touching its file, so a concurrent run is never disturbed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from vessel_seg.errors import OutputWriteError

log = logging.getLogger(__name__)

TEMP_MARKER = ".vstmp-"
STALE_AFTER_S = 3600.0


def default_file_mode() -> int:
    """``0o666`` minus the umask: what ``open()`` would give (``mkstemp`` files are private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


NAME_MAX = 255  # bytes in one file name on the common Linux/macOS filesystems
_RANDOM_PART = 8  # characters mkstemp inserts


def _temporary_affixes(name: str) -> tuple[str, str]:
    """``(prefix, suffix)`` of a hidden temporary for ``name`` whose whole name stays within :data:`NAME_MAX`.

    Normally ``.NAME.vstmp-<8 random characters>.ext``; a long final name (a 240-character case id) would make
    that too long for the filesystem, so the name is then cut and a short hash of it keeps it unique.
    """
    suffix = "".join(Path(name).suffixes)[-16:] or ".tmp"
    prefix = f".{name}{TEMP_MARKER}"
    budget = NAME_MAX - _RANDOM_PART - len(suffix.encode())
    if len(prefix.encode()) <= budget:
        return prefix, suffix
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    keep = name.encode()[: max(budget - len(TEMP_MARKER) - len(digest) - 2, 1)].decode(errors="ignore")
    return f".{keep}~{digest}{TEMP_MARKER}", suffix


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix, suffix = _temporary_affixes(path.name)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        os.fchmod(fd, default_file_mode())
        os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota, a size limit: one line, and no partial file
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_error(path: Path, exc: OSError) -> OutputWriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputWriteError(f"{path}: cannot write ({reason}); free disk space or choose a writable location")


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content appears at ``path`` only once the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def staging_folder(folder: str | Path) -> Iterator[Path]:
    """A hidden, empty folder inside ``folder``; on success its files are moved into ``folder``.

    Files are moved in name order except that a file whose name ends in a header extension
    (``.mhd``, ``.nhdr``) moves last, so its data file is in place before it. The staging folder is
    removed in every case.
    """
    folder = Path(folder)
    staging = Path(tempfile.mkdtemp(prefix=TEMP_MARKER, dir=folder))
    try:
        yield staging
        headers_last = sorted(staging.iterdir(), key=lambda p: (p.name.lower().endswith((".mhd", ".nhdr")), p.name))
        for produced in headers_last:
            os.replace(produced, folder / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_temporaries(folder: str | Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete temporaries left in ``folder`` by killed writers, if untouched for ``older_than_s`` seconds.

    Returns the removed paths. Only hidden entries holding :data:`TEMP_MARKER` are considered.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for entry in folder.iterdir():
        if not entry.name.startswith(".") or TEMP_MARKER not in entry.name:
            continue
        try:
            if now - entry.stat().st_mtime < older_than_s:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:  # vanished meanwhile or not ours to delete: leave it
            log.debug("%s: stale temporary not removed (%s)", entry, exc)
            continue
        removed.append(entry)
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", folder, len(removed))
    return removed


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (what a later ``mkdir -p`` would start from)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


SPACE_MARGIN = 1.1  # the estimate plus 10 %


def check_free_space(folder: str | Path, needed_bytes: float, what: str) -> None:
    """Raise :class:`OutputWriteError` when the filesystem of ``folder`` has less than ``needed_bytes`` free.

    ``folder`` need not exist yet (its nearest existing ancestor is asked). Called before long
    writing runs (preprocessing, prediction) so that they fail at once, not after an hour.
    """
    probe = _nearest_existing(Path(folder))
    try:
        free = shutil.disk_usage(probe).free
    except OSError:  # an exotic filesystem that cannot tell: let the writes find out
        return
    if free < needed_bytes * SPACE_MARGIN:
        raise OutputWriteError(
            f"{folder}: {what} needs about {needed_bytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB are free; "
            "free disk space or choose another location"
        )


def check_writable_location(folder: str | Path, fix: str = "choose another location") -> Path:
    """Raise :class:`OutputWriteError` unless ``folder`` could be created (or exists) and be written; creates nothing.

    Lets a command refuse a bad output location before any work, without leaving an empty folder
    behind when a later check fails.
    """
    folder = Path(folder)
    probe = _nearest_existing(folder)
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputWriteError(f"{folder}: output folder is not writable ({probe} is not a writable folder); {fix}")
    return folder
