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
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

import anyio
import anyio.abc
import sniffio

from ._exceptions import ScopeCancelled
from ._reasons import CancelReason, ReasonCode
from ._tool_call import ToolCall, admit_tool

__all__ = ["CommandCancelled", "CommandResult", "run_command", "run_tool", "tool"]

logger = logging.getLogger("scoped_clients")
P = ParamSpec("P")
R = TypeVar("R")
_TAIL = 4096


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


async def run_tool(fn: Callable[..., Any], /, *args: Any, _name: str | None = None, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` (async or sync) as a call owned by the ambient scope."""
    if inspect.iscoroutine(fn):
        raise TypeError("run_tool() takes the async function and its arguments, not a coroutine: run_tool(fn, *args)")
    if not callable(fn):
        raise TypeError(f"run_tool() takes the tool function itself, not {fn!r}")
    name = _name or _name_of(fn)
    is_async = inspect.iscoroutinefunction(fn)
    call = admit_tool(name, "async" if is_async else "thread")
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
        if call.thread_running is None:  # else the thread's end (or the scope's) settles the call
            call.settle_aborted()
        assert call.aborted is not None
        raise ScopeCancelled(call.aborted, call.scope.name)
    call.finish("completed")
    return result


def _settle_failure(call: ToolCall, exc: BaseException) -> None:
    if call.thread_running is not None:  # released from a running thread: settled when it stops
        return
    if call.aborted is not None or isinstance(exc, (ScopeCancelled, anyio.get_cancelled_exc_class())):
        call.settle_aborted()
    else:
        call.finish("failed", exc)


async def _in_thread(call: ToolCall, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run a sync tool in a worker thread; on cancel, release the caller at once.

    The call settles when the thread stops (not leaked, with how long it ran on), or
    when the scope ends with the thread still running (``thread_leaked``).
    """
    context = contextvars.copy_context()
    finished = call.thread_done = threading.Event()

    def runner() -> Any:
        try:
            return context.run(fn, *args, **kwargs)
        finally:
            finished.set()
            if call.thread_running is not None:
                ran_on = time.monotonic() - call.released_at
                logger.warning("tool %s kept running %.3fs after its scope was cancelled", call.name, ran_on)
                call.loop.run(call.thread_stopped)

    try:
        return await anyio.to_thread.run_sync(runner, abandon_on_cancel=True)
    finally:
        if not finished.is_set():
            call.release_thread(finished)
            if finished.is_set():  # it stopped in between: its runner may not have seen the release
                call.loop.run(call.thread_stopped)


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
    """What ``run_command`` ran and what it produced."""

    #: the program and its arguments, as run
    argv: tuple[str, ...]
    #: the exit status (negative: killed by that signal; ``None``: not reaped)
    returncode: int | None
    #: everything the command wrote to its standard output (up to the cancel, for a cancelled one)
    stdout: bytes
    #: everything it wrote to its standard error
    stderr: bytes
    #: its process id (also its process group's)
    pid: int


class CommandCancelled(ScopeCancelled):
    """``run_command`` was stopped by its scope; ``result`` holds the output produced before.

    Args:
        reason: why the scope was cancelled.
        scope_name: the cancelled scope's name, if it has one.
        result: the ``CommandResult`` up to the cancel.
    """

    def __init__(self, reason: CancelReason, scope_name: str | None, result: CommandResult) -> None:
        super().__init__(reason, scope_name)
        self.result = result


def _check_command(argv: object, grace: object, input: object) -> tuple[str, ...]:
    """``run_command``'s arguments, checked before anything is spawned."""
    if isinstance(argv, str | bytes):
        raise TypeError(
            f"run_command() takes the program and its arguments as a list, not one string: "
            f"pass [{argv!r}] for a program without arguments, or shlex.split({argv!r})"
        )
    if not isinstance(argv, Sequence) or not argv:
        raise TypeError(f"run_command() needs a non-empty list of strings: [program, *arguments], not {argv!r}")
    if not all(isinstance(a, str | os.PathLike) for a in argv):
        raise TypeError(f"run_command(): every argument must be a str (or a path), got {argv!r}")
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not math.isfinite(grace) or grace < 0:
        raise ValueError(f"grace is the seconds between SIGTERM and SIGKILL: a finite number >= 0, not {grace!r}")
    if input is not None and not isinstance(input, bytes | bytearray | memoryview):
        raise TypeError(f"input is the bytes to write to the command's stdin, not {type(input).__name__}")
    return tuple(os.fspath(a) if isinstance(a, os.PathLike) else a for a in argv)


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

    On cancel (the scope's, a deadline's, a parent's, or the calling task's own, even
    repeated): SIGTERM to the whole group, SIGKILL to the group once the command has
    exited or after ``grace`` seconds, then the process is reaped and the call settles
    ``aborted`` with the output so far.  A cancel by the scope raises ``CommandCancelled``
    carrying that output; a cancel of the calling task re-raises the task's own
    cancellation.  A missing program raises the OS's ``FileNotFoundError``; with
    ``check=True`` a non-zero exit raises ``subprocess.CalledProcessError``.

    Args:
        argv: the program and its arguments, as a list (never one shell string).
        grace: seconds between SIGTERM and SIGKILL.
        cwd: the working directory (default: this process's).
        env: the whole environment of the command (default: this process's).
        input: bytes written to its standard input, which is then closed (default: no input).
        check: raise ``subprocess.CalledProcessError`` on a non-zero exit.
    """
    argv = _check_command(argv, grace, input)
    call = admit_tool(os.path.basename(argv[0]), "command")
    command = _Command(argv, grace, call)
    spawn = functools.partial(
        anyio.open_process,
        list(argv),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    if sniffio.current_async_library() == "asyncio":
        return await _in_own_task(command, command.run(spawn, input, check))
    # trio cancels only through cancel scopes, which the cleanup's shield holds off
    return await command.run(spawn, input, check)


_running: set[Any] = set()  # the commands' own asyncio tasks, referenced until they end


async def _in_own_task(command: _Command, run: Coroutine[Any, Any, CommandResult]) -> CommandResult:
    """asyncio: run the command in a task of its own and wait for it.

    ``Task.cancel()`` ignores anyio's shields, and agent frameworks (openai-agents,
    LangGraph, LlamaIndex) cancel a tool's task again after the first cancel: cleanup in
    the caller's task would be cut short after SIGTERM, leaving a group that ignores it
    running and the call unsettled.  No one cancels this task but the command itself.
    """
    import asyncio

    task = asyncio.get_running_loop().create_task(run)
    _running.add(task)
    task.add_done_callback(_forget)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        command.stop()
        with anyio.CancelScope(shield=True):
            await asyncio.wait([task])  # a second cancel ends only this wait; the group is stopped anyway
        raise


def _forget(task: Any) -> None:
    _running.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a caller cancelled again no longer awaits it (see the call's record)


#: how long a stopped command's pipes are read for what it wrote before it died
_DRAIN_SECONDS = 1.0


async def _pump(stream: anyio.abc.ByteReceiveStream | None, sink: bytearray) -> None:
    if stream is None:
        return
    async for data in stream:
        sink += data


class _Command:
    """One ``run_command``: spawn, read, wait; stop the group on cancel; settle the call, always."""

    def __init__(self, argv: tuple[str, ...], grace: float, call: ToolCall | None) -> None:
        self.argv = argv
        self.grace = grace
        self.call = call
        self.cancel_scope = anyio.CancelScope()
        self.stopping = False  # the calling task was cancelled
        self.process: anyio.abc.Process | None = None
        self.out, self.err = bytearray(), bytearray()
        if call is not None:
            call.cancel_scope = self.cancel_scope
            if call.aborted is not None:
                self.cancel_scope.cancel()

    def stop(self) -> None:
        """The calling task was cancelled: stop the command (and say why in its record)."""
        self.stopping = True
        if self.call is not None and self.call.aborted is None:
            self.call.aborted = CancelReason(ReasonCode.CANCELLED, "the task running the command was cancelled")
        self.cancel_scope.cancel()

    def result(self) -> CommandResult:
        process = self.process
        assert process is not None
        return CommandResult(self.argv, process.returncode, bytes(self.out), bytes(self.err), process.pid)

    async def run(
        self, spawn: Callable[[], Awaitable[anyio.abc.Process]], input: bytes | None, check: bool
    ) -> CommandResult:
        try:
            # Shielded: a cancel landing mid-spawn would lose the child (asyncio then kills
            # only the direct child, never its group).  It is honoured right after.
            with anyio.CancelScope(shield=True):
                self.process = process = await spawn()
        except BaseException as exc:
            self._settle(exc, check)
            raise
        if self.call is not None:
            self.call.detail["pid"] = process.pid
        failure: BaseException | None = None
        try:
            with self.cancel_scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_pump, process.stdout, self.out)
                    tg.start_soon(_pump, process.stderr, self.err)
                    if input is not None and process.stdin is not None:
                        await process.stdin.send(input)
                        await process.stdin.aclose()
                    await process.wait()
        except BaseException as exc:  # cancelled from outside (trio: the caller's scopes) or failed
            failure = exc
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._close(process)
            error = self._settle(failure, check)
        if error is not None:
            raise error
        return self.result()

    async def _close(self, process: anyio.abc.Process) -> None:
        if process.returncode is None:
            how = await _stop_group(process, self.grace)
            if self.call is not None:
                self.call.detail["stopped_by"] = how
            # What the group wrote before it was stopped may still sit in the pipes: keep it.
            # Bounded, since a process outside the group may still hold them open.
            with anyio.move_on_after(_DRAIN_SECONDS):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_pump, process.stdout, self.out)
                    tg.start_soon(_pump, process.stderr, self.err)
        await process.aclose()  # close the pipes (the process has exited by now)

    def _settle(self, failure: BaseException | None, check: bool) -> BaseException | None:
        """Record the call's outcome; returns the error to raise when the command itself did not fail."""
        call, process = self.call, self.process
        if call is not None and process is not None:  # kept on every path, a cancellation included
            call.detail["returncode"] = process.returncode
            call.detail["stdout_tail"] = bytes(self.out[-_TAIL:]).decode(errors="replace")
        if failure is not None:
            if call is not None:
                if self.stopping and not call.done:
                    call.finish("aborted")
                _settle_failure(call, failure)
            return None
        if self.cancel_scope.cancelled_caught:
            if call is not None:
                call.finish("aborted")
            reason = (call.aborted if call is not None else None) or CancelReason(
                ReasonCode.CANCELLED, "the task running the command was cancelled"
            )
            return CommandCancelled(reason, call.scope.name if call is not None else None, self.result())
        if check and process is not None and process.returncode:
            error = subprocess.CalledProcessError(process.returncode, list(self.argv), bytes(self.out), bytes(self.err))
            if call is not None:
                call.finish("failed", error)
            return error
        if call is not None:
            call.finish("completed")
        return None


async def _stop_group(process: anyio.abc.Process, grace: float) -> str:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; reap.  Returns which signal did it."""
    pgid = process.pid  # start_new_session: the child leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
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
