"""Memory budgets checked before allocating: a request that cannot fit fails in one line, not in numpy.

:func:`available_memory_bytes` reads what the machine can still give (``MemAvailable`` on Linux, the
cgroup limit where one is lower); :func:`check_memory` compares a request with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from vessel_seg.errors import VesselSegError

GIB = 2**30


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, or None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def available_memory_bytes() -> int | None:
    """Memory this process can still allocate (bytes), or None where the platform does not say."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if found is None and hasattr(os, "sysconf"):
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            found = None
    room = _cgroup_room()
    return room if found is None else (found if room is None else min(found, room))


def check_memory(need_bytes: float, what: str, fix: str) -> None:
    """One-line :class:`VesselSegError` when ``need_bytes`` exceed the memory available now (unknown: no check)."""
    available = available_memory_bytes()
    if available is not None and need_bytes > available:
        raise VesselSegError(f"{what} needs about {need_bytes / GIB:,.1f} GiB of memory, {available / GIB:,.1f} GiB "
                             f"are available; {fix}")
