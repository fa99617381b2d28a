"""RequestScope: the one owner of all the work started for a request.

A scope is ambient through a ``ContextVar``: every wrapped call made while it
is current registers with it, in the task or thread that makes the call.
Cancelling the scope aborts every registered call at its socket, refuses new
ones, cancels the body and the children spawned into it, runs the cleanup
hooks, and the report says what that saved.

Body semantics follow ``anyio.CancelScope``: a cancel stops the body at its
next await and is absorbed when the block exits.

This module is the context manager users hold, and only that: one class,
``RequestScope``, whose state machine (enter, cancel, exit, for sync and async
blocks, with children, shields and deadlines) is one job and reads best in one
place, which is why it runs past 500 lines.  Its plumbing lives apart, as trio
keeps ``CancelStatus`` apart from ``CancelScope``: the calls it owns and their
records in ``_registry`` (the contract HTTP calls, tools and retries use), its
``on_cancel`` hooks in ``_hooks``, the sync deadline timer in ``_timer``, the
argument checks in ``_checks`` and bus membership in ``_bus``.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextvars import ContextVar
from enum import Enum
from types import TracebackType
from typing import Any, Self, TypeVar, TypeVarTuple

import anyio
import anyio.abc
import sniffio

from ._bus import CancelBus, check_bus, check_scope_id, new_scope_id
from ._checks import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from ._checks import check_deadline, check_name, check_timeout, seconds
from ._exceptions import ScopeCancelled, ScopeStateError
from ._hooks import NO_HOOKS, Hook, Hooks, NoHooks
from ._loop import Cancellable, LoopHandle, group_has_tasks
from ._reasons import CancelReason, ReasonCode, coerce_reason
from ._registry import CallRegistry, Owned
from ._report import CallRecord, ScopeOutcome, ScopeReport, emit, reporting
from ._timer import TimerHandle, call_at

logger = logging.getLogger("scoped_clients")

_current: ContextVar[RequestScope | None] = ContextVar("scoped_clients.scope", default=None)
_shielded: ContextVar[RequestScope | None] = ContextVar("scoped_clients.shielded", default=None)

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")


class _Ambient(Enum):
    AMBIENT = "ambient"


_AMBIENT = _Ambient.AMBIENT
#: the default ``hook_timeout`` (seconds)
_HOOK_TIMEOUT = 5.0


class _State(Enum):
    NEW = "new"
    ACTIVE = "active"
    ENDED = "ended"


def registry(scope: RequestScope) -> CallRegistry:
    """What ``scope`` owns: where HTTP calls, tool runs and retry waits are admitted and released."""
    return scope._registry


def current_scope() -> RequestScope | None:
    """The innermost scope active in this task or thread, or ``None``."""
    return _current.get()


class _Detached:
    """What ``detached()`` returns: a single-use ``with`` / ``async with`` block under no scope."""

    __slots__ = ("_token",)

    def __init__(self) -> None:
        self._token: Any = None

    def __enter__(self) -> None:
        if self._token is not None:
            raise ScopeStateError("a detached() block is single-use: write `with detached():` at each use")
        self._token = _current.set(None)

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()


def detached() -> _Detached:
    """Run a block under no scope: work started here is never cancelled nor reported.

    This is the explicit, visible opt-out for work that must outlive the request
    (a cache warm-up, an audit write done in the background).  ``with detached():``
    or ``async with detached():``; it takes no arguments.
    """
    return _Detached()


class RequestScope:
    """The owner of every wrapped call made while it is current.

    ``async with RequestScope(name="chat", timeout=30) as scope`` in async code,
    ``with RequestScope()`` in sync code.  ``scope.cancel(reason)`` is safe from
    any task or thread and idempotent.  Cancelling a parent cancels its children,
    never the reverse.

    ``id``: who the scope is to the outside (a str of visible ASCII, at most 128
    characters; default: 32 random hex digits, unguessable).  ``bus``: a cancel bus
    (``LocalCancelBus``, ``scoped_clients.redis.RedisCancelBus``) the scope joins
    while open, so that ``await bus.cancel(scope.id)`` reaches it from another
    request, process or machine.  A child scope is cancelled with its parent: it
    needs no bus of its own.

    Args:
        name: a name for reports, logs and spans (at most 200 characters; ``ScopeMiddleware`` uses the
            method and path).
        timeout: seconds until the scope cancels itself with reason ``timeout`` (``None`` or
            ``float("inf")``: none).
        deadline: the same as a ``time.monotonic()`` value; a child keeps the earlier of its own and its
            parent's.
        parent: the scope to nest under (default: the ambient scope; ``None``: no parent).
        hook_timeout: seconds each ``on_cancel`` hook may run before it is abandoned.
        id: the scope's id (see above).
        bus: a cancel bus to join while open (see above).
    """

    # Slotted: a scope is made per request, and a dict of 30 attributes is the largest thing it holds.
    __slots__ = (
        "__weakref__",
        "_cancel_reason",
        "_cancel_scope",
        "_children",
        "_closed_reason",
        "_closing",
        "_deadline",
        "_deadline_watch",
        "_ending",
        "_exiting",
        "_hook_timeout",
        "_hooks",
        "_is_async",
        "_leave_bus",
        "_lock",
        "_loop",
        "_own_deadline",
        "_parent_arg",
        "_registry",
        "_report",
        "_started_at",
        "_state",
        "_tg",
        "_tg_open",
        "_tg_used",
        "_timeout",
        "_timer",
        "_token",
        "bus",
        "id",
        "name",
        "parent",
    )

    def __init__(
        self,
        name: str | None = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        parent: RequestScope | _Ambient | None = _AMBIENT,
        hook_timeout: float = _HOOK_TIMEOUT,
        id: str | None = None,
        bus: CancelBus | None = None,
    ) -> None:
        if parent is not _AMBIENT and parent is not None and not isinstance(parent, RequestScope):
            raise TypeError(
                f"parent must be a RequestScope or None (no parent), not {type(parent).__name__}; "
                f"leave it out to nest under the ambient scope"
            )
        # Every argument left at its default skips its check: a scope is opened per request.
        if hook_timeout is _HOOK_TIMEOUT:
            bound = _HOOK_TIMEOUT
        else:
            bound = seconds(hook_timeout, "hook_timeout")
            if bound < 0 or math.isinf(bound):
                raise ValueError(
                    f"hook_timeout must be a finite number of seconds >= 0, got {hook_timeout!r}: hooks run "
                    f"shielded, so an unbounded one could hold the request open forever"
                )
        #: free text; names longer than ``MAX_NAME_LENGTH`` characters are truncated
        self.name = None if name is None else check_name(name)
        #: who the scope is to a cancel bus, a log line, a page that wants to stop it: unguessable by default
        self.id: str = new_scope_id() if id is None else check_scope_id(id)
        if bus is not None:
            check_bus(bus, "RequestScope(bus=...)")
        self.bus = bus
        self._leave_bus: Callable[[], None] | None = None
        self._timeout = None if timeout is None else check_timeout(timeout)
        self._own_deadline = None if deadline is None else check_deadline(deadline)
        self._parent_arg = parent
        self._hook_timeout = bound
        self.parent: RequestScope | None = None
        self._lock = threading.RLock()
        self._state = _State.NEW
        self._is_async = False
        self._cancel_reason: CancelReason | None = None
        # Once the block ends uncancelled: why calls are refused from then on (the message; the
        # ``scope_closed`` reason itself is made on first use, by ``_closed()``: most scopes never need it).
        self._closing: str | None = None
        self._closed_reason: CancelReason | None = None
        #: the calls it owns (``registry(scope)``: the contract with HTTP calls, tools, retries)
        self._registry = CallRegistry(self, self._lock, RequestScope._is_shielded)
        self._children: set[RequestScope] = set()
        self._hooks: Hooks | NoHooks = NO_HOOKS  # made with the first hook
        self._report: ScopeReport | None = None
        self._ending: tuple[ScopeOutcome, float, tuple[CallRecord, ...]] | None = None
        self._started_at = 0.0
        self._deadline: float | None = None
        # async state
        self._loop: LoopHandle | None = None
        self._cancel_scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._tg_open = False
        self._tg_used = False  # a child was ever started in it (spawn, the hooks at a cancel)
        self._exiting = False  # the async exit has begun
        #: what ends the deadline's wait at exit: the loop's timer (asyncio, uvloop) or the timer thread's (trio)
        self._deadline_watch: Cancellable | None = None
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
        if self._report is None and self._ending is not None:
            with self._lock:  # built on first read when no sink wanted it at the exit
                if self._report is None:
                    self._report = self._build_report()
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
        return f"<RequestScope {self.name!r} id={self.id!r} {state}>"

    # ---------------------------------------------------------------- cancel

    def cancel(self, reason: str | CancelReason = ReasonCode.CANCELLED, message: str | None = None) -> bool:
        """Cancel the scope; returns True if this call did it, False if it was already cancelled or ended.

        ``reason`` is a code (``"client_disconnected"``, ``"timeout"``, ``"shutdown"``
        or any non-empty string of yours, at most 64 characters) or a ``CancelReason``;
        ``message`` is free text (``str``), truncated to 1,000 characters.
        """
        why = coerce_reason(reason, message)
        with self._lock:
            if self._state is _State.ENDED or self._cancel_reason is not None:
                return False
            self._cancel_reason = why
            calls = self._registry.in_flight_held()
            children = list(self._children) if self._children else ()
            if self._timer is not None:
                self._timer.cancel()
        for call in calls:
            call.abort(why)
        for child in children:
            child.cancel(why)
        if self._is_async and self._loop is not None:
            # The calls are aborted above, at once; the body is cancelled on the loop's next
            # turn, so that a batch of cancels (a server shutting down) shuts every socket
            # down first: anyio's cancel costs more than a socket shutdown.  Not before the
            # block's cancel scope exists (a cancel inherited at the entry, or one from another
            # thread during it): the entry cancels the body itself once it has one, and a post
            # as well would start the hooks' task twice.
            if self._cancel_scope is not None:
                self._loop.soon(RequestScope._cancel_on_loop, self)  # no bound method per cancel
        elif not self._is_async and self._state is _State.ACTIVE:
            self._hooks.run_sync()
        return True

    def _cancel_on_loop(self) -> None:
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()
        if self._hooks:  # the async hooks run now, while the block unwinds, not at its exit
            self._spawn_hooks()

    def check(self) -> None:
        """Raise ``ScopeCancelled`` if the scope was cancelled or has ended."""
        reason = self._cancel_reason
        if reason is None:
            if self._closing is None:
                return
            reason = self._closed()
        raise ScopeCancelled(reason, self.name)

    def _closed(self) -> CancelReason:
        """The ``scope_closed`` reason of a scope whose block ended uncancelled: one object, made on first use."""
        with self._lock:
            if self._closed_reason is None:
                assert self._closing is not None
                self._closed_reason = CancelReason(ReasonCode.SCOPE_CLOSED, self._closing)
            return self._closed_reason

    # ----------------------------------------------------------------- hooks

    def on_cancel(self, hook: Hook) -> Hook:
        """Register a cleanup hook run once when the scope is cancelled (usable as a decorator).

        Hooks run shielded, each bounded by ``hook_timeout`` seconds (async hooks);
        an error in one is logged and never stops the others.  Sync hooks run inline
        and must not block.  A hook registered after the cancel runs right away.
        """
        if inspect.iscoroutine(hook):
            hook.close()
            raise TypeError(
                "on_cancel() takes the function to call, not a coroutine object: "
                "write scope.on_cancel(cleanup), not scope.on_cancel(cleanup())"
            )
        if not callable(hook):
            raise TypeError(f"on_cancel() takes a callable (sync or async), not {type(hook).__name__}: {hook!r}")
        with self._lock:
            if self._state is _State.ENDED:
                raise ScopeStateError(f"{self!r} has ended; register on_cancel() hooks inside its block")
            if self._state is _State.ACTIVE and not self._is_async and inspect.iscoroutinefunction(hook):
                raise TypeError(
                    f"on_cancel({hook!r}) is async but {self!r} was entered with plain `with`, which cannot "
                    f"await it: register a sync hook, or use `async with`"
                )
            if isinstance(self._hooks, NoHooks):
                self._hooks = Hooks(self, self._lock, self._hook_timeout)
            self._hooks.add(hook)
            # Before the entry, sync or async is not known yet: the entry runs them.
            run_now = self._cancel_reason is not None and self._state is _State.ACTIVE
        if not run_now:
            return hook
        if self._is_async and self._loop is not None:
            self._loop.run(self._spawn_hooks)
        else:
            self._hooks.run_sync()
        return hook

    def _spawn_hooks(self) -> None:
        """On the loop, once cancelled: run the hooks in a task of the scope's group (the exit path runs any left).

        No task waits for the cancel (one per scope with a hook used to: ~80-90 us a scope, issue 23):
        the task is started by the cancel, inside the cancelled scope.  It is not interrupted:
        neither library cancels a task before its first step, and ``run_async`` enters each hook's
        shielded scope before its first checkpoint.  It runs in the context of the first hook's
        registration (of the block's entry for a hook registered before it), as the task that
        used to wait did.
        """
        hooks, group, loop = self._hooks, self._tg, self._loop
        if not isinstance(hooks, Hooks) or group is None or loop is None or not self._takes_children():
            return  # the exit runs them (``_seal_unless_hooks_left``)
        name = f"on_cancel hooks of {self!r}"
        library = loop.library  # not sniffio here: a foreign loop callback (a protocol's) names no library
        coro = hooks.run_async()  # made here, so that it can be closed if the group refuses it

        def start() -> None:
            # The registration's context, on a loop anyio.run did not start (uvicorn's), does not name
            # the library, and anyio finds none in a loop callback: named here.
            sniffio.current_async_library_cvar.set(library)
            group.start_soon(lambda: coro, name=name)

        try:
            hooks.context.run(start)
            self._tg_used = True
        except RuntimeError:  # the task group is closing: the exit runs the hooks
            coro.close()

    def _takes_children(self) -> bool:
        """Whether the group may be given a task now (spawn, the hooks').

        Not once its exit has begun with no task of it still running: anyio's exit (asyncio) has
        then found nothing to wait for, and a task started in its checkpoint would outlive the
        block. While one runs, the exit waits for it and for any started meanwhile.
        """
        return self._tg_open and (not self._exiting or group_has_tasks(self._tg))

    # ------------------------------------------------------------- children

    def spawn(
        self, fn: Callable[[*PosArgsT], Coroutine[Any, Any, Any]], *args: *PosArgsT, name: str | None = None
    ) -> None:
        """Start ``fn(*args)`` as a child task owned by the scope.

        The child is cancelled with the scope and the block does not exit before it
        settles.  Only inside ``async with``.  ``name`` names the task (for debuggers and
        task listings).
        """
        if inspect.iscoroutine(fn):
            fn.close()
            raise TypeError(
                "spawn() takes an async function and its arguments, not a coroutine object: "
                "write scope.spawn(work, arg), not scope.spawn(work(arg))"
            )
        if not callable(fn):
            raise TypeError(f"spawn() takes an async function, not {type(fn).__name__}: {fn!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"spawn(name=...) must be a str or None, not {type(name).__name__}")
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
        if not self._takes_children():
            raise ScopeStateError(f"{self!r} is exiting; spawn() children before its block ends")
        # Trio closes the nursery as the group's last child ends, a checkpoint before our exit path
        # clears ``_tg_open``: a spawn in that window gets trio's RuntimeError, and the coroutine
        # anyio made would be left unawaited.  We make the coroutine, so we can close it.
        coro = fn(*args)
        label = name if name is not None else f"{getattr(fn, '__module__', '')}.{_qualname(fn)}"
        try:
            self._tg.start_soon(lambda: coro, name=label)
            self._tg_used = True
        except RuntimeError as exc:
            if inspect.iscoroutine(coro):
                coro.close()
            raise ScopeStateError(f"{self!r} is exiting; spawn() children before its block ends") from exc

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

    def _is_shielded(self) -> bool:
        """Whether the current context is inside ``shield()`` of this scope or an ancestor."""
        shield = _shielded.get()
        scope: RequestScope | None = self
        while shield is not None and scope is not None:
            if scope is shield:
                return True
            scope = scope.parent
        return False

    # ---------------------------------------------------------------- enter

    def _enter_common(self, is_async: bool) -> None:
        with self._lock:
            if self._state is not _State.NEW:
                raise ScopeStateError(
                    f"{self!r} has already been entered; a RequestScope is single-use: create a new one per request"
                )
            parent = _current.get() if self._parent_arg is _AMBIENT else self._parent_arg
            assert parent is None or isinstance(parent, RequestScope)
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
        inherited_deadline = parent._deadline if parent is not None else None
        if self._own_deadline is not None or self._timeout is not None or inherited_deadline is not None:
            deadlines = [d for d in (self._own_deadline, inherited_deadline) if d is not None]
            if self._timeout is not None:
                deadlines.append(self._started_at + self._timeout)
            self._deadline = min(deadlines)
        self._token = _current.set(self)
        if inherited is not None:
            self.cancel(inherited)
        if self.bus is not None:
            try:
                self._leave_bus = self.bus.join(self)
            except Exception:  # a bus is never allowed to break the request it serves
                logger.exception("scoped_clients: %r could not join %r; local cancels still work", self, self.bus)

    def _timeout_reason(self) -> CancelReason:
        return CancelReason(ReasonCode.TIMEOUT, "the scope's deadline passed")

    def __enter__(self) -> Self:
        self._enter_common(is_async=False)
        if self.cancelled:  # cancelled before the entry: hooks registered since run now
            self._hooks.run_sync()
        if self._deadline is not None and not self.cancelled:
            self._timer = call_at(self._deadline, self._deadline_passed)
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
            self._registry.record_in_flight(orphans)
            if self.cancelled:
                self._hooks.run_sync()
        finally:
            _current.reset(self._token)
            self._end(exc)
        return self._absorbs(exc)

    async def __aenter__(self) -> Self:
        self._loop = self._registry.loop = LoopHandle()
        self._enter_common(is_async=True)
        self._cancel_scope = self._loop.cancel_scope()
        self._cancel_scope.__enter__()
        self._tg = self._loop.task_group()
        await self._tg.__aenter__()
        self._tg_open = True
        if self._deadline is not None and not self.cancelled:
            # A timer, not a task asleep in the scope's task group (spawned, then cancelled at exit:
            # +65-70 us a scope, issue 23): the loop's own where it has one (asyncio, uvloop); trio
            # has none outside a task: the process' timer thread (the sync scopes'), as ``cancel()``
            # is thread-safe.
            watch = self._loop.call_at(self._deadline, RequestScope._deadline_passed, self)
            self._deadline_watch = watch if watch is not None else call_at(self._deadline, self._deadline_passed)
        if isinstance(self._hooks, Hooks):  # registered before the entry: they run in the block's context
            self._hooks.context = contextvars.copy_context()
        if self.cancelled:  # before the block began (inherited, or from another thread): never posted
            self._cancel_on_loop()
        return self

    def _deadline_passed(self) -> None:
        deadline, loop = self._deadline, self._loop
        if deadline is not None and loop is not None and (left := deadline - time.monotonic()) > 0:
            # A loop's timer can run early: uvloop's count in whole milliseconds from a clock read once
            # a turn fired 2 in 5 sub-millisecond deadlines up to 1.4 ms before them. Wait out the rest
            # (at least a millisecond: no turn of the loop spent re-arming). The timer thread never runs
            # early (trio's and sync scopes': ``call_at`` returns None there, off the loop).
            again = loop.call_at(deadline + max(0.0, 0.001 - left), RequestScope._deadline_passed, self)
            if again is not None:
                self._deadline_watch = again
                return
        self.cancel(self._timeout_reason())

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._tg is not None and self._cancel_scope is not None
        self._exiting = True
        outer = exc
        try:
            outer = await self._settle_children(exc)
            outer = self._exit_cancel_scope(outer)
            if (
                outer is None
                and exc is not None
                and isinstance(exc, anyio.get_cancelled_exc_class())
                and _native_cancel_pending()
            ):
                outer = exc  # a task.cancel() (asyncio.timeout, a framework) is not ours to absorb
            orphans = self._close_registry()
            if orphans or not self._seal_unless_hooks_left():  # nothing to close or run: no shielded scope
                with anyio.CancelScope(shield=True):
                    for call in orphans:
                        with anyio.move_on_after(self._hook_timeout):
                            await call.aclose_on_exit()
                    self._registry.record_in_flight(orphans)
                    first = True
                    while not self._seal_unless_hooks_left():  # the cancel's, then any registered while they ran
                        if not first:  # a hook that registers another each time holds its request, not the loop
                            await anyio.lowlevel.checkpoint()
                        first = False
                        await self._hooks.run_async()
        finally:
            _current.reset(self._token)
            self._end(outer)
        if outer is None:
            return True
        if outer is exc:
            return False
        raise outer

    def _seal_unless_hooks_left(self) -> bool:
        """At the exit: False while async hooks are left to run; else end the scope to ``cancel()`` and
        ``on_cancel()`` and return True (under the lock: a hook registered from another thread is either run
        by the exit or refused, never accepted and dropped)."""
        with self._lock:
            if self._cancel_reason is not None and self._hooks:
                return False
            self._state = _State.ENDED
            return True

    async def _settle_children(self, exc: BaseException | None) -> BaseException | None:
        """Wait for the children; returns what is left to raise (the body's and the children's errors)."""
        assert self._tg is not None and self._cancel_scope is not None
        watch = self._deadline_watch
        if watch is not None and not (self._tg_used and group_has_tasks(self._tg)):
            watch.cancel()  # else the deadline still bounds the children the exit waits for
        if self.cancelled:  # a cancel whose loop callback has not run yet takes effect now
            self._cancel_scope.cancel()
        # A group that never had a child (most scopes: no spawn, no async hook) has nothing to cancel
        # and nothing to judge: it is closed empty-handed and the body's exception goes on as it is.
        # Cancelling it would cost more than the rest of the exit: on asyncio anyio's ``cancel()``
        # formats ``repr()`` of the current task (3.5 us in a bare task, ~14 us per stream in a mass
        # cancel, issue 23).
        used = self._tg_used
        if exc is not None and used:  # like a task group: a body that fails or is cancelled cancels its children
            self._tg.cancel_scope.cancel()
        # A cancellation of the body is handed to the task group, which knows whether it was its
        # own (a child failed) or an enclosing scope's; any other exception is not (the group
        # would wrap it in an ExceptionGroup): a user's `except ValueError` keeps working.
        handed = exc if used and exc is not None and isinstance(exc, anyio.get_cancelled_exc_class()) else None
        try:
            swallowed = await self._tg.__aexit__(type(handed) if handed else None, handed, _tb(handed))
        except BaseException as children:
            if exc is None or handed is not None:
                return children
            return BaseExceptionGroup("scope body and children failed", [exc, children])
        finally:
            self._tg_open = False
            if watch is not None:
                watch.cancel()
        return None if handed is not None and swallowed else exc

    def _exit_cancel_scope(self, outer: BaseException | None) -> BaseException | None:
        """Leave the body's cancel scope; returns what is left to raise once our own cancel is absorbed."""
        assert self._cancel_scope is not None
        if outer is not None and self.cancelled:
            # Our ScopeCancelled (a child's aborted call) goes first, so that the cancel scope
            # sees what is left: its own cancellations, which it absorbs, and anything else.
            outer = _without(outer, self._absorbs)
        try:
            if self._cancel_scope.__exit__(type(outer) if outer else None, outer, _tb(outer)):
                outer = None
        except BaseException as left:
            outer = left
        if outer is not None and self._absorbs(outer):
            outer = None
        return outer

    # ------------------------------------------------------------------ end

    def _close_registry(self) -> list[Owned]:
        """At exit: abort what is still in flight and hand it back to be closed, then recorded."""
        with self._lock:
            if self._cancel_reason is None and self._closing is None:
                self._closing = "the scope's block ended while the call was still in flight"
            orphans = self._registry.in_flight()
            if not orphans:
                return orphans
            reason = self._cancel_reason or self._closed()
        for call in orphans:
            call.abort(reason, orphan=self._cancel_reason is None)
        return orphans

    def _end(self, exc: BaseException | None) -> None:
        if self._leave_bus is not None:
            try:
                self._leave_bus()
            except Exception:
                logger.exception("scoped_clients: %r could not leave %r", self, self.bus)
            self._leave_bus = None
        with self._lock:
            self._state = _State.ENDED
            if self._closing is None and self._cancel_reason is None:
                self._closing = "the scope has ended"
            records = self._registry.seal()
            self._hooks.clear()
        if self.parent is not None:
            with self.parent._lock:
                self.parent._children.discard(self)
        self._tg = None
        self._cancel_scope = None
        self._deadline_watch = None
        outcome: ScopeOutcome
        if self._cancel_reason is not None:
            outcome = "cancelled"
        elif exc is not None and not self._absorbs(exc):
            outcome = "failed"
        else:
            outcome = "completed"
        self._ending = (outcome, time.monotonic() - self._started_at, records)
        if reporting():  # a sink or the log wants it now; else it is built when read
            self._report = report = self._build_report()
            emit(report)

    def _build_report(self) -> ScopeReport:
        assert self._ending is not None
        outcome, duration, records = self._ending
        reason = self._cancel_reason
        return ScopeReport(
            scope=self.name,
            scope_id=self.id,
            outcome=outcome,
            cancel_reason=reason.code if reason else None,
            cancel_message=reason.message if reason else None,
            started_at=self._started_at,
            duration=duration,
            calls=records,
        )

    def _absorbs(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` is only this scope's (or a descendant's) cancellation."""
        if exc is None:
            return True
        if isinstance(exc, ScopeCancelled):
            return self.cancelled or (self._closed_reason is not None and exc.reason is self._closed_reason)
        if isinstance(exc, BaseExceptionGroup):
            return all(self._absorbs(e) for e in exc.exceptions)
        return False


def _qualname(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)


def _tb(exc: BaseException | None) -> TracebackType | None:
    return exc.__traceback__ if exc is not None else None


def _without(exc: BaseException, drop: Callable[[BaseException], bool]) -> BaseException | None:
    """``exc`` without the leaves ``drop`` accepts (``None`` if nothing is left)."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(lambda leaf: not isinstance(leaf, BaseExceptionGroup) and drop(leaf))
        return rest
    return None if drop(exc) else exc


def _native_cancel_pending() -> bool:
    """asyncio: is a native ``task.cancel()`` still pending on this task once our cancel scopes have left?

    anyio's task group drops the body's ``CancelledError`` when a child failed (here: raised
    our ``ScopeCancelled``, which we absorb), so an edge-triggered cancel from outside anyio
    would be lost; ``Task.cancelling()`` still counts it (anyio uncancels its own on exit).
    """
    if sniffio.current_async_library() != "asyncio":
        return False  # trio's cancellation is level-triggered: it is delivered again
    import asyncio

    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
