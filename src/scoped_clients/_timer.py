"""One daemon thread that fires the deadlines of sync scopes.

A ``threading.Timer`` per scope would cost a thread per in-flight request;
this keeps one heap and one thread for the whole process.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


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
        handle = TimerHandle()
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), handle, fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scoped_clients-timers", daemon=True)
                self._thread.start()
            self._cond.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                when = self._heap[0][0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                _, _, handle, fn = heapq.heappop(self._heap)
            if not handle.cancelled:
                try:
                    fn()
                except Exception:  # a deadline callback must never kill the timer thread
                    import logging

                    logging.getLogger("scoped_clients").exception("scoped_clients timer callback failed")


_timers = _TimerThread()


def call_at(when: float, fn: Callable[[], object]) -> TimerHandle:
    """Call ``fn()`` on the timer thread at ``time.monotonic() >= when``."""
    return _timers.call_at(when, fn)
