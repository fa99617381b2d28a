"""Cancel a scope by its id: the process-local half of every cancel bus.

A scope joins a bus when it is opened with ``RequestScope(id=..., bus=bus)``
(``ScopeMiddleware(app, bus=bus)`` does it for each request) and leaves it when
its block ends.  ``await bus.cancel(scope_id, reason)`` cancels every open scope
with that id.  ``LocalCancelBus`` reaches the scopes of this process only: a
cancel endpoint in the same process, a test.  ``scoped_clients.redis.RedisCancelBus``
builds on it to reach every process sharing one Redis.

Races, both ways:

- a cancel for an id no open scope has is kept ``pending_ttl`` seconds (at most
  ``max_pending`` of them, the oldest dropped first) and applied the moment a
  scope with that id opens: the "Stop" click that beats the request to its
  replica, the job cancelled while it waits in the queue;
- a cancel for an id whose scope has already ended is a no-op: the id is
  remembered as ended for the same ``pending_ttl``, so a late cancel is not
  kept to hit a later scope that happens to reuse it (a job's retry).

Everything here is thread-safe and loop-agnostic (``RequestScope.cancel`` is):
scopes of asyncio, Trio and sync code, in any thread, share one bus.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from ._reasons import CancelReason, ReasonCode, coerce_reason

if TYPE_CHECKING:
    from ._scope import RequestScope

__all__ = [
    "MAX_ID_LENGTH",
    "CancelBus",
    "LocalCancelBus",
    "check_bus",
    "check_scope_id",
    "new_scope_id",
    "valid_scope_id",
]

#: longest scope id accepted (characters): ids travel in HTTP headers and Redis messages
MAX_ID_LENGTH = 128

V = TypeVar("V")


def new_scope_id() -> str:
    """A fresh, unguessable scope id: 32 hex digits, 128 random bits (``os.urandom``; a quarter of
    ``uuid4().hex``'s cost, paid by every scope)."""
    return os.urandom(16).hex()


def valid_scope_id(value: object) -> bool:
    """Whether ``value`` can be a scope id: a str of 1-128 visible ASCII characters (no spaces)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def check_scope_id(value: object, what: str = "id") -> str:
    if not valid_scope_id(value):
        raise ValueError(
            f"{what} must be a str of 1 to {MAX_ID_LENGTH} visible ASCII characters without spaces (it travels "
            f"in HTTP headers and bus messages), got {value!r}; leave it out for an unguessable random id"
        )
    assert isinstance(value, str)
    return value


def check_bus(bus: object, what: str, *, needs: tuple[str, ...] = ("join", "cancel")) -> None:
    """Raise a ``TypeError`` saying what to pass unless ``bus`` is ``None`` or has the methods ``needs``."""
    if bus is None or all(callable(getattr(bus, name, None)) for name in needs):
        return
    methods = ", ".join(f"{name}()" for name in needs)
    raise TypeError(
        f"{what} takes a cancel bus with {methods} (scoped_clients.LocalCancelBus, "
        f"scoped_clients.redis.RedisCancelBus) or None, not {type(bus).__name__}: {bus!r}"
    )


@runtime_checkable
class CancelBus(Protocol):
    """What ``RequestScope(bus=...)`` and ``ScopeMiddleware(bus=...)`` need of a bus."""

    def join(self, scope: RequestScope) -> Callable[[], None]:
        """Called as ``scope`` (a ``RequestScope``) opens, in any thread; returns the function called as it ends."""
        ...

    async def cancel(
        self, scope_id: str, reason: str | CancelReason = ReasonCode.CANCELLED, message: str | None = None
    ) -> int:
        """Cancel the scopes with that id; returns how many this process cancelled at once.

        Args:
            scope_id: the id of the scopes to cancel (``RequestScope(id=...)``, the ``x-request-id``, a job id).
            reason: a reason code (an identifier, such as ``"user_stopped"``) or a ``CancelReason``.
            message: a human-readable message kept with the reason (ignored with a ``CancelReason``).
        """
        ...


class LocalCancelBus:
    """A cancel bus for the scopes of this process.

    ``pending_ttl``: seconds a cancel for a scope that has not opened yet is kept
    (and an ended id remembered); ``max_pending``: how many such cancels are kept at
    most.  Both bound the memory a flood of cancels for unknown ids can take.
    """

    def __init__(self, *, pending_ttl: float = 60.0, max_pending: int = 10_000) -> None:
        if isinstance(pending_ttl, bool) or not isinstance(pending_ttl, int | float) or not pending_ttl >= 0:
            raise ValueError(f"pending_ttl is a number of seconds >= 0, got {pending_ttl!r}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 0:
            raise ValueError(f"max_pending is an int >= 0, got {max_pending!r}")
        self.pending_ttl = float(pending_ttl)
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._scopes: dict[str, list[RequestScope]] = {}
        # id -> (reason, expires at): cancels that came before their scope
        self._pending: OrderedDict[str, tuple[CancelReason, float]] = OrderedDict()
        # id -> expires at: scopes that ended (a cancel for them is a no-op)
        self._ended: OrderedDict[str, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} scopes={len(self._scopes)} pending={len(self._pending)}>"

    # ----------------------------------------------------------------- scopes

    def join(self, scope: RequestScope) -> Callable[[], None]:
        """Add ``scope`` (opening, in any thread) to the bus; returns the function that removes it.

        A cancel kept pending for its id is applied at once.
        """
        scope_id = scope.id
        now = time.monotonic()
        with self._lock:
            self._scopes.setdefault(scope_id, []).append(scope)
            self._ended.pop(scope_id, None)
            pending = self._pending.get(scope_id)
            if pending is not None and pending[1] <= now:
                del self._pending[scope_id]
                pending = None
        self._joined(scope_id)
        if pending is not None:
            scope.cancel(pending[0])

        def leave() -> None:
            with self._lock:
                scopes = self._scopes.get(scope_id)
                if scopes is not None and scope in scopes:
                    scopes.remove(scope)
                    if not scopes:
                        del self._scopes[scope_id]
                        self._remember(self._ended, scope_id, time.monotonic() + self.pending_ttl)
                        self._pending.pop(scope_id, None)
            self._left(scope_id)

        return leave

    def _joined(self, scope_id: str) -> None:
        """Hook for subclasses: a scope with this id opened in this process."""

    def _left(self, scope_id: str) -> None:
        """Hook for subclasses: a scope with this id ended in this process."""

    def scopes(self, scope_id: str) -> list[RequestScope]:
        """The open scopes of this process whose id is ``scope_id``."""
        with self._lock:
            return list(self._scopes.get(scope_id, ()))

    # ----------------------------------------------------------------- cancel

    async def cancel(
        self, scope_id: str, reason: str | CancelReason = ReasonCode.CANCELLED, message: str | None = None
    ) -> int:
        """Cancel the scopes of this process with that id; returns how many it cancelled.

        None open: the cancel is kept for ``pending_ttl`` seconds and applied when
        one opens, unless a scope with that id has already ended here.

        Args:
            scope_id: the id of the scopes to cancel (``RequestScope(id=...)``, the ``x-request-id``, a job id).
            reason: a reason code (an identifier, such as ``"user_stopped"``) or a ``CancelReason``.
            message: a human-readable message kept with the reason (ignored with a ``CancelReason``).
        """
        return self.cancel_local(scope_id, coerce_reason(reason, message))

    def cancel_sync(
        self, scope_id: str, reason: str | CancelReason = ReasonCode.CANCELLED, message: str | None = None
    ) -> int:
        """``cancel`` for sync code (any thread).

        Args:
            scope_id: the id of the scopes to cancel (``RequestScope(id=...)``, the ``x-request-id``, a job id).
            reason: a reason code (an identifier, such as ``"user_stopped"``) or a ``CancelReason``.
            message: a human-readable message kept with the reason (ignored with a ``CancelReason``).
        """
        return self.cancel_local(scope_id, coerce_reason(reason, message))

    def cancel_local(self, scope_id: str, reason: CancelReason) -> int:
        """Cancel this process's scopes whose id is ``scope_id`` with ``reason`` (a ``CancelReason``), or
        keep the cancel pending; returns how many."""
        if not valid_scope_id(scope_id):
            return 0  # nobody can hold such an id: nothing to cancel or keep
        now = time.monotonic()
        with self._lock:
            scopes = list(self._scopes.get(scope_id, ()))
            if not scopes:
                self._expire(now)
                if scope_id not in self._ended:
                    self._remember(self._pending, scope_id, (reason, now + self.pending_ttl))
                return 0
        return sum(scope.cancel(reason) for scope in scopes)

    def _remember(self, table: OrderedDict[str, V], key: str, value: V) -> None:
        # under self._lock
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_pending:
            table.popitem(last=False)

    def _expire(self, now: float) -> None:
        # under self._lock; entries are in expiry order (same ttl, appended in time order)
        while self._pending and next(iter(self._pending.values()))[1] <= now:
            self._pending.popitem(last=False)
        while self._ended and next(iter(self._ended.values())) <= now:
            self._ended.popitem(last=False)


class LazyLocalBus:
    """A module's default bus: a ``LocalCancelBus`` made on the first call, the same one after (thread-safe)."""

    def __init__(self) -> None:
        self._bus: LocalCancelBus | None = None
        self._lock = threading.Lock()

    def __call__(self) -> LocalCancelBus:
        with self._lock:
            if self._bus is None:
                self._bus = LocalCancelBus()
            return self._bus
