"""The scoped transport: one cancellation mechanism for every SDK.

It wraps the SDK's own httpx / httpx2 transport.  Every request made while a
``RequestScope`` is current becomes an ``HttpCall`` registered with it.  How a
call is aborted depends on where it is:

* **before send** a cancelled scope refuses it: nothing reaches the network;
* **async, waiting for headers**: an ``anyio.CancelScope`` around the pending
  request is cancelled *on the loop that owns the connection*, so httpcore's
  own shielded cleanup closes the socket;
* **async, body**: the connection's socket is shut down (``SHUT_RDWR``) on the
  owning loop.  A pending read wakes at once with EOF and an idle stream (one
  nobody is reading) is closed at the TCP level, so the server sees the FIN
  either way.  We do not put a ``CancelScope`` around every chunk read: that
  costs 4 us per chunk on asyncio and 9 us on trio (measured), a few percent of
  streaming throughput, for no earlier disconnect.  Streams without a socket
  (mock and ASGI transports) and HTTP/2 streams fall back to that per-read
  ``CancelScope``;
* **sync**: ``socket.shutdown(SHUT_RDWR)`` from the cancelling thread: closing
  a response from another thread does not wake a blocked ``recv``, shutdown
  does.  The socket is tracked by wrapping the pool's network backend, so new,
  TLS and reused pooled connections are all covered.

A call aborted by its scope raises ``ScopeCancelled`` (a ``BaseException``):
the SDKs' retry loops, which catch ``Exception``, never retry it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import anyio

from .._calls import CallInfo, Meter, Preparing, Profile
from .._exceptions import ScopeCancelled
from .._loop import LoopHandle
from .._reasons import CancelReason
from .._registry import CallRegistry, join
from .._report import CallRecord, Outcome
from .._scope import RequestScope
from .._vendors import plan_stream
from .._vendors._assemble import StreamPlan
from . import FinishPolicy
from ._record import build_record
from ._sockets import current, shutdown_socket, socket_of

_PENDING, _BODY, _DONE = 0, 1, 2
_NULL_METER = Meter()
#: body chunks a reader keeps before its meter counts them (``HttpCall.settle``): the meter
#: then sees one joined batch instead of one call per chunk, and memory stays bounded
#: (httpcore reads at most 64 KiB at a time: 2 MiB at worst, a few KiB for an SSE stream)
BATCH = 32


def _request_body(request: Any) -> bytes:
    try:
        content = request.content
    except Exception:  # a streamed upload: describe the call without its body
        return b""
    return content if isinstance(content, bytes) else b""


class HttpCall:
    """One HTTP request in flight under a scope (an ``Owned`` of its ``CallRegistry``)."""

    __slots__ = (
        "aborted",
        "body_closer",
        "detail",
        "error",
        "finish_policy",
        "info",
        "lock",
        "loop",
        "meter",
        "orphan",
        "outcome",
        "pending",
        "pending_scope",
        "phase",
        "profile",
        "read_scope",
        "record",
        "registry",
        "scope",
        "shielded",
        "sock",
        "started_at",
        "status_code",
        "tracked",
    )

    def __init__(
        self,
        scope: RequestScope,
        info: CallInfo,
        profile: Profile,
        loop: LoopHandle | None,
        finish_policy: FinishPolicy,
    ) -> None:
        self.scope = scope
        self.registry: CallRegistry = scope._registry
        self.info = info
        self.profile = profile
        self.loop = loop
        self.finish_policy = finish_policy
        self.lock = threading.Lock()
        self.started_at = time.monotonic()
        self.phase = _PENDING
        self.meter: Meter = _NULL_METER
        #: body chunks read but not yet fed to the meter (``settle``), once a body is attached
        self.pending: list[bytes] | None = None
        self.aborted: CancelReason | None = None
        self.orphan = False
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self.status_code: int | None = None
        self.pending_scope: anyio.CancelScope | None = None
        self.read_scope: anyio.CancelScope | None = None
        self.sock: Any = None
        self.tracked: Any = None
        self.body_closer: Any = None
        self.record: CallRecord | None = None
        self.detail: dict[str, object] = {}
        self.shielded = False

    # -------------------------------------------------------------- aborting

    def abort(self, reason: CancelReason, *, orphan: bool = False) -> None:
        loop = self.loop
        on_loop = loop is not None and threading.get_ident() == loop.thread_id
        with self.lock:
            if self.phase == _DONE or self.aborted is not None or self.shielded:
                return
            if self.finish_policy == "finish_if_done" and not orphan and self._settled().finish_reason is not None:
                # The provider has finished generating: let the last bytes (its billed
                # usage) arrive instead of aborting.  The scope still ends the call at exit.
                self.detail["finished_after_cancel"] = True
                return
            self.aborted = reason
            self.orphan = orphan
            if on_loop and self.pending_scope is None and self.sock is not None:
                # A body read on this very loop (a mass cancel is a thousand of these): the
                # socket now, under the lock already held (``_abort_on_loop`` without the detour).
                shutdown_socket(self.sock)
                return
        if loop is None:
            self._shutdown()
        elif on_loop:
            self._abort_on_loop()
        else:
            loop.post(self._abort_on_loop)

    def _abort_on_loop(self) -> None:
        if self.pending_scope is not None:
            self.pending_scope.cancel()
        elif self.sock is not None:
            self._shutdown()
        elif self.read_scope is not None:
            self.read_scope.cancel()

    def _shutdown(self) -> None:
        with self.lock:
            if self.phase == _DONE:
                return
            tracked = self.tracked
            if tracked is not None:  # sync: only while the pooled stream is still ours
                if tracked.owner is self:
                    shutdown_socket(tracked.raw_socket())
            elif self.sock is not None:
                shutdown_socket(self.sock)

    def refused(self, reason: CancelReason) -> CallRecord:
        """The scope refused the call before it was sent: its record (``refused``)."""
        self.aborted = reason
        self.phase = _DONE
        self.outcome = "refused"
        return build_record(self, settled=True)

    def cancelled_error(self) -> ScopeCancelled:
        assert self.aborted is not None
        return ScopeCancelled(self.aborted, self.scope.name)

    # ------------------------------------------------------------- lifecycle

    def headers_received(self, response: Any) -> None:
        self.status_code = response.status_code
        self.meter = _meter_for(self, response.headers.get("content-type", ""))
        sock = None
        if self.loop is not None:
            extensions = response.extensions
            stream = extensions.get("network_stream")
            if stream is not None and extensions.get("http_version") != b"HTTP/2":
                sock = socket_of(stream)
        with self.lock:
            self.phase = _BODY
            self.sock = sock

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        with self.lock:
            if self.phase == _DONE:
                return
            self.phase = _DONE
            self.sock = None
            self.tracked = None
            # The body refers to the call: dropping the call's hold on the body breaks that cycle, so
            # that a finished call is freed at once rather than left to the cycle collector (~9 objects
            # a call, and a gen-0 collection every ~50 calls that the HTTP library's code then pays for).
            # Only an unfinished call is closed at the scope's exit.
            self.body_closer = None
            if self.aborted is not None and outcome != "completed":
                outcome = "aborted"
            if error is not None and outcome == "failed":
                self.error = f"{type(error).__name__}: {error}"
        self._close_meter()
        if outcome == "completed":
            if self.status_code is not None and self.status_code >= 400:
                outcome, self.error = "failed", f"HTTP {self.status_code}"
            elif self.meter.error is not None:
                outcome, self.error = "failed", self.meter.error
        self.outcome = outcome
        record = self.record
        if record is None:
            record = self.record = build_record(self, settled=True)
        self.registry.release(self, record)

    def settle(self) -> None:
        """Feed the meter the body chunks read so far (from the body's reader, or before a figure is read)."""
        with self.lock:
            self._settled()

    def _settled(self) -> Meter:
        """``settle`` with the lock held: the meter, every chunk read so far counted."""
        pending = self.pending
        if pending:
            count = len(pending)  # a reader in another thread may append meanwhile: keep its chunks
            data = pending[0] if count == 1 else b"".join(pending[:count])
            del pending[:count]
            try:
                self.meter.feed(data)
            except Exception:  # a meter never breaks the caller
                pass
        return self.meter

    def _close_meter(self) -> None:
        try:
            self.settle()
            self.meter.close()
        except Exception:  # a meter never breaks the caller
            pass

    def final_record(self) -> CallRecord:
        if self.record is not None:
            return self.record
        self._close_meter()
        self.record = build_record(self)
        return self.record

    async def aclose_on_exit(self) -> None:
        closer = self.body_closer
        if closer is not None and self.loop is not None and threading.get_ident() == self.loop.thread_id:
            await closer()

    def close_on_exit(self) -> None:
        closer = self.body_closer
        if closer is not None and self.loop is None:
            closer()


def _meter_for(call: HttpCall, content_type: str) -> Meter:
    if call.status_code is None:
        return _NULL_METER
    try:
        return call.profile.meter(call.info, call.status_code, content_type)
    except Exception:
        return _NULL_METER


_preparing: dict[type, bool] = {}


def _prepares(profile: Profile) -> bool:
    """Whether a profile has the optional ``prepare`` step (``Preparing``), asked once per profile class."""
    prepares = _preparing.get(type(profile))
    if prepares is None:
        prepares = _preparing[type(profile)] = isinstance(profile, Preparing)
    return prepares


def open_call(
    scope: RequestScope, request: Any, profile: Profile, loop: LoopHandle | None, finish_policy: FinishPolicy
) -> HttpCall:
    """Describe and admit a call; a cancelled scope refuses it (recorded as ``refused``)."""
    try:
        info = profile.describe(request.method, str(request.url), _request_body(request))
    except Exception:
        info = CallInfo(provider="http", operation=f"{request.method} {request.url.host}{request.url.path}")
    call = HttpCall(scope, info, profile, loop, finish_policy)
    if _prepares(profile):
        profile.prepare(request, scope)  # type: ignore[attr-defined]
    call.shielded = join(call.registry, call, call.refused)
    return call


# ---------------------------------------------------------------------- async


def is_native_cancel(exc: BaseException) -> bool:
    return isinstance(exc, anyio.get_cancelled_exc_class())


def planned(request: Any, always_stream: bool, call: HttpCall | None) -> tuple[Any, StreamPlan | None]:
    """``always_stream``: the request to send (the streamed form of a generation its vendor plans) and the plan."""
    plan = plan_stream(request) if always_stream else None
    if plan is None:
        return request, None
    if call is not None:
        call.detail["always_stream"] = True  # noted on the call's record
    return plan.request, plan


def received(
    plan: StreamPlan | None, response: Any, call: HttpCall | None, body_cls: type, closer: str
) -> tuple[Any, StreamPlan | None]:
    """Headers are in: the response to hand over, and the plan whose stream must first be read to its end.

    A planned stream (a 2xx event stream) is tapped under the scoped body, so that
    the assembler sees every chunk; anything else goes to the SDK as it is.
    """
    reading = plan if plan is not None and plan.accepts(response) else None
    if reading is not None:
        reading.tap(response, call)
    if call is not None:
        response = _attach_body(call, response, body_cls, closer)
    return response, reading


def _attach_body(call: HttpCall, response: Any, body_cls: type, closer: str) -> Any:
    """Headers are in: meter the body from now on, and let the scope close it at exit."""
    call.headers_received(response)
    content = getattr(response, "_content", None)
    if isinstance(content, bytes):
        # Built in memory (a mock transport's response): the body is delivered already.
        call.meter.feed(content)
        call.finish("completed")
        return response
    if type(call.meter).feed is not Meter.feed:  # a meter that counts nothing keeps no chunks
        call.pending = []
    body = body_cls(response.stream, call)
    call.body_closer = getattr(body, closer)
    response.stream = body
    return response


def _raise_for(call: HttpCall, exc: BaseException) -> None:
    """Record a call that raised and re-raise the right exception."""
    if call.aborted is not None and not (call.loop is not None and is_native_cancel(exc)):
        call.finish("aborted")
        raise call.cancelled_error() from exc
    if call.loop is not None and is_native_cancel(exc):
        # A native cancellation: let it travel. When the scope has aborted the call it is the
        # scope's own (its body's cancel scope reached the read before the shut socket's EOF);
        # else someone else's (the body's, a timeout of the user's), recorded as such.
        if call.aborted is None:
            call.detail["cancelled_by"] = "task"
        call.finish("aborted")
        raise exc
    call.finish("failed", exc)
    raise exc


#: the transport's name for it (``_raise_for`` is the bodies' own)
raise_for = _raise_for


class AsyncBodyMixin:
    """The response body of a scoped async call; subclassed with each library's ``AsyncByteStream``.

    Iterating it gives one async generator of ours (``_read``), made at the first iteration and
    kept: a second iteration (openai drains ``response.stream`` after ``[DONE]`` while its first
    iterator is still suspended) goes on where the first stopped, as the library's own stream does.
    An HTTP library's own generator above it (httpx's ``BoundAsyncStream.__aiter__``) never closes
    what it iterates when its reader stops early, so the body closes ours when it is closed: nothing
    we open is left to the garbage collector (trio warns about each one; tests/test_body_generators.py).
    A generator rather than an iterator object: its ``asend`` is a C-level step, where an
    ``async def __anext__`` makes a coroutine of its own for every chunk (0.3 us an event measured
    through the whole stack; benchmarks/README.md, issue 23 round 4). Over httpx's or httpx2's own
    response stream it reads the httpcore iterator beneath, under the library's exception mapping
    (``_library_stream``), and closes that iterator too when the body is closed: httpx2 2.17's own
    response stream leaves it to the collector.
    """

    #: the HTTP library's own response stream class and the exception mapping its ``__aiter__``
    #: applies (``LibraryClasses`` sets them per library): a body over one of those reads the
    #: httpcore stream beneath it directly, under that same mapping, rather than through one
    #: more generator per chunk (~0.3 us an event at the HTTP layer, issue 23 round 5)
    _library_stream: ClassVar[tuple[type, Callable[[], AbstractContextManager[None]]] | None] = None

    def __init__(self, inner: Any, call: HttpCall) -> None:
        self._inner = inner
        self._call = call
        self._reader: AsyncGenerator[bytes, None] | None = None
        #: the httpcore stream's iterator the reader reads, when it reads beneath the library's stream
        self._below: Any = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        reader = self._reader
        if reader is None:
            inner, errors, library = self._inner, None, self._library_stream
            if library is not None and type(inner) is library[0]:
                below = getattr(inner, "_httpcore_stream", None)
                if below is not None:
                    inner = self._below = below.__aiter__()
                    errors = library[1]
            reader = self._reader = _read(inner, self._call, errors)
        return reader

    async def aclose(self) -> None:
        call = self._call
        try:
            # A finished reader (every complete call) has no frame and needs no closing: no shielded
            # cancel scope for it (4-9 us a call). One still running in another task refuses to be
            # closed here (``_close_quietly`` lets that pass): it closes itself as it unwinds.
            if getattr(self._reader, "ag_frame", None) is not None:
                await _close_quietly(self._reader)
            if getattr(self._below, "ag_frame", None) is not None:
                # What the reader read, closed once the reader is done: closing it waits for httpcore's
                # cleanup, and a reader suspended in that wait would be "already running" to the
                # finalizer of a dropped generator above it (httpx's own, closing what it iterated).
                await _close_quietly(self._below)
            await self._inner.aclose()  # httpcore shields its own connection cleanup
        finally:
            if call.phase != _DONE:
                call.detail["closed_early"] = True
                call.finish("aborted" if call.aborted is not None else "completed")


async def _read(
    inner: Any, call: HttpCall, errors: Callable[[], AbstractContextManager[None]] | None = None
) -> AsyncGenerator[bytes, None]:
    """One pass over a scoped body: keeps each chunk for the meter, turns a cancel into ``ScopeCancelled``.

    ``errors``: the HTTP library's mapping of httpcore's exceptions to its own, when ``inner`` is the
    httpcore stream beneath the library's response stream (``AsyncBodyMixin.__aiter__``).
    """
    if call.aborted is not None:
        raise call.cancelled_error()
    # chunks are metered in batches (``HttpCall.settle``): per chunk, one append
    pending = call.pending if call.pending is not None else _DISCARD
    iterator = inner.__aiter__()
    try:
        with errors() if errors is not None else _NO_MAPPING:
            if call.sock is not None:
                async for chunk in iterator:
                    if call.aborted is not None:
                        # The socket is shut down: keep pulling until the library's own generators
                        # fail on EOF, so that none is left suspended; hand out nothing more.
                        continue
                    pending.append(chunk)
                    if len(pending) >= BATCH:
                        call.settle()
                    yield chunk
            else:
                # No socket to shut down (a mock or ASGI transport, an HTTP/2 stream): each read in a
                # cancel scope of its own, which ``abort`` cancels on the owning loop.
                assert call.loop is not None  # an async body
                while True:
                    with call.loop.cancel_scope() as read:
                        call.read_scope = read
                        try:
                            chunk = await iterator.__anext__()
                        finally:
                            call.read_scope = None
                    if read.cancelled_caught:
                        raise call.cancelled_error()
                    pending.append(chunk)
                    if len(pending) >= BATCH:
                        call.settle()
                    yield chunk
    except StopAsyncIteration:
        pass
    except ScopeCancelled:
        await _close_quietly(iterator)
        call.finish("aborted")
        raise
    except GeneratorExit:
        # Closed early (the body's ``aclose``, or the caller stopped reading): the body records it.
        # httpcore's iterator the body closes after this one (see ``aclose``): never wait in here.
        if errors is None:
            await _close_quietly(iterator)
        raise
    except BaseException as exc:
        await _close_quietly(iterator)
        _raise_for(call, exc)
    if call.aborted is not None:
        call.finish("aborted")
        raise call.cancelled_error()
    call.finish("completed")


async def _close_quietly(iterator: Any) -> None:
    """Close the library's generator now rather than leave it to the collector."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            try:
                await close()
            except Exception:
                pass


#: a reader's ``with`` when the HTTP library's exceptions need no mapping (reusable: it holds nothing)
_NO_MAPPING = nullcontext()
#: where a reader puts the chunks of a call whose meter counts nothing: appends are dropped, it never fills
_DISCARD: deque[bytes] = deque(maxlen=0)


# ----------------------------------------------------------------------- sync


class SyncBodyMixin:
    """The response body of a scoped sync call; subclassed with each library's ``SyncByteStream``."""

    def __init__(self, inner: Any, call: HttpCall) -> None:
        self._inner = inner
        self._call = call
        self._reading = False

    def __iter__(self) -> Iterator[bytes]:
        call = self._call
        pending = call.pending if call.pending is not None else _DISCARD
        if call.aborted is not None:
            raise call.cancelled_error()
        iterator = iter(self._inner)
        previous = getattr(current, "call", None)
        try:
            while True:
                current.call = call
                self._reading = True
                try:
                    chunk = next(iterator)
                except StopIteration:
                    break
                finally:
                    self._reading = False
                    current.call = previous
                if call.aborted is not None:
                    continue  # drain to the EOF the shutdown caused (see the async body)
                pending.append(chunk)
                if len(pending) >= BATCH:
                    call.settle()
                yield chunk
        except ScopeCancelled:
            call.finish("aborted")
            raise
        except GeneratorExit:
            raise
        except BaseException as exc:
            _raise_for(call, exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass
        if call.aborted is not None:
            call.finish("aborted")
            raise call.cancelled_error()
        call.finish("completed")

    def close(self) -> None:
        call = self._call
        if self._reading:
            # Another thread is blocked reading: its socket is already shut down and it
            # closes the stream itself as it unwinds.
            return
        try:
            self._inner.close()
        finally:
            if call.phase != _DONE:
                call.detail["closed_early"] = True
                call.finish("aborted" if call.aborted is not None else "completed")
