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

import os
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import anyio

from ._calls import CallInfo, Meter, Profile
from ._exceptions import ScopeCancelled
from ._loop import LoopHandle
from ._reasons import CancelReason
from ._report import CallRecord, Outcome
from ._savings import SavingsEstimate, default_estimator, get_prices
from ._scope import RequestScope, current_scope
from ._vendors import generates_tokens, plan_stream
from ._vendors._assemble import StreamPlan

FinishPolicy = Literal["abort", "finish_if_done"]
_PENDING, _BODY, _DONE = 0, 1, 2
_NULL_METER = Meter()


def shutdown_socket(sock: Any) -> None:
    """Shut a socket down for both directions, whatever object wraps it.

    A ``socket.socket`` (``ssl.SSLSocket`` included, whose own ``shutdown`` would
    tear down TLS state) is shut down through the base class; anything else
    (uvloop's pseudo-sockets refuse ``shutdown``) through a duplicate of its
    file descriptor, which reaches the same kernel socket.
    """
    if isinstance(sock, socket.socket):
        try:  # the base class's method: for an SSLSocket it skips the TLS teardown
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass
        return
    try:
        fd = sock.fileno()
    except (OSError, ValueError, AttributeError):
        return
    if fd < 0:
        return
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


def _request_body(request: Any) -> bytes:
    try:
        content = request.content
    except Exception:  # a streamed upload: describe the call without its body
        return b""
    return content if isinstance(content, bytes) else b""


class HttpCall:
    """One HTTP request in flight under a scope (the scope's ``Owned`` protocol)."""

    __slots__ = (
        "_lock",
        "aborted",
        "body_closer",
        "detail",
        "error",
        "finish_policy",
        "info",
        "loop",
        "meter",
        "orphan",
        "outcome",
        "pending_scope",
        "phase",
        "profile",
        "read_scope",
        "record",
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
        self.info = info
        self.profile = profile
        self.loop = loop
        self.finish_policy = finish_policy
        self._lock = threading.Lock()
        self.started_at = time.monotonic()
        self.phase = _PENDING
        self.meter: Meter = _NULL_METER
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
        with self._lock:
            if self.phase == _DONE or self.aborted is not None or self.shielded:
                return
            if self.finish_policy == "finish_if_done" and self.meter.finish_reason is not None and not orphan:
                # The provider has finished generating: let the last bytes (its billed
                # usage) arrive instead of aborting.  The scope still ends the call at exit.
                self.detail["finished_after_cancel"] = True
                return
            self.aborted = reason
            self.orphan = orphan
        if self.loop is not None:
            self.loop.run(self._abort_on_loop)
        else:
            self._shutdown()

    def _abort_on_loop(self) -> None:
        if self.pending_scope is not None:
            self.pending_scope.cancel()
        elif self.sock is not None:
            self._shutdown()
        elif self.read_scope is not None:
            self.read_scope.cancel()

    def _shutdown(self) -> None:
        with self._lock:
            if self.phase == _DONE:
                return
            tracked = self.tracked
            if tracked is not None:  # sync: only while the pooled stream is still ours
                if tracked.owner is self:
                    shutdown_socket(tracked.raw_socket())
            elif self.sock is not None:
                shutdown_socket(self.sock)

    def cancelled_error(self) -> ScopeCancelled:
        assert self.aborted is not None
        return ScopeCancelled(self.aborted, self.scope.name)

    # ------------------------------------------------------------- lifecycle

    def headers_received(self, response: Any) -> None:
        self.status_code = response.status_code
        content_type = response.headers.get("content-type", "")
        self.meter = _meter_for(self, content_type)
        stream = response.extensions.get("network_stream")
        http2 = response.extensions.get("http_version") == b"HTTP/2"
        with self._lock:
            self.phase = _BODY
            if self.loop is not None and stream is not None and not http2:
                self.sock = _socket_of(stream)

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        with self._lock:
            if self.phase == _DONE:
                return
            self.phase = _DONE
            self.sock = None
            self.tracked = None
            if self.aborted is not None and outcome != "completed":
                outcome = "aborted"
            if error is not None and outcome == "failed":
                self.error = f"{type(error).__name__}: {error}"
        if outcome == "completed":
            self._close_meter()
            if self.status_code is not None and self.status_code >= 400:
                outcome, self.error = "failed", f"HTTP {self.status_code}"
            elif self.meter.error is not None:
                outcome, self.error = "failed", self.meter.error
        self.outcome = outcome
        self.scope._release(self, self.final_record())

    def _close_meter(self) -> None:
        try:
            self.meter.close()
        except Exception:  # a meter never breaks the caller
            pass

    def final_record(self) -> CallRecord:
        if self.record is not None:
            return self.record
        self._close_meter()
        self.record = _build_record(self)
        return self.record

    async def aclose_on_exit(self) -> None:
        closer = self.body_closer
        if closer is not None and self.loop is not None and threading.get_ident() == self.loop.thread_id:
            await closer()

    def close_on_exit(self) -> None:
        closer = self.body_closer
        if closer is not None and self.loop is None:
            closer()


_sockets: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _socket_of(stream: Any) -> Any:
    """The socket under an httpcore network stream, cached per pooled connection.

    anyio builds a dict of every attribute on each ``extra()`` lookup: ~10 us a
    response, which a pooled connection only needs to pay once.
    """
    try:
        return _sockets[stream]
    except (KeyError, TypeError):
        sock = stream.get_extra_info("socket")
        try:
            _sockets[stream] = sock
        except TypeError:  # a stream that cannot be weakly referenced: no caching
            pass
        return sock


def _meter_for(call: HttpCall, content_type: str) -> Meter:
    if call.status_code is None:
        return _NULL_METER
    try:
        return call.profile.meter(call.info, call.status_code, content_type)
    except Exception:
        return _NULL_METER


def _build_record(call: HttpCall) -> CallRecord:
    meter = call.meter
    info = call.info
    # A call still in flight when its record is taken (the scope is ending) was aborted.
    outcome: Outcome = call.outcome or "aborted"
    now = time.monotonic()
    received = meter.tokens_out  # read once: a reader in another thread may still feed the meter
    savings = _savings_of(call, outcome, now, received)
    saved = None if savings is None else savings.tokens_saved
    cost = None if saved is None else get_prices().cost(info.model, 0, saved)
    detail = dict(call.detail)
    if call.status_code is not None:
        detail["status_code"] = call.status_code
    return CallRecord(
        provider=info.provider,
        operation=info.operation,
        model=info.model,
        outcome=outcome,
        started_at=call.started_at,
        duration=now - call.started_at,
        tokens_in=meter.tokens_in,
        tokens_out=received,
        tokens_in_source=meter.input_source,
        tokens_out_source=meter.output_source,
        tokens_saved=saved,
        tokens_saved_max=None if savings is None else savings.tokens_saved_max,
        saved_method=None if savings is None else savings.method,
        tokens_saved_source=None if savings is None else savings.tokens_saved_source,
        tokens_saved_max_source=None if savings is None else savings.tokens_saved_max_source,
        tokens_produced=None if savings is None else savings.tokens_produced,
        tokens_produced_source=None if savings is None else savings.tokens_produced_source,
        cost_saved=cost,
        cancel_reason=call.aborted.code if call.aborted is not None else None,
        cancelled_at=call.aborted.time if call.aborted is not None else None,
        orphan=call.orphan,
        error=call.error,
        finish_reason=meter.finish_reason,
        units=dict(meter.units),
        detail=detail,
    )


def _savings_of(call: HttpCall, outcome: Outcome, now: float, received: int) -> SavingsEstimate | None:
    """An aborted generation's savings figures; a completed one teaches the estimator instead.

    What the caller received is what the provider produced only for a stream it
    was reading when the abort came (the meter reads the wire format, so a
    non-streamed call sent as a stream counts too).  For anything else (a
    non-streamed body, which arrives only at the end; a stream whose headers had
    not arrived; an orphan nobody was reading) the estimator infers the output
    produced from the time the call ran before the abort.
    """
    meter, info = call.meter, call.info
    estimator = default_estimator()
    if outcome == "completed":
        if received > 0:
            estimator.observe(info.provider, info.model, received, now - call.started_at)
        return None
    if outcome != "aborted" or not (received or generates_tokens(info.provider, info.operation)):
        return None
    aborted_at = now if call.aborted is None else min(now, call.aborted.time)
    # Several choices (OpenAI's n): the bound is per choice, and the first finish reason is not the end.
    choices = info.extra.get("choices", 1)
    choices = choices if isinstance(choices, int) and choices > 1 else 1
    return estimator.estimate(
        info.provider,
        info.model,
        received,
        None if info.max_tokens is None else info.max_tokens * choices,
        streamed=meter.streamed and call.status_code is not None and not call.orphan,
        elapsed=max(0.0, aborted_at - call.started_at),
        finished=meter.finish_reason is not None and choices == 1,
    )


def open_call(
    scope: RequestScope, request: Any, profile: Profile, loop: LoopHandle | None, finish_policy: FinishPolicy
) -> HttpCall:
    """Describe and admit a call; a cancelled scope refuses it (recorded as ``refused``)."""
    try:
        info = profile.describe(request.method, str(request.url), _request_body(request))
    except Exception:
        info = CallInfo(provider="http", operation=f"{request.method} {request.url.host}{request.url.path}")
    call = HttpCall(scope, info, profile, loop, finish_policy)
    prepare = getattr(profile, "prepare", None)
    if prepare is not None:
        prepare(request, scope)
    try:
        call.shielded = scope._admit(call)
    except ScopeCancelled as refused:
        call.aborted = refused.reason
        call.phase = _DONE
        call.outcome = "refused"
        record = _build_record(call)
        scope._refused(record)
        raise
    return call


# ---------------------------------------------------------------------- async


def _is_native_cancel(exc: BaseException) -> bool:
    return isinstance(exc, anyio.get_cancelled_exc_class())


async def send_async(
    inner: Any,
    request: Any,
    profile: Profile,
    finish_policy: FinishPolicy,
    body_cls: type,
    *,
    always_stream: bool = False,
) -> Any:
    """``handle_async_request`` under the ambient scope (pass-through without one).

    ``always_stream``: a non-streamed generation is sent as a stream, read here to its
    end, and handed over as the non-streamed response (see ``_vendors._assemble``).
    """
    scope = current_scope()
    if scope is None:
        if always_stream and (plan := plan_stream(request)) is not None:
            response = await inner.handle_async_request(plan.request)
            if not plan.accepts(response):
                return response
            plan.tap(response)
            return await plan.read_async(response)
        return await inner.handle_async_request(request)
    loop = scope._loop if scope._loop is not None and scope._loop.thread_id == threading.get_ident() else LoopHandle()
    call = open_call(scope, request, profile, loop, finish_policy)
    plan = _stream_plan(call, request) if always_stream else None
    try:
        with anyio.CancelScope() as pending:
            call.pending_scope = pending
            if call.aborted is not None:  # cancelled between admission and here
                pending.cancel()
            response = await inner.handle_async_request(request if plan is None else plan.request)
    except BaseException as exc:
        call.pending_scope = None
        _raise_for(call, exc)
    call.pending_scope = None
    if pending.cancelled_caught:
        call.finish("aborted")
        raise call.cancelled_error()
    if plan is None or not plan.accepts(response):
        return _attach_body(call, response, body_cls, "aclose")
    plan.tap(response, call)
    return await plan.read_async(_attach_body(call, response, body_cls, "aclose"))


def _stream_plan(call: HttpCall, request: Any) -> StreamPlan | None:
    """``always_stream``: the streamed form of ``request``, noted on the call's record."""
    plan = plan_stream(request)
    if plan is not None:
        call.detail["always_stream"] = True
    return plan


def _attach_body(call: HttpCall, response: Any, body_cls: type, closer: str) -> Any:
    """Headers are in: meter the body from now on, and let the scope close it at exit."""
    call.headers_received(response)
    content = getattr(response, "_content", None)
    if isinstance(content, bytes):
        # Built in memory (a mock transport's response): the body is delivered already.
        call.meter.feed(content)
        call.finish("completed")
        return response
    body = body_cls(response.stream, call)
    call.body_closer = getattr(body, closer)
    response.stream = body
    return response


def _raise_for(call: HttpCall, exc: BaseException) -> None:
    """Record a call that raised and re-raise the right exception."""
    if call.aborted is not None and not (call.loop is not None and _is_native_cancel(exc)):
        call.finish("aborted")
        raise call.cancelled_error() from exc
    if call.loop is not None and _is_native_cancel(exc):
        # Someone else's cancellation (the body's, a timeout of the user's): let it travel.
        call.detail["cancelled_by"] = "task"
        call.finish("aborted")
        raise exc
    call.finish("failed", exc)
    raise exc


class AsyncBodyMixin:
    """The response body of a scoped async call; subclassed with each library's ``AsyncByteStream``."""

    def __init__(self, inner: Any, call: HttpCall) -> None:
        self._inner = inner
        self._call = call

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call = self._call
        feed = call.meter.feed
        if call.aborted is not None:
            raise call.cancelled_error()
        iterator = self._inner.__aiter__()
        exhausted = False
        try:
            if call.sock is not None:
                async for chunk in iterator:
                    if call.aborted is not None:
                        # The socket is shut down: keep pulling until the library's own
                        # generators fail on EOF, so that none is left suspended.
                        continue
                    feed(chunk)
                    yield chunk
                exhausted = True
            else:
                while True:
                    with anyio.CancelScope() as read:
                        call.read_scope = read
                        try:
                            chunk = await iterator.__anext__()
                        except StopAsyncIteration:
                            exhausted = True
                            break
                        finally:
                            call.read_scope = None
                    if read.cancelled_caught:
                        raise call.cancelled_error()
                    feed(chunk)
                    yield chunk
        except ScopeCancelled:
            call.finish("aborted")
            raise
        except GeneratorExit:  # the reader stopped iterating: aclose() settles the call
            raise
        except BaseException as exc:
            _raise_for(call, exc)
        finally:
            # Close the library's own generator now rather than leaving it to the GC
            # (trio warns about, and asyncio defers, async generators nobody closed).
            close = None if exhausted else getattr(iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await close()
                    except Exception:
                        pass
        if call.aborted is not None:
            call.finish("aborted")
            raise call.cancelled_error()
        call.finish("completed")

    async def aclose(self) -> None:
        call = self._call
        try:
            await self._inner.aclose()  # httpcore shields its own connection cleanup
        finally:
            if call.phase != _DONE:
                call.detail["closed_early"] = True
                call.finish("aborted" if call.aborted is not None else "completed")


# ----------------------------------------------------------------------- sync

_tls = threading.local()


class TrackedStream:
    """A sync network stream that tells the call running in this thread which socket it uses."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.owner: HttpCall | None = None

    def raw_socket(self) -> Any:
        return self._inner.get_extra_info("socket")

    def _claim(self) -> None:
        call: HttpCall | None = getattr(_tls, "call", None)
        if call is not None and self.owner is not call:
            with call._lock:
                self.owner = call
                call.tracked = self
                aborted = call.aborted
            if aborted is not None:
                raise call.cancelled_error()
        elif call is not None and call.aborted is not None:
            raise call.cancelled_error()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._claim()
        data: bytes = self._inner.read(max_bytes, timeout)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._claim()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        owner = self.owner
        if owner is not None:
            with owner._lock:  # never shut down a socket whose descriptor is being released
                self.owner = None
                self._inner.close()
        else:
            self._inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> TrackedStream:
        return TrackedStream(self._inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class TrackingBackend:
    """Wraps an httpcore sync network backend so every stream it opens is a ``TrackedStream``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(self, *args: Any, **kwargs: Any) -> TrackedStream:
        return TrackedStream(self._inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> TrackedStream:
        return TrackedStream(self._inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def install_tracking(transport: Any) -> bool:
    """Make a sync httpx/httpx2 ``HTTPTransport`` report its sockets to the calls using them.

    httpx does not let us pass httpcore's public ``network_backend`` argument, so we
    wrap the pool's backend attribute on the transport instance we were given.
    Returns False for transports without a pool (mock, WSGI): those cannot be
    interrupted from another thread, only refused.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None:
        return False
    if not isinstance(backend, TrackingBackend):
        pool._network_backend = TrackingBackend(backend)  # type: ignore[union-attr]
    return True


def send_sync(
    inner: Any,
    request: Any,
    profile: Profile,
    finish_policy: FinishPolicy,
    body_cls: type,
    *,
    always_stream: bool = False,
) -> Any:
    scope = current_scope()
    if scope is None:
        if always_stream and (plan := plan_stream(request)) is not None:
            response = inner.handle_request(plan.request)
            if not plan.accepts(response):
                return response
            plan.tap(response)
            return plan.read_sync(response)
        return inner.handle_request(request)
    call = open_call(scope, request, profile, None, finish_policy)
    plan = _stream_plan(call, request) if always_stream else None
    previous = getattr(_tls, "call", None)
    _tls.call = call
    try:
        response = inner.handle_request(request if plan is None else plan.request)
    except BaseException as exc:
        _raise_for(call, exc)
    finally:
        _tls.call = previous
    if call.aborted is not None:
        response.close()
        call.finish("aborted")
        raise call.cancelled_error()
    if plan is None or not plan.accepts(response):
        return _attach_body(call, response, body_cls, "close")
    plan.tap(response, call)
    return plan.read_sync(_attach_body(call, response, body_cls, "close"))


class SyncBodyMixin:
    """The response body of a scoped sync call; subclassed with each library's ``SyncByteStream``."""

    def __init__(self, inner: Any, call: HttpCall) -> None:
        self._inner = inner
        self._call = call
        self._reading = False

    def __iter__(self) -> Iterator[bytes]:
        call = self._call
        feed = call.meter.feed
        if call.aborted is not None:
            raise call.cancelled_error()
        iterator = iter(self._inner)
        previous = getattr(_tls, "call", None)
        try:
            while True:
                _tls.call = call
                self._reading = True
                try:
                    chunk = next(iterator)
                except StopIteration:
                    break
                finally:
                    self._reading = False
                    _tls.call = previous
                if call.aborted is not None:
                    continue  # drain to the EOF the shutdown caused (see the async body)
                feed(chunk)
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
