"""MCP (the Model Context Protocol, SDK ``mcp`` 2.x): requests a session sends, owned by the ambient scope.

A client session is usually opened once and shared by many web requests, so a
scope owns each *request* the session sends from inside it, not the session:

* refused, never written, once the scope is cancelled;
* on cancel the awaiting caller gets ``ScopeCancelled`` at once and the server is
  told, the way the negotiated protocol says: the SDK's own
  ``notifications/cancelled`` (stdio, and streamable HTTP up to 2025-11-25), or
  the abort of the request's POST (streamable HTTP 2026-07-28), which the SDK
  sends when the task awaiting the request is cancelled.  That task is the catch:
  the SDK stops what its caller's task stops, and nobody stops a call whose task
  the request never cancels (a framework's task, a fire-and-forget task, a worker
  thread, a cancel by id).  Here the scope cancels it, wherever it runs;
* ``initialize`` and ``server/discover`` are never owned (the spec forbids
  cancelling them);
* each request is a ``CallRecord`` (provider ``"mcp"``, operation the method,
  ``detail["tool"]`` for ``tools/call``, ``detail["server"]``, ``detail["error_code"]``
  for a JSON-RPC error); ``_metrics`` and ``otel`` read these (``execute_tool``).

The SDK's request runs in a task of the session's own task group, never in the
caller's: openai-agents, LangGraph and LlamaIndex cancel a tool's task a second
time after the first, and a native ``Task.cancel()`` goes through anyio's shields,
so in the caller's task the SDK's shielded courtesy cancel could be cut short and
the server never told.  That task runs under no scope (``detached()``): the SDK
sends each streamable HTTP POST in the context of the task that wrote it, and a
scoped HTTP client there would refuse the courtesy cancel's own POST, or end the
session's transport with the ``ScopeCancelled`` of an aborted POST.  Nor would a
closed socket be enough: the SDK's server ran a tool of a 2025-11-25 stateful
session to its end after the POST's connection was dropped (measured).  So this
module needs no scoped HTTP transport: the MCP layer is where the cancel is said.

The hard stop (``hard_stop=seconds``, opt-in per session) is for servers that
ignore cancels: that long after a call of the session was aborted, the session is
closed, and a stdio server's whole process group gets SIGTERM, then SIGKILL (as
``run_command`` does).  It stops every call of the session, so use it for a
session per request or a server you know ignores cancels.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import signal
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import mcp
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from .._exceptions import ScopeCancelled
from .._loop import LoopHandle
from .._reasons import CancelReason, ReasonCode
from .._report import CallRecord, Outcome
from .._scope import RequestScope, current_scope, detached, registry

__all__ = ["Client", "ClientSession", "scope_session"]

logger = logging.getLogger("scoped_clients")

PROVIDER = "mcp"
#: requests the spec forbids cancelling: sent as the SDK sends them, never owned by a scope
NEVER_CANCELLED = frozenset({"initialize", "server/discover"})
#: seconds between SIGTERM and SIGKILL when a hard stop ends a stdio server's process group
KILL_GRACE = 2.0
_POLL = 0.01
_LINK = "_scoped_clients_mcp"

RawSend = Callable[..., Awaitable[dict[str, Any]]]


def _registry(scope: RequestScope, op: str, call: _McpCall, record: CallRecord | None = None) -> bool:
    """The one place this module uses the scope's call registry (``admit``, ``release``, ``refuse``).

    ``admit`` returns whether the call is shielded (``scope.shield()``): not to be aborted by the scope.
    """
    calls = registry(scope)
    if op == "admit":
        return calls.admit(call)
    if op == "release":
        calls.release(call, record)
    else:
        assert record is not None
        calls.refuse(record)
    return False


# ------------------------------------------------------------------ one request


class _McpCall:
    """One request a session sent for a scope (the scope's ``Owned`` protocol)."""

    def __init__(self, scope: RequestScope, link: _Link, method: str, params: Mapping[str, Any] | None) -> None:
        self.scope = scope
        self.link = link
        self.method = method
        self.loop = LoopHandle()
        self.started_at = time.monotonic()
        self.cancel_scope: anyio.CancelScope | None = None
        #: the SDK's request, abandoned with the caller's wait (one loop turn sooner than by the caller)
        self.request: _Request | None = None
        self.aborted: CancelReason | None = None
        self.orphan = False
        self.shielded = False
        self.done = False
        self.settled = anyio.Event()
        self.record: CallRecord | None = None
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self.detail: dict[str, object] = {"server": link.server}
        name = (params or {}).get("name")
        if method == "tools/call" and isinstance(name, str):
            self.detail["tool"] = name
        #: the caller was released; the call settles once the session's hard stop is done
        self.stopping = False

    def abort(self, reason: CancelReason, *, orphan: bool = False) -> None:
        if self.done or self.aborted is not None or self.shielded:
            return
        self.aborted, self.orphan = reason, orphan
        self.loop.run(self._cancel)

    def _cancel(self) -> None:
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()
        if self.request is not None:
            self.request.abandon()

    def final_record(self) -> CallRecord:
        if self.record is None:
            reason = self.aborted
            self.record = CallRecord(
                provider=PROVIDER,
                operation=self.method,
                model=None,
                outcome=self.outcome or "aborted",
                started_at=self.started_at,
                duration=time.monotonic() - self.started_at,
                cancel_reason=reason.code if reason else None,
                cancelled_at=reason.time if reason and self.outcome != "refused" else None,
                orphan=self.orphan,
                error=self.error,
                detail=dict(self.detail),
            )
        return self.record

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.outcome = outcome
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"
            if isinstance(error, MCPError):  # the JSON-RPC error code: OpenTelemetry's error.type
                self.detail["error_code"] = error.code
        self.settled.set()
        _registry(self.scope, "release", self, self.final_record())

    def refuse(self, reason: CancelReason) -> None:
        self.aborted, self.outcome, self.done = reason, "refused", True
        self.detail["written"] = False
        _registry(self.scope, "refused", self, self.final_record())

    def released(self, *, by_scope: bool = True) -> None:
        """The caller was released: settle now, or, when the scope's cancel did it, once the session's
        hard stop has run (a caller's own cancellation, a timeout of its own, does not stop the session)."""
        if by_scope and self.link.hard_stop is not None and not self.done:
            self.stopping = True
            self.link.schedule_stop(self)
        else:
            self.finish("aborted")

    async def aclose_on_exit(self) -> None:
        """The scope is ending: let an aborted call settle (the caller unwinding, a hard stop running)."""
        if threading.get_ident() == self.loop.thread_id:
            await self.settled.wait()

    def close_on_exit(self) -> None:
        pass


class _Request:
    """The SDK's own ``send_raw_request``, run in a task of the session's task group.

    No cancel of the caller's task reaches it: only ``abandon()``, which cancels it the
    way the SDK expects a caller to (the SDK then tells the server, shielded), and the
    session's own exit.
    """

    def __init__(self, send: RawSend, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.send, self.args, self.kwargs = send, args, kwargs
        self.cancel_scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    async def run(self) -> None:
        try:
            with self.cancel_scope, detached():
                self.result = await self.send(*self.args, **self.kwargs)
        except anyio.get_cancelled_exc_class():  # the session is closing
            self.error = MCPError(code=CONNECTION_CLOSED, message="Connection closed")
            raise
        except BaseException as exc:  # an MCPError...: the caller's, never the session's task group's
            self.error = exc
        finally:
            self.done.set()

    def abandon(self) -> None:
        """Stop waiting: before the write, nothing is sent; after it, the SDK tells the server."""
        self.cancel_scope.cancel()

    def outcome(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


async def _send_owned(link: _Link, method: str, params: Mapping[str, Any] | None, *args: Any, **kwargs: Any) -> Any:
    """``Dispatcher.send_raw_request`` of a scoped session: the request is owned by the ambient scope."""
    scope = current_scope()
    group = link.task_group()
    if scope is None or method in NEVER_CANCELLED or group is None:
        return await link.send(method, params, *args, **kwargs)
    call = _McpCall(scope, link, method, params)
    try:
        call.shielded = _registry(scope, "admit", call)
    except ScopeCancelled as refused:
        call.refuse(refused.reason)
        raise
    request = call.request = _Request(link.send, (method, params, *args), kwargs)
    await _wait(call, request, group)
    try:
        result = request.outcome()
    except BaseException as exc:
        call.finish("failed", exc)
        raise
    if method == "tools/call" and result.get("isError") is True:
        call.detail["is_error"] = True
    call.finish("completed")
    return result


async def _wait(call: _McpCall, request: _Request, group: anyio.abc.TaskGroup) -> None:
    """Start the SDK's request in the session's task group and wait for it, or for the scope's cancel.

    Returns once the request is done; raises ``ScopeCancelled`` on the scope's cancel, or the
    caller's own cancellation; either way the request is abandoned (the SDK tells the server).
    """
    try:
        with anyio.CancelScope() as cancel_scope:
            call.cancel_scope = cancel_scope
            if call.aborted is None:
                group.start_soon(request.run, name=f"scoped_clients mcp {call.method}")
                await request.done.wait()
    except BaseException as exc:  # the caller's own cancellation (its task, an enclosing scope)
        request.abandon()
        if call.aborted is None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            call.finish("failed", exc)
            raise
        by_scope = call.aborted is not None
        call.aborted = call.aborted or CancelReason(ReasonCode.CANCELLED, "the task awaiting the request was cancelled")
        call.released(by_scope=by_scope)
        raise
    if not request.done.is_set():  # the scope's cancel
        request.abandon()
        call.released()
        assert call.aborted is not None
        raise ScopeCancelled(call.aborted, call.scope.name)


# ------------------------------------------------------------------ one session


class _Link:
    """What a scoped session knows: its SDK send, its task group, its hard stop."""

    def __init__(
        self,
        session: mcp.ClientSession,
        send: RawSend,
        *,
        hard_stop: float | None,
        server: str,
        process: Callable[[], Any] | None,
    ) -> None:
        self.session = session
        self.send = send
        self.hard_stop = hard_stop
        self.server = server
        self.process = process
        self.stops: list[_McpCall] = []
        self.stopped = False

    def task_group(self) -> anyio.abc.TaskGroup | None:
        group: anyio.abc.TaskGroup | None = getattr(self.session, "_task_group", None)
        return group

    def schedule_stop(self, call: _McpCall) -> None:
        """A call was aborted: in ``hard_stop`` seconds, stop the session (once) and settle the calls."""
        if self.stopped:
            call.detail["hard_stop"] = "already stopped"
            call.finish("aborted")
            return
        self.stops.append(call)
        group = self.task_group()
        if len(self.stops) == 1 and group is not None:
            group.start_soon(self._stop_later, name="scoped_clients mcp hard stop")

    async def _stop_later(self) -> None:
        assert self.hard_stop is not None
        how = "session_closed"  # the session ended first: the SDK's own shutdown stopped the server
        try:
            await anyio.sleep(self.hard_stop)
            with anyio.CancelScope(shield=True):
                how = await self._stop()
        finally:
            self.stopped = True
            for call in self.stops:
                call.detail["hard_stop"] = how
                call.detail["hard_stop_after_s"] = self.hard_stop
                call.finish("aborted")
            self.stops.clear()

    def _close_dispatcher(self) -> None:
        """End the session's receive loop: its pending and later requests get ``CONNECTION_CLOSED``.

        Not its task group's cancel scope: the code inside ``async with session`` (an app's
        lifespan, an agent's run) runs in it and would be cancelled too.
        """
        read = getattr(self.session._dispatcher, "_read_stream", None)
        if read is not None:
            read.close()

    async def _stop(self) -> str:
        process = self.process() if self.process is not None else None
        if process is None or process.returncode is not None:
            logger.warning(
                "MCP server %s: hard stop %ss after a cancel, closing the session", self.server, self.hard_stop
            )
            self._close_dispatcher()
            return "session_closed"
        logger.warning("MCP server %s: hard stop, SIGTERM to its process group %d", self.server, process.pid)
        return await _stop_group(process.pid, lambda: process.returncode is not None)


async def _stop_group(pgid: int, exited: Callable[[], bool]) -> str:
    """SIGTERM the group, SIGKILL it after ``KILL_GRACE``; returns which signal did it.

    The process is reaped by the SDK's own stdio transport (it polls ``returncode``),
    so this only polls too.
    """
    _killpg(pgid, signal.SIGTERM)
    with anyio.move_on_after(KILL_GRACE):
        while not exited():  # noqa: ASYNC110 (the SDK's transport reaps it; we only look)
            await anyio.sleep(_POLL)
        _killpg(pgid, signal.SIGKILL)  # what the leader left behind in its group
        return "SIGTERM"
    _killpg(pgid, signal.SIGKILL)
    return "SIGKILL"


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _check_hard_stop(hard_stop: object) -> float | None:
    if hard_stop is None:
        return None
    if isinstance(hard_stop, bool) or not isinstance(hard_stop, int | float) or not math.isfinite(hard_stop):
        raise TypeError(
            f"hard_stop is the seconds a server gets to honour a cancel: a finite number, not {hard_stop!r}"
        )
    if hard_stop < 0:
        raise ValueError(f"hard_stop must be >= 0 seconds (None: never), got {hard_stop!r}")
    return float(hard_stop)


def scope_session(
    session: mcp.ClientSession,
    *,
    hard_stop: float | None = None,
    _server: str = "unknown",
    _process: Callable[[], Any] | None = None,
) -> mcp.ClientSession:
    """Make every request ``session`` sends from inside a scope owned by that scope; returns it.

    For a session a framework built (openai-agents' ``MCPServerStreamableHttp.session``...),
    entered or not.  ``hard_stop``: seconds after a call was aborted before the session
    is closed (for servers that ignore cancels; it stops every call of the session).
    Idempotent: a second call only changes ``hard_stop``.
    """
    if not isinstance(session, mcp.ClientSession):
        raise TypeError(f"scope_session() takes an mcp.ClientSession, not {type(session).__qualname__}")
    grace = _check_hard_stop(hard_stop)
    dispatcher = session._dispatcher
    link: _Link | None = getattr(session, _LINK, None)
    if link is not None:
        link.hard_stop = grace
        return session
    vendor_send = dispatcher.send_raw_request
    link = _Link(session, vendor_send, hard_stop=grace, server=_server, process=_process)
    setattr(session, _LINK, link)
    dispatcher.send_raw_request = functools.partial(_send_owned, link)  # type: ignore[method-assign]
    return session


def is_scoped(session: object) -> bool:
    return getattr(session, _LINK, None) is not None


# ------------------------------------------------------------------ drop-in names


def _stdio_process(transport: Any) -> Callable[[], Any]:
    """The server process of an entered ``stdio_client(...)``, found in its generator's frame.

    The SDK spawns the server in its own process group and keeps the process to
    itself; the hard stop needs its id.  Looked up by shape (a ``pid`` and a
    ``returncode``), not by the local's name.
    """

    def find() -> Any:
        frame = getattr(getattr(transport, "gen", None), "ag_frame", None)
        for value in frame.f_locals.values() if frame is not None else ():
            if isinstance(getattr(value, "pid", None), int) and hasattr(value, "returncode"):
                return value
        return None

    return find


class _DropIn(type):
    """Metaclass of the drop-in names: calling one builds the vendor's object, scoped.

    ``type(obj)`` is the vendor's class; ``isinstance(obj, scoped_clients.mcp.Client)``
    tells a scoped one from a plain one.
    """

    vendor: type

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, cls.vendor) and getattr(instance, _LINK, None) is not None

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(cls.vendor, name)

    def __repr__(cls) -> str:
        return f"<scoped drop-in for {cls.vendor.__module__}.{cls.vendor.__qualname__}>"


def _signature(vendor: type) -> inspect.Signature:
    signature = inspect.signature(vendor)
    option = inspect.Parameter("hard_stop", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="float | None")
    return signature.replace(parameters=[*signature.parameters.values(), option])


class ClientSession(metaclass=_DropIn):
    """``mcp.ClientSession`` whose requests are owned by the ambient scope (plus ``hard_stop=``)."""

    vendor = mcp.ClientSession

    def __new__(cls, *args: Any, hard_stop: float | None = None, **kwargs: Any) -> Any:
        grace = _check_hard_stop(hard_stop)
        return scope_session(mcp.ClientSession(*args, **kwargs), hard_stop=grace)


class Client(metaclass=_DropIn):
    """``mcp.Client`` whose requests are owned by the ambient scope (plus ``hard_stop=``)."""

    vendor = mcp.Client

    def __new__(cls, server: Any, *args: Any, hard_stop: float | None = None, **kwargs: Any) -> Any:
        grace = _check_hard_stop(hard_stop)
        process: Callable[[], Any] | None = None
        given = server
        if isinstance(server, StdioServerParameters):
            # What the vendor does with these parameters, with the transport kept here: its process is
            # the hard stop's target.  ``client.server`` is set back to the parameters below.
            transport = stdio_client(server)
            process, server = _stdio_process(transport), transport
        client = mcp.Client(server, *args, **kwargs)
        client.server = given
        build = client._build_session
        label = _label(given)

        @functools.wraps(build)
        async def _build_session(exit_stack: contextlib.AsyncExitStack) -> mcp.ClientSession:
            session = await build(exit_stack)
            return scope_session(session, hard_stop=grace, _server=label, _process=process)

        client._build_session = _build_session  # type: ignore[method-assign]
        setattr(client, _LINK, {"hard_stop": grace})
        return client


ClientSession.__signature__ = _signature(mcp.ClientSession)  # type: ignore[attr-defined]
Client.__signature__ = _signature(mcp.Client)  # type: ignore[attr-defined]


def _label(server: object) -> str:
    """How a report names the server: its URL (without credentials), its command, or its type."""
    if isinstance(server, str):
        parts = urllib.parse.urlsplit(server)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    if isinstance(server, StdioServerParameters):
        return f"stdio:{os.path.basename(server.command)}"
    return type(server).__name__
