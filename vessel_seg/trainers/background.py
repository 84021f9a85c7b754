"""Batches prepared in background worker processes, and how long training waits for them.

:class:`BackgroundBatches` wraps a loader and its transform in batchgenerators'
``NonDetMultiThreadedAugmenter`` (batches in whatever order the workers finish them; the fastest
choice for training), ``MultiThreadedAugmenter`` (``deterministic=True``: a fixed round-robin order,
reproducible with seeds; for validation) or, with ``num_workers=0``, ``SingleThreadedAugmenter``
(in-process, for debugging and tiny machines). Workers hand numpy arrays back: the large ones
through a pool of shared-memory slots (:mod:`vessel_seg.trainers.shared_batches`; receiving a
batch through the queue's pipe costs the training process 10x more CPU), the rest pickled through
the queues; ``data`` and ``target`` become float32 torch tensors here, in the consumer (see
:mod:`vessel_seg.trainers.augmentation` for why).

Every ``next()`` is timed by a :class:`WaitTimer`: the time the consumer spends inside ``next()``
is the time the training loop stalls for data (close to 0 when the workers keep up). The
trainer logs :meth:`BackgroundBatches.pop_mean_wait` once per epoch.

Failure handling, as verified against batchgenerators 0.25.5: a worker that raises prints its
traceback and sets the augmenter's abort flag; a worker that dies without a word (killed by the
out-of-memory killer, a segfault) is noticed by the augmenter's results thread, which polls
``is_alive()`` every ``wait_time`` seconds. Either way the next ``next()`` raises
:class:`DataWorkerError` within a fraction of a second instead of hanging. A worker that is
alive but stuck (deadlocked) cannot be told from a slow one and is not detected.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from vessel_seg.errors import VesselSegError
from vessel_seg.trainers.augmentation import batch_to_tensors
from vessel_seg.trainers.shared_batches import SharedSlots

log = logging.getLogger(__name__)


class DataWorkerError(VesselSegError):
    """A background data-loading worker failed; its traceback, if any, was printed before this."""


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process end when ``parent_pid`` ends, however it ends (SIGKILL included).

    On Linux the kernel sends SIGKILL to the worker when its parent dies (``PR_SET_PDEATHSIG``); if
    the parent is already gone when this runs, the worker exits at once. Elsewhere a daemon thread polls
    the parent id once a second. Without this, workers of a trainer killed by SIGKILL (or by the
    out-of-memory killer) kept running as orphans, 0.5-0.9 GB each.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="vs-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


class _WorkerSetup:
    """Once per worker process, before the first transform: tie the worker's life to the trainer's
    (:func:`die_with_parent`) and seed Python's ``random`` from numpy.

    batchgenerators seeds numpy's global generator in each worker, but its Gaussian noise draws
    the variance from Python's ``random``, which workers reseed from entropy after the fork; without
    the seeding, seeded workers would not reproduce their batches.
    """

    def __init__(self, transform: Callable | None):
        self.transform = transform
        self.slots: SharedSlots | None = None  # set before the workers start: large arrays go there
        self._seeded_pid: int | None = None
        self._parent_pid = os.getpid()  # built in the training process, called in its workers

    def __call__(self, **batch):
        if self._seeded_pid != os.getpid():
            self._seeded_pid = os.getpid()
            if os.getpid() != self._parent_pid:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the trainer's stop request, inherited by fork
                die_with_parent(self._parent_pid)
            random.seed(int(np.random.randint(2**31)))
        batch = self.transform(**batch) if self.transform is not None else batch
        return self.slots.pack(batch) if self.slots is not None else batch


class WaitTimer:
    """Accumulates the seconds spent waiting for batches.

    ``mean`` is the mean wait per recorded batch in seconds (0 when nothing was recorded);
    ``total`` the sum and ``count`` the number of batches since the last :meth:`reset`.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def record(self, seconds: float) -> None:
        self.total += max(0.0, seconds)
        self.count += 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0

    def timed_next(self, iterator: Iterator):
        """``next(iterator)``, recording the time spent inside it."""
        start = time.perf_counter()
        try:
            return next(iterator)
        finally:
            self.record(time.perf_counter() - start)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (often the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class _StopSurvivorsOnFailure:
    """Shutdown that does not wait for workers stuck behind a dead one.

    A worker killed while putting a batch can leave the shared queue locked; the survivors then never
    exit by themselves and batchgenerators' graceful shutdown waits its full timeout (10 s) before it
    terminates them. Once any worker has exited, stop the others right away.
    """

    _processes: list

    def _finish(self, timeout: float = 10, force: bool = False) -> None:
        if any(p.exitcode is not None for p in self._processes):
            for process in self._processes:
                if process.is_alive():
                    process.terminate()
            for process in self._processes:
                process.join(timeout=1.0)
            self._abandon_queues()
        super()._finish(timeout=timeout, force=force)

    def _abandon_queues(self) -> None:
        """Close the worker queues without reading them: a worker killed halfway through a put leaves a truncated
        message in the pipe, and draining it (batchgenerators' shutdown does) blocks forever on the missing bytes
        (seen: a trainer whose workers were all killed by SIGTERM hung in that read)."""
        queues = [q for q in [getattr(self, "_queue", None), *getattr(self, "_queues", [])] if q is not None]
        for queue in queues:
            with contextlib.suppress(Exception):
                queue.cancel_join_thread()
                queue.close()
        if getattr(self, "_queue", None) is not None:
            self._queue = None
        if getattr(self, "_queues", None):
            self._queues = []


class _OrderedAugmenter(_StopSurvivorsOnFailure, MultiThreadedAugmenter):
    pass


class _UnorderedAugmenter(_StopSurvivorsOnFailure, NonDetMultiThreadedAugmenter):
    pass


class BackgroundBatches:
    """Iterator over transformed batches produced by ``num_workers`` background processes.

    Parameters
    ----------
    loader : iterator
        An infinite batchgenerators loader such as
        :class:`~vessel_seg.trainers.dataloading.PatchLoader`.
    transform : callable, optional
        ``transform(**batch) -> batch``, for example ``Augmentation.transform``.
    num_workers : int
        Worker processes; 0 runs loader and transform in the calling process.
    to_tensors : bool
        Return ``data`` and ``target`` as float32 torch tensors (:func:`batch_to_tensors`),
        converted here in the consumer, not in the workers.
    pin_memory : bool
        Pin those tensors in page-locked memory for faster copies to a CUDA device (ignored
        without CUDA).
    num_cached : int, optional
        Batches buffered in total (default: ``max(6, num_workers)``).
    seed : int, optional
        Seeds worker ``i`` with ``seed + i`` (the numpy, Python and, without ``deterministic``,
        torch global generators, which the transforms use). None seeds workers from entropy. With
        ``num_workers=0`` it is ignored: global seeding of the calling process is the caller's.
    deterministic : bool
        Use the ordered ``MultiThreadedAugmenter``: with ``seed`` (and a seeded loader) the batch
        sequence is reproducible.
    wait_time : float
        Polling interval of the augmenter's queues, in seconds; keep it well below one iteration.
    shared_memory : bool
        Pass large arrays through shared-memory slots (unordered augmenter, where workers are
        forked); False sends whole batches through the queues' pipes.

    Use as a context manager, or call :meth:`close` to stop the workers.
    """

    def __init__(
        self,
        loader: Iterator,
        transform: Callable | None,
        num_workers: int,
        *,
        to_tensors: bool = True,
        pin_memory: bool = False,
        num_cached: int | None = None,
        seed: int | None = None,
        deterministic: bool = False,
        wait_time: float = 0.02,
        shared_memory: bool = True,
    ):
        if num_workers < 0:
            raise VesselSegError(f"num_workers must be 0 or more, got {num_workers}")
        self.num_workers = num_workers
        self.to_tensors = to_tensors
        self.pin_memory = pin_memory
        self.timer = WaitTimer()
        self._processes: list = []
        self._closed = False
        seeds: Sequence[int] | None = None if seed is None else [seed + i for i in range(num_workers)]
        self._slots: SharedSlots | None = None
        # Slots: every batch queued (at most the cache), one per worker (being put), one in transit, one spare.
        # Unordered only: in round-robin order a worker waiting for a slot held by batches queued behind it
        # would wait forever.
        wanted = max(num_cached or max(6, num_workers), num_workers) + num_workers + 2
        self._slots_wanted = wanted if shared_memory and not deterministic else 0
        if num_workers:
            transform = self._wrapped = _WorkerSetup(transform)
        if num_workers == 0:
            self._augmenter = SingleThreadedAugmenter(loader, transform)
        elif deterministic:
            per_queue = max(1, (num_cached or max(6, num_workers)) // num_workers)
            self._augmenter = _OrderedAugmenter(
                loader, transform, num_workers, num_cached_per_queue=per_queue, seeds=seeds, wait_time=wait_time,
            )
        else:
            self._augmenter = _UnorderedAugmenter(
                loader, transform, num_workers, num_cached=num_cached or max(6, num_workers), seeds=seeds,
                wait_time=wait_time,
            )

    def start(self) -> BackgroundBatches:
        """Start the workers now (otherwise the first ``next()`` does)."""
        if self.num_workers and not self._processes and not self._closed:
            if self._slots_wanted:  # created before the fork, so that workers inherit it
                self._slots = self._wrapped.slots = SharedSlots.create(self._slots_wanted)
            self._augmenter._start()
            # the augmenter forgets its processes when it aborts; keep them to report how they ended
            self._processes = list(self._augmenter._processes)
            log.debug("started %d data workers: pids %s", self.num_workers, [p.pid for p in self._processes])
        return self

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    def __iter__(self) -> BackgroundBatches:
        return self

    def __next__(self) -> dict:
        if self._closed:
            raise RuntimeError("the background batch iterator was closed; create a new one")
        self.start()
        # Checked on every batch: batchgenerators notices a dead worker only once the surviving
        # workers stop filling the queue, which can take many batches.
        if any(p.exitcode is not None for p in self._processes):
            self._raise_worker_failure(None)
        start = time.perf_counter()
        try:
            batch = next(self._augmenter)
            if self._slots is not None:
                batch = self._slots.unpack(batch)
            return batch_to_tensors(batch, self.pin_memory) if self.to_tensors else batch
        except RuntimeError as exc:
            if "no longer alive" not in str(exc):
                raise
            self._raise_worker_failure(exc)
        finally:
            self.timer.record(time.perf_counter() - start)

    def _raise_worker_failure(self, cause: BaseException | None) -> None:
        states = ", ".join(f"worker {i}: {_describe_exit(p.exitcode)}" for i, p in enumerate(self._processes))
        self.close()  # stops the surviving workers at once (see _StopSurvivorsOnFailure)
        raise DataWorkerError(
            f"a data-loading worker failed ({states}); see the worker traceback printed above, "
            "or use fewer workers / a smaller patch if it ran out of memory"
        ) from cause

    def pop_mean_wait(self) -> float:
        """Mean seconds waited per batch since the last call, then reset the timer."""
        mean = self.timer.mean
        self.timer.reset()
        return mean

    def close(self) -> None:
        """Stop the workers and release their queues (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._slots is not None:
            self._slots.begin_close()  # workers waiting for a slot give up instead of blocking the shutdown
        if self.num_workers:
            self._augmenter._finish()
        if self._slots is not None:
            self._slots.close()
            self._slots = None
        self._processes = []

    def __enter__(self) -> BackgroundBatches:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        # interpreter shutdown may have torn down multiprocessing already
        with contextlib.suppress(Exception):
            self.close()
