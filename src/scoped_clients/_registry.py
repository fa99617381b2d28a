"""The scope's plumbing for what it owns: the calls in flight and their records.

``RequestScope`` (``_scope``) is what users hold: a context manager with a
state, a cancel, hooks and children.  What it owns lives here, apart from it,
the way trio keeps its ``CancelStatus`` apart from the ``CancelScope`` users see:

* ``Owned``: what the scope needs from a thing it owns (an HTTP call, a tool
  run, a retry's backoff): ``abort`` it, its ``final_record``, close it at exit;
* ``CallRegistry``: the owner's side of the contract: ``admit`` a call (or
  refuse it when the scope is cancelled), ``release`` it with its record,
  ``refuse`` (record a refused call), and ``loop``, the event loop the scope's
  async state lives on;
* ``join``: the admit-or-refuse steps every owner takes, written once.

An owner gets its scope's registry with ``registry(scope)`` (``_scope``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ._exceptions import ScopeCancelled
from ._loop import LoopHandle
from ._reasons import CancelReason
from ._report import CallRecord

if TYPE_CHECKING:
    from ._scope import RequestScope


class Owned(Protocol):
    """What the scope needs from a registered call (HTTP call, tool run, retry wait)."""

    def abort(self, reason: CancelReason, *, orphan: bool = False) -> None: ...

    def final_record(self) -> CallRecord | None: ...

    async def aclose_on_exit(self) -> None: ...

    def close_on_exit(self) -> None: ...


class CallRegistry:
    """The calls a scope owns while they run, and the records of those that ended.

    It shares the scope's lock: a call is admitted, or refused, atomically with
    respect to the cancel that aborts every admitted call.  It refers to its scope
    weakly: a scope is freed as soon as nobody holds it, never left to the cycle
    collector with whatever its calls still reference.
    """

    __slots__ = ("_calls", "_is_shielded", "_lock", "_records", "_scope", "_sealed", "loop")

    def __init__(self, scope: RequestScope, lock: threading.RLock, is_shielded: Callable[[RequestScope], bool]) -> None:
        self._scope = weakref.ref(scope)
        self._lock = lock
        self._is_shielded = is_shielded
        self._calls: dict[int, Owned] = {}
        self._records: list[CallRecord] = []
        self._sealed = False
        #: the loop the scope's async state lives on (``None`` for a sync scope)
        self.loop: LoopHandle | None = None

    def admit(self, call: Owned) -> bool:
        """Register an in-flight call; raise ``ScopeCancelled`` if the scope refuses it.

        Returns True if the call is shielded (must not be aborted by this scope).
        """
        scope = self._scope()
        assert scope is not None, "a call is admitted by a scope someone holds"
        shielded = self._is_shielded(scope)
        with self._lock:
            if not shielded:
                scope.check()  # a cancelled or ended scope refuses it
            self._calls[id(call)] = call
        return shielded

    def release(self, call: Owned, record: CallRecord | None) -> None:
        """A call finished: unregister it and keep its record (ignored once the report is final)."""
        with self._lock:
            registered = self._calls.pop(id(call), None) is not None
            if registered and record is not None and not self._sealed:
                self._records.append(record)

    def refuse(self, record: CallRecord) -> None:
        """Keep the record of a call the scope refused."""
        with self._lock:
            if not self._sealed:
                self._records.append(record)

    # ------------------------------------------------------- the scope's side

    def in_flight(self) -> list[Owned]:
        """The calls registered now (to abort them)."""
        with self._lock:
            return list(self._calls.values())

    def in_flight_held(self) -> list[Owned]:
        """``in_flight()`` for a caller that holds the scope's lock already (``cancel()``)."""
        return list(self._calls.values())

    def record_in_flight(self, calls: list[Owned]) -> None:
        """At exit, once they were closed: record the calls that have not settled by themselves."""
        if not calls:
            return
        with self._lock:
            for call in calls:
                if self._calls.pop(id(call), None) is not None and (record := call.final_record()) is not None:
                    self._records.append(record)

    def seal(self) -> tuple[CallRecord, ...]:
        """The scope has ended: the final records; later releases are ignored."""
        with self._lock:
            self._sealed = True
            self._calls.clear()
            return tuple(self._records)


def join(registry: CallRegistry, call: Owned, refused: Callable[[CancelReason], CallRecord | None]) -> bool:
    """Admit ``call``, or, when the scope refuses it, record ``refused(reason)`` (if a record) and re-raise.

    Returns True if the call is shielded from the scope's cancel.
    """
    try:
        return registry.admit(call)
    except ScopeCancelled as refusal:
        record = refused(refusal.reason)
        if record is not None:
            registry.refuse(record)
        raise
