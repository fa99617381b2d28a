"""One daemon thread that fires the deadlines of sync scopes.

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
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("scoped_clients")

# A far deadline is waited for in slices: one wake-up a day costs nothing.
_MAX_WAIT = min(threading.TIMEOUT_MAX, 86400.0)


class TimerHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _TimerThread:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle, Callable[[], object]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, fn: Callable[[], object]) -> TimerHandle:
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
            raise ValueError(f"a timer needs a finite time.monotonic() value, got {when!r}")
        handle = TimerHandle()
        with self._cond:
            heapq.heappush(self._heap, (float(when), next(self._seq), handle, fn))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="scoped_clients-timers", daemon=True)
                self._thread.start()
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
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            if not self._heap:
                self._cond.wait()
                return
            delay = self._heap[0][0] - time.monotonic()
            if delay > 0:
                self._cond.wait(min(delay, _MAX_WAIT))
                return
            _, _, handle, fn = heapq.heappop(self._heap)
        if not handle.cancelled:
            try:
                fn()
            except Exception:  # a deadline callback must never kill the timer thread
                logger.exception("scoped_clients timer callback failed")


_timers = _TimerThread()


def call_at(when: float, fn: Callable[[], object]) -> TimerHandle:
    """Call ``fn()`` on the timer thread at ``time.monotonic() >= when`` (``when`` must be finite)."""
    return _timers.call_at(when, fn)
