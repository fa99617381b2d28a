"""One daemon thread that fires the deadlines of sync scopes (and of async ones on trio).

A ``threading.Timer`` per scope would cost a thread per in-flight request;
this keeps one heap and one thread for the whole process.

The thread is shared by every sync scope in the process, so nothing may kill
it: deadlines are checked when they are scheduled (finite numbers only), a
wait never exceeds ``threading.TIMEOUT_MAX`` (``Condition.wait`` raises
``OverflowError`` beyond it), and an unexpected error in the loop is logged
and the loop goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("scoped_clients")

# A far deadline is waited for in slices: one wake-up a day costs nothing.
_MAX_WAIT = min(threading.TIMEOUT_MAX, 86400.0)
#: the smallest heap that is compacted (cancelled entries dropped) when it grows to that size
_COMPACT_MIN = 1024


class TimerHandle:
    """A pending call; ``cancel()`` drops the callback at once (and what it holds: a scope and its records),
    while the heap keeps only this handle until the thread gets to it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], object]) -> None:
        #: ``None`` once cancelled or run
        self.fn: Callable[[], object] | None = fn

    def cancel(self) -> None:
        self.fn = None


class _TimerThread:
    """The heap and its thread. The thread wakes for a due entry, or for a new one due before its wake-up:
    not once per scope. A cancelled entry has no wake-up of its own; it is dropped whenever the thread is
    up, and the heap is compacted as it grows, so scopes of one timeout (each due after the one before)
    add nothing but a push (a wake-up is a GIL hand-over with the thread that pushed: 1 ms of its CPU on
    a busy loop, measured in issue 23)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        #: when the waiting thread looks at the heap next (``inf``: on a notify only; ``-inf``: it is up)
        self._wake_at = -math.inf
        #: the heap's size at which cancelled entries are dropped from it
        self._compact_at = _COMPACT_MIN

    def call_at(self, when: float, fn: Callable[[], object]) -> TimerHandle:
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
            raise ValueError(f"a timer needs a finite time.monotonic() value, got {when!r}")
        handle = TimerHandle(fn)
        when = float(when)
        with self._cond:
            heap = self._heap
            if len(heap) >= self._compact_at:
                heap[:] = [entry for entry in heap if entry[2].fn is not None]
                heapq.heapify(heap)
                self._compact_at = max(_COMPACT_MIN, 2 * len(heap))
            heapq.heappush(heap, (when, next(self._seq), handle))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="scoped_clients-timers", daemon=True)
                self._thread.start()
            if when < self._wake_at:
                self._wake_at = -math.inf
                self._cond.notify()
        return handle

    def _run(self) -> None:
        while True:
            try:
                self._step()
            except Exception:  # never let one bad entry stop every other scope's deadline
                logger.exception("scoped_clients timer thread: unexpected error (the thread carries on)")

    def _step(self) -> None:
        with self._cond:
            heap, now = self._heap, time.monotonic()
            horizon = -math.inf  # the latest cancelled entry dropped
            while heap and heap[0][2].fn is None:
                horizon = heapq.heappop(heap)[0]
            if heap and heap[0][0] <= now:
                handle = heapq.heappop(heap)[2]
            else:
                # Until the first live entry is due; with none left, until the last cancelled one would
                # have been (the next scope's entry, due later, then wakes nobody); else on a notify.
                wake_at = heap[0][0] if heap else (horizon if horizon > now else math.inf)
                self._wake_at = wake_at
                self._cond.wait(None if wake_at == math.inf else min(wake_at - now, _MAX_WAIT))
                self._wake_at = -math.inf
                return
        fn = handle.fn
        if fn is not None:
            handle.fn = None
            try:
                fn()
            except Exception:  # a deadline callback must never kill the timer thread
                logger.exception("scoped_clients timer callback failed")

    def _after_fork_in_child(self) -> None:
        """A forked child (Celery's prefork pool) has none of the parent's threads, and the lock may have been
        held by one of them at the fork: a fresh lock and no thread (the next ``call_at`` starts one). And none
        of the parent's deadlines: their scopes are the parent's, their calls' sockets shared with it (one fired
        here would shut the parent's connections down), and the heap may have been mid-compaction."""
        self._cond = threading.Condition()
        self._thread = None
        self._wake_at = -math.inf
        self._heap = []
        self._compact_at = _COMPACT_MIN


_timers = _TimerThread()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_timers._after_fork_in_child)


def call_at(when: float, fn: Callable[[], object]) -> TimerHandle:
    """Call ``fn()`` on the timer thread at ``time.monotonic() >= when`` (``when`` must be finite)."""
    return _timers.call_at(when, fn)
