"""RequestScope: the one owner of all the work started for a request.

A scope is ambient through a ``ContextVar``: every wrapped call made while it
is current registers with it, in the task or thread that makes the call.
Cancelling the scope aborts every registered call at its socket, refuses new
ones, cancels the body and the children spawned into it, runs the cleanup
hooks, and the report says what that saved.

Body semantics follow ``anyio.CancelScope``: a cancel stops the body at its
next await and is absorbed when the block exits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextvars import ContextVar
from enum import Enum
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, TypeVarTuple

import anyio
import anyio.abc

from ._exceptions import ScopeCancelled, ScopeStateError
from ._loop import LoopHandle
from ._reasons import CancelReason, ReasonCode, coerce_reason
from ._report import CallRecord, ScopeOutcome, ScopeReport, emit
from ._timer import TimerHandle, call_at

logger = logging.getLogger("scoped_clients")

_current: ContextVar[RequestScope | None] = ContextVar("scoped_clients.scope", default=None)
_shielded: ContextVar[RequestScope | None] = ContextVar("scoped_clients.shielded", default=None)
_ids = itertools.count(1)

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")
Hook = Callable[[], object] | Callable[[], Awaitable[object]]


class _Ambient(Enum):
    AMBIENT = "ambient"


_AMBIENT = _Ambient.AMBIENT


class _State(Enum):
    NEW = "new"
    ACTIVE = "active"
    ENDED = "ended"


class Owned(Protocol):
    """What the scope needs from a registered call (HTTP call, tool run...)."""

    def abort(self, reason: CancelReason, *, orphan: bool = False) -> None: ...

    def final_record(self) -> CallRecord | None: ...

    async def aclose_on_exit(self) -> None: ...

    def close_on_exit(self) -> None: ...


def current_scope() -> RequestScope | None:
    """The innermost scope active in this task or thread, or ``None``."""
    return _current.get()


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """Run a block under no scope: work started here is never cancelled nor reported.

    This is the explicit, visible opt-out for work that must outlive the request
    (a cache warm-up, an audit write done in the background).
    """
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


class RequestScope:
    """The owner of every wrapped call made while it is current.

    ``async with RequestScope(name="chat", timeout=30) as scope`` in async code,
    ``with RequestScope()`` in sync code.  ``scope.cancel(reason)`` is safe from
    any task or thread and idempotent.  Cancelling a parent cancels its children,
    never the reverse.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        parent: RequestScope | _Ambient | None = _AMBIENT,
        hook_timeout: float = 5.0,
    ) -> None:
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0 or math.isnan(timeout)):
            raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
        self.name = name
        self.id = next(_ids)
        self._timeout = timeout
        self._own_deadline = deadline
        self._parent_arg = parent
        self._hook_timeout = hook_timeout
        self.parent: RequestScope | None = None
        self._lock = threading.RLock()
        self._state = _State.NEW
        self._is_async = False
        self._cancel_reason: CancelReason | None = None
        self._closed_reason: CancelReason | None = None
        self._calls: dict[int, Owned] = {}
        self._records: list[CallRecord] = []
        self._children: set[RequestScope] = set()
        self._hooks: list[Hook] = []
        self._hooks_done = False
        self._report: ScopeReport | None = None
        self._started_at = 0.0
        self._deadline: float | None = None
        # async state
        self._loop: LoopHandle | None = None
        self._cancel_scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._tg_open = False
        self._deadline_scope: anyio.CancelScope | None = None
        self._timer: TimerHandle | None = None
        self._token: Any = None

    # ------------------------------------------------------------------ state

    @property
    def cancelled(self) -> bool:
        """True once ``cancel()`` took effect (by a call, a timeout or a parent)."""
        return self._cancel_reason is not None

    @property
    def cancel_reason(self) -> CancelReason | None:
        return self._cancel_reason

    @property
    def ended(self) -> bool:
        return self._state is _State.ENDED

    @property
    def report(self) -> ScopeReport | None:
        """The scope's ``ScopeReport``: ``None`` until the block has exited, then final."""
        return self._report

    @property
    def deadline(self) -> float | None:
        """The effective deadline on the ``time.monotonic()`` clock (own or inherited), if any."""
        return self._deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or ``None`` without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else self._state.value
        return f"<RequestScope {self.name!r} #{self.id} {state}>"

    # ---------------------------------------------------------------- cancel

    def cancel(self, reason: str | CancelReason = ReasonCode.CANCELLED, message: str | None = None) -> bool:
        """Cancel the scope; returns True if this call did it, False if it was already cancelled or ended.

        ``reason`` is a code (``"client_disconnected"``, ``"timeout"``, ``"shutdown"``
        or any non-empty string of yours) or a ``CancelReason``.
        """
        why = coerce_reason(reason, message)
        with self._lock:
            if self._state is _State.ENDED or self._cancel_reason is not None:
                return False
            self._cancel_reason = why
            calls = list(self._calls.values())
            children = list(self._children)
            if self._timer is not None:
                self._timer.cancel()
        for call in calls:
            call.abort(why)
        for child in children:
            child.cancel(why)
        if self._is_async and self._loop is not None:
            # The calls are aborted above, at once; the body is cancelled on the loop's next
            # turn, so that a batch of cancels (a server shutting down) shuts every socket
            # down first: anyio's cancel costs more than a socket shutdown.
            self._loop.post(self._cancel_on_loop)
        elif not self._is_async and self._state is _State.ACTIVE:
            self._run_sync_hooks()
        return True

    def _cancel_on_loop(self) -> None:
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()
        if self._tg is not None and self._tg_open and self._hooks:
            try:
                self._tg.start_soon(self._run_async_hooks)
            except RuntimeError:  # the task group is closing: the exit path runs the hooks
                pass

    def check(self) -> None:
        """Raise ``ScopeCancelled`` if the scope was cancelled or has ended."""
        reason = self._cancel_reason or self._closed_reason
        if reason is not None:
            raise ScopeCancelled(reason, self.name)

    # ----------------------------------------------------------------- hooks

    def on_cancel(self, hook: Hook) -> Hook:
        """Register a cleanup hook run once when the scope is cancelled (usable as a decorator).

        Hooks run shielded, each bounded by ``hook_timeout`` seconds (async hooks);
        an error in one is logged and never stops the others.  Sync hooks run inline
        and must not block.  A hook registered after the cancel runs right away.
        """
        if not callable(hook):
            raise TypeError(f"on_cancel() takes a callable, not {type(hook).__name__}")
        with self._lock:
            if self._state is _State.ENDED:
                raise ScopeStateError(f"{self!r} has ended; register on_cancel() hooks inside its block")
            self._hooks.append(hook)
            run_now = self._cancel_reason is not None
        if run_now:
            if self._is_async and self._loop is not None:
                self._loop.run(self._cancel_on_loop)
            else:
                self._run_sync_hooks()
        return hook

    def _take_hooks(self) -> list[Hook]:
        with self._lock:
            hooks, self._hooks = self._hooks, []
            return hooks

    def _run_sync_hooks(self) -> None:
        for hook in self._take_hooks():
            try:
                result = hook()
                if isinstance(result, Awaitable):
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                    logger.error("on_cancel hook %r is async but %r is a sync scope; use a sync hook", hook, self)
            except Exception:
                logger.exception("on_cancel hook %r of %r failed", hook, self)

    async def _run_async_hooks(self) -> None:
        for hook in self._take_hooks():
            with anyio.move_on_after(self._hook_timeout, shield=True) as bound:
                try:
                    result = hook()
                    if isinstance(result, Awaitable):
                        await result
                except Exception:
                    logger.exception("on_cancel hook %r of %r failed", hook, self)
            if bound.cancelled_caught:
                logger.error("on_cancel hook %r of %r did not finish within %ss", hook, self, self._hook_timeout)

    # ------------------------------------------------------------- children

    def spawn(
        self, fn: Callable[[*PosArgsT], Coroutine[Any, Any, Any]], *args: *PosArgsT, name: str | None = None
    ) -> None:
        """Start ``fn(*args)`` as a child task owned by the scope.

        The child is cancelled with the scope and the block does not exit before it
        settles.  Only inside ``async with``.
        """
        with self._lock:
            state = self._state
        if state is _State.NEW:
            raise ScopeStateError(f"spawn() needs an active scope: call it inside `async with {self!r}`")
        if state is _State.ENDED:
            raise ScopeStateError(
                f"{self!r} has ended; spawn() children inside its `async with` block, or open a new scope"
            )
        if not self._is_async or self._tg is None:
            raise ScopeStateError(
                f"spawn() needs an async scope (`async with RequestScope()`); {self!r} was entered with plain `with`"
            )
        if not self._tg_open:
            raise ScopeStateError(f"{self!r} is exiting; spawn() children before its block ends")
        self._tg.start_soon(fn, *args, name=name)

    @contextlib.contextmanager
    def shield(self) -> Iterator[None]:
        """A block that must finish even if the scope is cancelled (an audit write, say).

        Calls made inside it are neither refused nor aborted by this scope, and in
        async code the block is shielded from the cancellation.
        """
        token = _shielded.set(self)
        try:
            if self._is_async:
                with anyio.CancelScope(shield=True):
                    yield
            else:
                yield
        finally:
            _shielded.reset(token)

    # ------------------------------------------------- registration (internal)

    def _admit(self, call: Owned) -> bool:
        """Register an in-flight call; raise ``ScopeCancelled`` if the scope refuses it.

        Returns True if the call is shielded (must not be aborted by this scope).
        """
        shielded = self._is_shielded()
        with self._lock:
            reason = self._cancel_reason or self._closed_reason
            if reason is not None and not shielded:
                raise ScopeCancelled(reason, self.name)
            self._calls[id(call)] = call
        return shielded

    def _is_shielded(self) -> bool:
        shield = _shielded.get()
        scope: RequestScope | None = self
        while shield is not None and scope is not None:
            if scope is shield:
                return True
            scope = scope.parent
        return False

    def _release(self, call: Owned, record: CallRecord | None) -> None:
        """A call finished: unregister it and keep its record (ignored once the report is final)."""
        with self._lock:
            registered = self._calls.pop(id(call), None) is not None
            if registered and record is not None and self._state is not _State.ENDED:
                self._records.append(record)

    def _refused(self, record: CallRecord) -> None:
        with self._lock:
            if self._state is not _State.ENDED:
                self._records.append(record)

    # ---------------------------------------------------------------- enter

    def _enter_common(self, is_async: bool) -> None:
        with self._lock:
            if self._state is not _State.NEW:
                raise ScopeStateError(
                    f"{self!r} has already been entered; a RequestScope is single-use: create a new one per request"
                )
            parent = _current.get() if self._parent_arg is _AMBIENT else self._parent_arg
            if parent is not None and not isinstance(parent, RequestScope):
                raise TypeError(f"parent must be a RequestScope or None, not {type(parent).__name__}")
            self._is_async = is_async
            self._state = _State.ACTIVE
        if parent is not None:
            with parent._lock:
                if parent._state is not _State.ACTIVE:
                    with self._lock:
                        self._state = _State.NEW
                    what = "has already ended" if parent._state is _State.ENDED else "has not been entered yet"
                    raise ScopeStateError(
                        f"cannot nest {self!r} under {parent!r}: the parent {what}. Open the child inside the "
                        f"parent's block, or pass parent=None for an independent scope"
                    )
                parent._children.add(self)
                inherited = parent._cancel_reason
            self.parent = parent
        else:
            inherited = None
        self._started_at = time.monotonic()
        deadlines = [d for d in (self._own_deadline, parent.deadline if parent else None) if d is not None]
        if self._timeout is not None:
            deadlines.append(self._started_at + self._timeout)
        self._deadline = min(deadlines) if deadlines else None
        self._token = _current.set(self)
        if inherited is not None:
            self.cancel(inherited)

    def _timeout_reason(self) -> CancelReason:
        return CancelReason(ReasonCode.TIMEOUT, "the scope's deadline passed")

    def __enter__(self) -> Self:
        self._enter_common(is_async=False)
        if self._deadline is not None and not self.cancelled:
            self._timer = call_at(self._deadline, lambda: self.cancel(self._timeout_reason()))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            if self._timer is not None:
                self._timer.cancel()
            orphans = self._close_registry()
            for call in orphans:
                call.close_on_exit()
            self._record_in_flight(orphans)
            if self.cancelled:
                self._run_sync_hooks()
        finally:
            _current.reset(self._token)
            self._end(exc)
        return self._absorbs(exc)

    async def __aenter__(self) -> Self:
        self._loop = LoopHandle()
        self._enter_common(is_async=True)
        self._cancel_scope = anyio.CancelScope()
        self._cancel_scope.__enter__()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg_open = True
        if self._deadline is not None and not self.cancelled:
            # Created here, entered by the watcher: the exit path can cancel it even if
            # the watcher task has not started yet.
            self._deadline_scope = anyio.CancelScope()
            self._tg.start_soon(self._watch_deadline, self._deadline, self._deadline_scope)
        if self.cancelled:
            self._cancel_on_loop()
        return self

    async def _watch_deadline(self, deadline: float, watch: anyio.CancelScope) -> None:
        with watch:
            await anyio.sleep(max(0.0, deadline - time.monotonic()))
            self.cancel(self._timeout_reason())

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._tg is not None and self._cancel_scope is not None
        outer = exc
        try:
            if self._deadline_scope is not None:
                self._deadline_scope.cancel()
            if exc is not None:  # like a task group: a body that fails or is cancelled cancels its children
                self._tg.cancel_scope.cancel()
            # The body's exception is not handed to the task group, which would wrap it in
            # an ExceptionGroup: a user's `except ValueError` around the block keeps working.
            try:
                await self._tg.__aexit__(None, None, None)
            except BaseException as children:
                outer = (
                    children if exc is None else BaseExceptionGroup("scope body and children failed", [exc, children])
                )
            finally:
                self._tg_open = False
            try:
                tb_out = outer.__traceback__ if outer else None
                if self._cancel_scope.__exit__(type(outer) if outer else None, outer, tb_out):
                    outer = None
            except BaseException as left:
                outer = left
            with anyio.CancelScope(shield=True):
                orphans = self._close_registry()
                for call in orphans:
                    with anyio.move_on_after(self._hook_timeout):
                        await call.aclose_on_exit()
                self._record_in_flight(orphans)
                if self.cancelled:
                    await self._run_async_hooks()
        finally:
            _current.reset(self._token)
            self._end(outer)
        if outer is None or self._absorbs(outer):
            return True
        if outer is exc:
            return False
        raise outer

    # ------------------------------------------------------------------ end

    def _close_registry(self) -> list[Owned]:
        """At exit: abort what is still in flight and hand it back to be closed, then recorded."""
        with self._lock:
            if self._cancel_reason is None:
                self._closed_reason = CancelReason(
                    ReasonCode.SCOPE_CLOSED, "the scope's block ended while the call was still in flight"
                )
            reason = self._cancel_reason or self._closed_reason
            assert reason is not None
            orphans = list(self._calls.values())
        for call in orphans:
            call.abort(reason, orphan=self._cancel_reason is None)
        return orphans

    def _record_in_flight(self, calls: list[Owned]) -> None:
        """After the exit path closed them: record the calls that have not settled by themselves."""
        with self._lock:
            for call in calls:
                if self._calls.pop(id(call), None) is not None and (record := call.final_record()) is not None:
                    self._records.append(record)

    def _end(self, exc: BaseException | None) -> None:
        with self._lock:
            self._state = _State.ENDED
            if self._closed_reason is None and self._cancel_reason is None:
                self._closed_reason = CancelReason(ReasonCode.SCOPE_CLOSED, "the scope has ended")
            records = tuple(self._records)
            self._calls.clear()
            self._hooks.clear()
        if self.parent is not None:
            with self.parent._lock:
                self.parent._children.discard(self)
        self._tg = None
        self._cancel_scope = None
        self._deadline_scope = None
        outcome: ScopeOutcome
        if self._cancel_reason is not None:
            outcome = "cancelled"
        elif exc is not None and not self._absorbs(exc):
            outcome = "failed"
        else:
            outcome = "completed"
        reason = self._cancel_reason
        self._report = ScopeReport(
            scope=self.name,
            scope_id=self.id,
            outcome=outcome,
            cancel_reason=reason.code if reason else None,
            cancel_message=reason.message if reason else None,
            started_at=self._started_at,
            duration=time.monotonic() - self._started_at,
            calls=records,
        )
        emit(self._report)

    def _absorbs(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` is only this scope's (or a descendant's) cancellation."""
        if exc is None:
            return True
        if isinstance(exc, ScopeCancelled):
            return self.cancelled or (self._closed_reason is not None and exc.reason is self._closed_reason)
        if isinstance(exc, BaseExceptionGroup):
            return all(self._absorbs(e) for e in exc.exceptions)
        return False
