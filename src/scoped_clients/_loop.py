"""Running a callback on a given event loop's thread, from any thread.

anyio has no non-blocking "call soon on that loop" for foreign threads
(``anyio.from_thread.run_sync`` waits for the result, which can deadlock a
canceller that the loop is itself waiting on), so we keep the native handle.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
import weakref
from asyncio import AbstractEventLoop
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

import anyio
import anyio.abc
import sniffio

T = TypeVar("T")
Post = Callable[[Callable[[], object]], None]
#: makes a cancel scope of the running library's own kind (``cancel()``, ``cancelled_caught``, ``with``)
NewCancelScope = Callable[[], anyio.CancelScope]
#: makes anyio's task group of the running library (what ``anyio.create_task_group()`` returns)
NewTaskGroup = Callable[[], anyio.abc.TaskGroup]


class Cancellable(Protocol):
    """A pending timer (``LoopHandle.call_at``, the timer thread's): ``cancel()`` it once it is not wanted."""

    def cancel(self) -> object: ...


_native_scopes: dict[str, NewCancelScope] = {}


def native_cancel_scope(library: str) -> NewCancelScope:
    """The cheapest cancel scope for the library running here: trio's own on trio, anyio's on asyncio.

    anyio's scope on trio only delegates to a ``trio.CancelScope`` (same semantics, nested with
    anyio's freely) at about twice the cost per enter and exit.  On asyncio, ``anyio.CancelScope()``
    looks its backend up on every call (sniffio, then the backend's factory) to build an instance of
    the backend's class: that class is called directly.  A call pays one per request.
    """
    scope_class = _native_scopes.get(library)
    if scope_class is None:
        if library == "trio":
            import trio

            scope_class = cast(NewCancelScope, trio.CancelScope)
        else:
            scope_class = type(anyio.CancelScope())
        _native_scopes[library] = scope_class
    return scope_class


_task_groups: dict[str, NewTaskGroup] = {}


def native_task_group(library: str) -> NewTaskGroup:
    """anyio's task group class for the library running here, called directly.

    ``anyio.create_task_group()`` looks its backend up on every call (sniffio, then a weak
    dictionary) to build an instance of that backend's class; a scope makes one per request.
    """
    group_class = _task_groups.get(library)
    if group_class is None:
        group_class = _task_groups[library] = cast(NewTaskGroup, type(anyio.create_task_group()))
    return group_class


def group_has_tasks(group: object) -> bool:
    """Whether anyio's task ``group`` may still hold a running task: False only when it is known to hold none.

    On asyncio, anyio's group keeps its running tasks in ``_tasks``: its exit waits while that set is not
    empty (a task started meanwhile included), and with it empty has found nothing to wait for, so a task
    started then would outlive it.  Trio's nursery refuses a task itself once it is closed: True there, and
    wherever the attribute is not what this reads (another anyio), as before it was read.
    """
    tasks = getattr(group, "_tasks", None)
    try:
        return tasks is None or len(tasks) > 0
    except TypeError:
        return True


#: whether a cancel of ``target`` (a cancel scope of the running library) reaches the current task now
Reaches = Callable[[object], bool]


def _reaches_trio() -> Reaches:
    """trio: ``target`` is on the current task's chain of cancel statuses, with no shield below it."""
    from trio.lowlevel import current_task

    def reaches(target: object) -> bool:
        try:
            status: Any = current_task()._cancel_status
            while status is not None:
                scope = status._scope
                if scope is target:
                    return True
                if scope.shield:
                    return False
                status = status._parent
        except AttributeError:  # another trio's internals
            pass
        return False

    return reaches


def _reaches_asyncio() -> Reaches:
    """asyncio: ``target`` is on the current task's chain of anyio cancel scopes, with no shield below it.

    A task anyio does not know (``asyncio.shield``'s, a bare ``create_task``'s) is not reached.
    """
    from asyncio import current_task

    from anyio._backends._asyncio import _task_states

    def reaches(target: object) -> bool:
        try:
            state = _task_states.get(current_task())  # type: ignore[arg-type]
            scope = None if state is None else state.cancel_scope
            while scope is not None:
                if scope is target:
                    return True
                if scope._shield:
                    return False
                scope = scope._parent_scope
        except AttributeError:  # another anyio's internals
            pass
        return False

    return reaches


def _never(target: object) -> bool:
    return False


def _checked(make: Callable[[], Reaches]) -> Reaches:
    """``make()``, answering False where this trio / anyio lacks the internals it reads."""
    try:
        reaches = make()
    except ImportError:
        return _never

    return reaches


_reaches: dict[str, Reaches] = {}


def cancel_reaches(library: str) -> Reaches:
    """``reaches(target)``: whether cancelling ``target`` (an entered cancel scope) now interrupts this task.

    True when the current task runs inside ``target`` with no shielded cancel scope between: a call
    made there can rely on ``target``'s cancel instead of a cancel scope of its own.  It reads the
    library's own cancel-scope chain (trio's ``Task._cancel_status`` chain, anyio's asyncio
    ``_task_states``: private names, read as trio 0.35 and anyio 4.16 have them); if they are missing,
    every answer is False and the call takes its own cancel scope, as before.
    """
    reaches = _reaches.get(library)
    if reaches is None:
        reaches = _reaches[library] = _checked(_reaches_trio if library == "trio" else _reaches_asyncio)
    return reaches


def current_poster(library: str | None = None) -> Post:
    """A thread-safe, non-blocking ``post(fn)`` for the event loop running here (``library``: its name, if known)."""
    return _native(sniffio.current_async_library() if library is None else library)[0]


def _native(library: str) -> tuple[Post, object, contextvars.Context | None]:
    """``current_poster``'s poster, the loop it posts to (asyncio's loop, trio's token) and its callbacks' context."""
    if library == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def post_trio(fn: Callable[[], object]) -> None:
            try:
                token.run_sync_soon(fn)
            except trio.RunFinishedError:
                pass

        return post_trio, token, None
    import asyncio

    loop = asyncio.get_running_loop()
    # Callbacks run in a context that names the async library: anyio (through sniffio)
    # then works inside them even on a loop that anyio.run did not start (uvicorn's), where
    # a bare callback has no current task to detect the library from.
    context = contextvars.copy_context()
    context.run(sniffio.current_async_library_cvar.set, "asyncio")

    loop_thread = threading.get_ident()

    def post_asyncio(fn: Callable[[], object]) -> None:
        try:
            if threading.get_ident() == loop_thread:
                # From the loop's own thread (a cancel in a task or a callback): no need to wake the
                # loop through its self-pipe, one system call fewer per post (a mass cancel makes 1,000).
                loop.call_soon(fn, context=context)
            else:
                loop.call_soon_threadsafe(fn, context=context)
        except RuntimeError:  # the loop has closed: nothing left to cancel on it
            pass

    return post_asyncio, loop, context


class _Batch:
    """Calls posted from a loop's own thread, run in order by one callback of that loop.

    A mass cancel posts one body cancel per scope from the loop's thread: a thousand ``call_soon``
    handles on asyncio (~1 us each, and a handle and a bound method that live until the next turn:
    garbage-collector pressure during the cancel loop) or a thousand ``run_sync_soon`` on trio (each
    takes a lock and writes to trio's wake-up socket: ~2.5 us).  Batched, the first post of a turn
    schedules one loop callback and the others are three list appends (``fn(arg)``: no bound method
    made per post); each call still runs in its own context, in the order posted, at the point of the
    loop the first one's would have.  One that raises does so from that loop callback (asyncio's
    exception handler, trio's crash: as a posted callback's would), the ones after it scheduled
    again.  Only the loop's own thread touches a batch.
    """

    __slots__ = ("args", "contexts", "fns", "loop")

    def __init__(self, loop: object) -> None:
        # asyncio's loop or trio's token, weakly: a batch is the value of its loop's entry in ``_batches``
        self.loop = weakref.ref(loop)
        self.fns: list[Callable[[Any], object]] = []
        self.args: list[object] = []
        self.contexts: list[contextvars.Context | None] = []

    def add(self, fn: Callable[[Any], object], arg: object, context: contextvars.Context | None) -> None:
        fns = self.fns
        fns.append(fn)
        self.args.append(arg)
        self.contexts.append(context)
        if len(fns) == 1 and not self._schedule():
            fns.clear()  # the loop has closed: nothing left to run on it
            self.args.clear()
            self.contexts.clear()

    def _schedule(self) -> bool:
        loop = self.loop()
        try:
            if isinstance(loop, AbstractEventLoop):
                loop.call_soon(self._run)
            elif loop is not None:
                loop.run_sync_soon(self._run)  # type: ignore[attr-defined]
            else:
                return False
        except RuntimeError:  # asyncio's, trio's RunFinishedError: the loop has closed
            return False
        return True

    def _run(self) -> None:
        fns, args, contexts = self.fns, self.args, self.contexts
        self.fns, self.args, self.contexts = [], [], []  # what is posted from here on is the next batch
        done = 0
        try:
            for fn, arg, context in zip(fns, args, contexts, strict=True):
                done += 1
                if context is None:
                    fn(arg)
                else:
                    context.run(fn, arg)
        finally:
            if done < len(fns):  # one raised: the rest run on a later turn, before what was posted since
                self.fns[:0], self.args[:0], self.contexts[:0] = fns[done:], args[done:], contexts[done:]
                if len(self.fns) == len(fns) - done and not self._schedule():  # nothing posted since
                    self.fns.clear()
                    self.args.clear()
                    self.contexts.clear()


_batches: weakref.WeakKeyDictionary[object, _Batch] = weakref.WeakKeyDictionary()
#: the batch found last (its loop weakly): a mass cancel asks for the same one a thousand times
_last: tuple[weakref.ref[object], _Batch] | None = None


def _batch(loop: object) -> _Batch:
    global _last
    last = _last
    if last is not None and last[0]() is loop:
        return last[1]
    batch = _batches.get(loop)
    if batch is None:
        batch = _batches[loop] = _Batch(loop)
    _last = (weakref.ref(loop), batch)
    return batch


class LoopHandle:
    """The loop a piece of async state lives on: its thread and a poster."""

    __slots__ = ("_context", "_native", "cancel_scope", "library", "post", "reaches", "task_group", "thread_id")

    def __init__(self) -> None:
        #: the async library running the loop, as sniffio names it (``"asyncio"``, ``"trio"``)
        self.library = library = sniffio.current_async_library()
        self.thread_id = threading.get_ident()
        self.post, self._native, self._context = _native(library)
        #: a new cancel scope of the loop's own kind (``native_cancel_scope``)
        self.cancel_scope = native_cancel_scope(library)
        #: a new task group of anyio's for the loop's library (``native_task_group``)
        self.task_group = native_task_group(library)
        #: whether an entered cancel scope's cancel reaches the current task (``cancel_reaches``)
        self.reaches = cancel_reaches(library)

    def soon(self, fn: Callable[[T], object], arg: T) -> None:
        """``post(lambda: fn(arg))``; from the loop's own thread, joined to what else is posted there
        before the loop runs it (``_Batch``: one loop callback for a mass cancel's thousand body cancels)."""
        if threading.get_ident() == self.thread_id:
            try:
                batch = _batch(self._native)
            except TypeError:  # a loop that cannot be weakly referenced: no batching
                pass
            else:
                batch.add(fn, arg, self._context)
                return
        self.post(functools.partial(fn, arg))

    def call_at(self, when: float, fn: Callable[[T], object], arg: T) -> Cancellable | None:
        """``fn(arg)`` as a loop callback (outside any task) once ``time.monotonic() >= when``: asyncio's
        and uvloop's own timer, cancelled on the loop's thread only. ``None`` on trio, which has no timer
        outside a task."""
        loop = self._native
        if not isinstance(loop, AbstractEventLoop):
            return None
        # the loop's clock is not always time.monotonic() (uvloop's counts from its own start)
        return loop.call_at(loop.time() + (when - time.monotonic()), fn, arg, context=self._context)

    def run(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` now if we are on the loop's thread, else as soon as the loop can."""
        if threading.get_ident() == self.thread_id:
            fn()
        else:
            self.post(fn)
