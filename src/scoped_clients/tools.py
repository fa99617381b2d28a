"""Tool calls owned by the ambient scope: functions and subprocesses.

* ``await run_tool(fn, *args, **kwargs)`` runs a tool as a call of the scope.
  An async tool runs in the calling task and is cancelled with the scope; a
  sync tool runs in a worker thread (the scope stays ambient there, so it can
  call ``current_scope().check()`` cooperatively).  Python cannot stop a
  thread: on cancel the caller is released at once with ``ScopeCancelled`` and
  a thread that is still running is reported as ``thread_leaked``, never hidden.
* ``@tool`` / ``@tool(name=...)`` wraps a function so that every call goes
  through ``run_tool``.  The result is always an async function (a sync tool
  is run in a thread, so that cancelling it never blocks the event loop).
* ``await run_command(argv, ...)`` runs a subprocess in its own process group;
  on cancel the group gets SIGTERM, then SIGKILL after ``grace`` seconds, and
  the output produced so far is kept: on the ``CommandCancelled`` exception
  (a ``ScopeCancelled``) and in the call's record.

HTTP tools should use ``scoped_clients.httpx`` / ``scoped_clients.httpx2``
clients: their requests are then aborted at the socket like any other call.
Each tool call is a ``CallRecord`` (provider ``"tool"``) in the scope's report.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

import anyio
import anyio.abc

from ._exceptions import ScopeCancelled
from ._loop import LoopHandle
from ._reasons import CancelReason
from ._report import CallRecord, Outcome
from ._scope import RequestScope, current_scope

__all__ = ["CommandCancelled", "CommandResult", "run_command", "run_tool", "tool"]

logger = logging.getLogger("scoped_clients")
P = ParamSpec("P")
R = TypeVar("R")
_TAIL = 4096


class _ToolCall:
    """A tool run registered with a scope (the scope's ``Owned`` protocol)."""

    def __init__(self, scope: RequestScope, name: str, operation_kind: str) -> None:
        self.scope = scope
        self.name = name
        self.kind = operation_kind
        self.loop = LoopHandle()
        self.started_at = time.monotonic()
        self.cancel_scope: anyio.CancelScope | None = None
        self.aborted: CancelReason | None = None
        self.orphan = False
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self.detail: dict[str, object] = {}
        self.record: CallRecord | None = None
        self.done = False
        self.settled = anyio.Event()

    def abort(self, reason: CancelReason, *, orphan: bool = False) -> None:
        if self.done or self.aborted is not None:
            return
        self.aborted, self.orphan = reason, orphan
        self.loop.run(self._cancel)

    def _cancel(self) -> None:
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def final_record(self) -> CallRecord:
        if self.record is None:
            self.record = CallRecord(
                provider="tool",
                operation=self.name,
                model=None,
                outcome=self.outcome or "aborted",
                started_at=self.started_at,
                duration=time.monotonic() - self.started_at,
                cancel_reason=self.aborted.code if self.aborted else None,
                orphan=self.orphan,
                error=self.error,
                detail={"kind": self.kind, **self.detail},
            )
        return self.record

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.settled.set()
        self.outcome = outcome
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"
        self.scope._release(self, self.final_record())

    def refuse(self, reason: CancelReason) -> None:
        self.aborted, self.outcome, self.done = reason, "refused", True
        self.scope._refused(self.final_record())

    async def aclose_on_exit(self) -> None:
        """The scope is ending: let the aborted tool settle (a command's group being stopped)."""
        if threading.get_ident() == self.loop.thread_id:
            await self.settled.wait()

    def close_on_exit(self) -> None:
        return None


def _admit(name: str, kind: str) -> _ToolCall | None:
    scope = current_scope()
    if scope is None:
        return None
    call = _ToolCall(scope, name, kind)
    try:
        scope._admit(call)
    except ScopeCancelled as refused:
        call.refuse(refused.reason)
        raise
    return call


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


async def run_tool(fn: Callable[..., Any], /, *args: Any, _name: str | None = None, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` (async or sync) as a call owned by the ambient scope."""
    name = _name or _name_of(fn)
    is_async = inspect.iscoroutinefunction(fn)
    call = _admit(name, "async" if is_async else "thread")
    if call is None:
        if is_async:
            return await fn(*args, **kwargs)
        return await anyio.to_thread.run_sync(functools.partial(contextvars.copy_context().run, fn, *args, **kwargs))
    try:
        with anyio.CancelScope() as cancel_scope:
            call.cancel_scope = cancel_scope
            if call.aborted is not None:
                cancel_scope.cancel()
            if is_async:
                result = await fn(*args, **kwargs)
            else:
                result = await _in_thread(call, fn, args, kwargs)
    except BaseException as exc:
        _settle_failure(call, exc)
        raise
    if cancel_scope.cancelled_caught:
        call.finish("aborted")
        assert call.aborted is not None
        raise ScopeCancelled(call.aborted, call.scope.name)
    call.finish("completed")
    return result


def _settle_failure(call: _ToolCall, exc: BaseException) -> None:
    if call.aborted is not None or isinstance(exc, (ScopeCancelled, anyio.get_cancelled_exc_class())):
        call.finish("aborted")
    else:
        call.finish("failed", exc)


async def _in_thread(call: _ToolCall, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run a sync tool in a worker thread; on cancel, release the caller and report a thread still running."""
    context = contextvars.copy_context()
    finished = threading.Event()
    cancelled_at: list[float] = []

    def runner() -> Any:
        try:
            return context.run(fn, *args, **kwargs)
        finally:
            finished.set()
            if cancelled_at:
                ran_on = time.monotonic() - cancelled_at[0]
                call.detail["ran_after_cancel_s"] = round(ran_on, 6)
                logger.warning("tool %s kept running %.3fs after its scope was cancelled", call.name, ran_on)

    try:
        return await anyio.to_thread.run_sync(runner, abandon_on_cancel=True)
    finally:
        if not finished.is_set():
            cancelled_at.append(time.monotonic())
            call.detail["thread_leaked"] = True
            logger.warning("tool %s: its thread is still running after the cancel (Python cannot stop it)", call.name)


@overload
def tool(fn: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...


@overload
def tool(fn: Callable[P, R], /) -> Callable[P, Awaitable[R]]: ...


@overload
def tool(*, name: str | None = None) -> Callable[[Callable[P, Any]], Callable[P, Awaitable[Any]]]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
    """Make every call of ``fn`` a scoped tool call (``run_tool``); bare ``@tool`` or ``@tool(name=...)``."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        label = name or _name_of(func)

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await run_tool(func, *args, _name=label, **kwargs)

        return wrapper

    return decorate(fn) if fn is not None else decorate


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None
    stdout: bytes
    stderr: bytes
    pid: int


class CommandCancelled(ScopeCancelled):
    """``run_command`` was stopped by its scope; ``result`` holds the output produced before."""

    def __init__(self, reason: CancelReason, scope_name: str | None, result: CommandResult) -> None:
        super().__init__(reason, scope_name)
        self.result = result


async def run_command(
    argv: Sequence[str],
    *,
    grace: float = 2.0,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = False,
) -> CommandResult:
    """Run a command in its own process group, owned by the ambient scope.

    On cancel: SIGTERM to the whole group, SIGKILL after ``grace`` seconds, then the
    process is reaped; raises ``CommandCancelled`` carrying the output so far.  A
    missing program raises the OS's ``FileNotFoundError``; with ``check=True`` a
    non-zero exit raises ``subprocess.CalledProcessError``.
    """
    argv = tuple(str(a) for a in argv)
    call = _admit(os.path.basename(argv[0]) if argv else "command", "command")
    try:
        process = await anyio.open_process(
            list(argv),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except BaseException as exc:
        if call is not None:
            call.finish("failed", exc)
        raise
    out, err = bytearray(), bytearray()

    def result() -> CommandResult:
        return CommandResult(argv, process.returncode, bytes(out), bytes(err), process.pid)

    async def pump(stream: anyio.abc.ByteReceiveStream | None, sink: bytearray) -> None:
        if stream is None:
            return
        async for data in stream:
            sink += data

    cancel_scope = anyio.CancelScope()
    if call is not None:
        call.cancel_scope = cancel_scope
        call.detail["pid"] = process.pid
        if call.aborted is not None:
            cancel_scope.cancel()
    try:
        with cancel_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, process.stdout, out)
                tg.start_soon(pump, process.stderr, err)
                if input is not None and process.stdin is not None:
                    await process.stdin.send(input)
                    await process.stdin.aclose()
                await process.wait()
    except BaseException as exc:  # cancelled from outside (the body's cancel scope) or failed
        failure: BaseException | None = exc
        raise
    else:
        failure = None
    finally:
        if process.returncode is None:
            with anyio.CancelScope(shield=True):
                how = await _stop_group(process, grace)
            if call is not None:
                call.detail["stopped_by"] = how
        with anyio.CancelScope(shield=True):
            await process.aclose()  # close the pipes (the process has exited by now)
        if call is not None:  # kept on every path, a cancellation from outside included
            call.detail["returncode"] = process.returncode
            call.detail["stdout_tail"] = bytes(out[-_TAIL:]).decode(errors="replace")
            if failure is not None:
                _settle_failure(call, failure)
    final = result()
    if cancel_scope.cancelled_caught and call is not None and call.aborted is not None:
        call.finish("aborted")
        raise CommandCancelled(call.aborted, call.scope.name, final)
    if check and final.returncode:
        error = subprocess.CalledProcessError(final.returncode, list(argv), final.stdout, final.stderr)
        if call is not None:
            call.finish("failed", error)
        raise error
    if call is not None:
        call.finish("completed")
    return final


async def _stop_group(process: anyio.abc.Process, grace: float) -> str:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; reap.  Returns which signal did it."""
    pgid = process.pid  # start_new_session: the child leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    with anyio.move_on_after(grace):
        await process.wait()
        _killpg(pgid, signal.SIGKILL)  # its children, if the leader left them behind
        return "SIGTERM"
    _killpg(pgid, signal.SIGKILL)
    await process.wait()
    return "SIGKILL"


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
