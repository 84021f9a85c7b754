"""Batches handed from worker processes to the training process through shared memory, not through a pipe.

Sending a batch through batchgenerators' queues pickles it in the worker and pushes it through a pipe
that the training process reads in 64 KiB pieces and unpickles: about 13-25 ms of the training
process's CPU per 12 MB batch (measured on 2 cores), which caps it at a few dozen batches per second
however many workers there are. :class:`SharedSlots` is a pool of fixed-size slots in one anonymous
shared mapping created before the workers are forked (so they inherit it: no files in ``/dev/shm``,
whose size containers often limit, and nothing to clean up after a crash). The mapping is reserved
without committing memory (``MAP_NORESERVE``; :data:`SLOT_BYTES` of address space per slot), so a
slot only costs the pages its batches touch; where the reservation is refused the pool is not used. A worker copies the batch's large numpy arrays into a free slot
and sends only their place (:class:`InSlot`); the training process copies them out (about 1.5 ms per
12 MB) and returns the slot. Smaller arrays and other values still travel pickled, and so does a
batch that does not fit a slot, or any batch once :meth:`SharedSlots.close` began.

Flow control: a worker waits for a free slot (polling the ``closing`` flag), so with ``count >=
queued batches + workers + 2`` slots it never waits while there is room in the queue. A worker that
dies while holding a slot only costs that slot. Needs the ``fork`` start method (the default on
Linux up to Python 3.13); elsewhere :func:`shared_memory_available` is False and batches go through
the pipe as before.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing
import queue
import sys
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

MIN_SHARED_BYTES = 1 << 16  # arrays below 64 KiB stay in the pickle
SLOT_BYTES = 256 << 20  # address space per slot; larger batches travel pickled
ALIGN = 64
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)  # Python < 3.13 lacks it


@dataclass(frozen=True)
class InSlot:
    """Where one array of a batch waits in the shared mapping: slot index, byte offset, shape and dtype."""

    slot: int
    offset: int
    shape: tuple[int, ...]
    dtype: str


def shared_memory_available() -> bool:
    """Whether worker processes are forked (and so inherit an anonymous shared mapping)."""
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None:  # not fixed yet: the platform default, fork on Linux before Python 3.14
        method = "fork" if sys.platform == "linux" and sys.version_info < (3, 14) else "other"
    return method == "fork"


def large_arrays_nbytes(batch: dict) -> int:
    """Bytes of the arrays of ``batch`` that :meth:`SharedSlots.pack` would place in a slot (aligned)."""
    return sum(_aligned(v.nbytes) for v in batch.values() if isinstance(v, np.ndarray) and v.nbytes >= MIN_SHARED_BYTES)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


class SharedSlots:
    """``count`` slots of ``slot_bytes`` bytes each for the large arrays of in-flight batches (module docstring).

    Create it in the training process before the workers start; call :meth:`pack` in a worker and
    :meth:`unpack` in the training process, then :meth:`close`.
    """

    @classmethod
    def create(cls, count: int, slot_bytes: int = SLOT_BYTES) -> SharedSlots | None:
        """A pool, or None (batches then travel pickled) without fork or where the mapping is refused."""
        if not shared_memory_available():
            return None
        try:
            return cls(count, slot_bytes)
        except OSError as exc:
            log.debug("no shared memory for batches (%s); they go through the queue's pipe", exc)
            return None

    def __init__(self, count: int, slot_bytes: int = SLOT_BYTES, wait_s: float = 0.05):
        if count < 1 or slot_bytes < 1:
            raise ValueError(f"need at least one slot of at least one byte, got {count} x {slot_bytes}")
        self.count, self.slot_bytes, self.wait_s = count, _aligned(slot_bytes), wait_s
        # MAP_SHARED | MAP_ANONYMOUS (added by mmap for fileno -1); raises OSError where refused
        self._buffer = mmap.mmap(-1, self.count * self.slot_bytes, flags=mmap.MAP_SHARED | MAP_NORESERVE)
        self._free = multiprocessing.Queue()
        for slot in range(count):
            self._free.put(slot)
        self._closing = multiprocessing.Event()

    def _acquire(self) -> int | None:
        """A free slot, waiting for one; None once the pool is closing."""
        while not self._closing.is_set():
            with contextlib.suppress(queue.Empty):
                return self._free.get(timeout=self.wait_s)
        return None

    def pack(self, batch: dict) -> dict:
        """Worker side: move the large arrays of ``batch`` into a free slot (in place); returns ``batch``."""
        large = [k for k, v in batch.items() if isinstance(v, np.ndarray) and v.nbytes >= MIN_SHARED_BYTES]
        if not large or large_arrays_nbytes(batch) > self.slot_bytes:
            return batch
        slot = self._acquire()
        if slot is None:
            return batch
        offset = slot * self.slot_bytes
        for key in large:
            array = batch[key]
            np.ndarray(array.shape, array.dtype, buffer=self._buffer, offset=offset)[...] = array
            batch[key] = InSlot(slot, offset, tuple(array.shape), array.dtype.str)
            offset += _aligned(array.nbytes)
        return batch

    def unpack(self, batch: dict) -> dict:
        """Training-process side: copy the arrays out of their slot (in place) and free it; returns ``batch``."""
        slots = set()
        for key, value in batch.items():
            if isinstance(value, InSlot):
                view = np.ndarray(value.shape, np.dtype(value.dtype), buffer=self._buffer, offset=value.offset)
                batch[key] = view.copy()
                slots.add(value.slot)
        for slot in slots:
            self._free.put(slot)
        return batch

    def begin_close(self) -> None:
        """Stop handing out slots: waiting and later workers send their batches pickled."""
        self._closing.set()

    def close(self) -> None:
        """Release the mapping and the free-slot queue (after the workers are gone)."""
        self.begin_close()
        self._free.close()
        with contextlib.suppress(BufferError):  # an array view still alive somewhere; the mapping goes with it
            self._buffer.close()
