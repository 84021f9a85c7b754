"""Overlapping the file I/O of a sequence of cases with their computation.

``vs_predict`` on a folder reads case k+1 and writes case k-1 while case k is predicted, so a GPU
does not wait for gzip, ITK or postprocessing. :func:`run_overlapped` does this for any three
stages with two threads and bounded hand-overs: memory holds at most one case being read ahead,
one being computed and one being stored. The outcome equals the sequential run's, errors included.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")


def run_overlapped(
    items: Sequence[Item],
    load: Callable[[Item], Any],
    compute: Callable[[Item, Any], Any],
    store: Callable[[Item, Any], None],
    overlap: bool = True,
) -> None:
    """``store(item, compute(item, load(item)))`` for each item, in order.

    With ``overlap``, ``load`` runs in a reader thread one item ahead and ``store`` in a writer
    thread one item behind; ``compute`` stays in the calling thread (the one driving the GPU).
    Without it the three stages run one after the other in the calling thread.

    Errors surface as in the sequential run: every item before the first failure (in item order,
    and load -> compute -> store within an item) is stored, nothing after it is, and the failure's
    own exception (type and message unchanged) is raised in the calling thread once the threads
    have finished. A later item may have been loaded or computed in vain, never stored.
    """
    if not overlap:
        for item in items:
            store(item, compute(item, load(item)))
        return
    reader, writer = _Reader(items, load), _Writer(store)
    try:
        for item in items:
            loaded = reader.next()
            result = compute(item, loaded)
            del loaded
            writer.submit(item, result)  # raises an earlier item's store error instead
            del result
    finally:
        reader.stop()
        writer.finish()  # raises a pending store error: that item came before any error raised above


class _Reader:
    """Loads items in a thread, at most one ahead of the consumer; errors are handed over in order."""

    def __init__(self, items: Sequence[Any], load: Callable[[Any], Any]):
        self._items, self._load = items, load
        self._ready: queue.Queue = queue.Queue()
        self._slot = threading.Semaphore(1)  # taken per load, given back when the consumer takes it
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vs-case-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for item in self._items:
            self._slot.acquire()
            if self._stopping.is_set():
                return
            try:
                self._ready.put((self._load(item), None))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
                self._ready.put((None, exc))
                return

    def next(self) -> Any:
        """The next item's loaded value, or its load error raised here."""
        loaded, error = self._ready.get()
        self._slot.release()
        if error is not None:
            raise error
        return loaded

    def stop(self) -> None:
        """Stop after the load in progress (if any) and wait for the thread."""
        self._stopping.set()
        self._slot.release()
        self._thread.join()


class _Writer:
    """Stores results in a thread, one at a time; the first error stops it and is raised once."""

    def __init__(self, store: Callable[[Any, Any], None]):
        self._store = store
        self._jobs: queue.Queue = queue.Queue()
        self._idle = threading.Semaphore(1)  # one result handed over at a time
        self._error: BaseException | None = None  # raised once, in the calling thread
        self._failed = False  # once set, later results are dropped unstored
        self._thread = threading.Thread(target=self._run, name="vs-case-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if not self._failed:
                    self._store(*job)
            except Exception as exc:  # noqa: BLE001 - raised in the calling thread
                self._error, self._failed = exc, True
            finally:
                job = None  # drop the result before waiting for the next one
                self._idle.release()

    def submit(self, item: Any, result: Any) -> None:
        """Hand over a result once the previous one is stored; raises that one's error instead."""
        self._idle.acquire()
        self._raise_error()
        self._jobs.put((item, result))

    def finish(self) -> None:
        """Wait until every handed-over result is stored; raise a store error not raised yet."""
        self._jobs.put(None)
        self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error
