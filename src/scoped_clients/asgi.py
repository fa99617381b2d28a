"""``ScopeMiddleware``: one ``RequestScope`` per request, cancelled the moment the client leaves.

Pure ASGI (nothing beyond the spec and anyio), so it works under Starlette,
FastAPI, Litestar or a bare app, on uvicorn, hypercorn and others::

    app = ScopeMiddleware(app)              # or app.add_middleware(ScopeMiddleware)

Put it **outermost**: Starlette's ``BaseHTTPMiddleware`` hides ``http.disconnect``
from everything inside it.

How it notices the client leaving, for streaming and non-streaming endpoints
alike and before the first byte: it owns ``receive()``.  One watcher task reads
the server's channel for the whole request, hands the app every body message
unchanged (the app's ``receive()`` reads them from a buffer, so nothing is
lost), and cancels the scope with reason ``client_disconnected`` when it reads
``http.disconnect`` while the response is not complete.  uvicorn also sends
``http.disconnect`` after a *completed* response: that one is not a client
leaving.  A ``send()`` that raises (the server found the socket closed) counts
as a disconnect too.

The buffer is bounded (``BUFFER_LIMIT`` bytes of body the app has not read
yet): past it the watcher stops reading until the app reads, so the server's
own flow control holds a large upload back (the client stalls) instead of the
middleware holding it in memory.  While it is stopped, a client leaving can be
seen by nobody (the server itself reads nothing more from the socket): it is
noticed when the app reads on, or when its response fails to send.  Requests
whose body fits in the buffer (every GET, JSON bodies) are watched throughout.
``max_body_size`` refuses larger bodies with ``413``: at once when the request
declares its ``Content-Length``, else as the body is read (by the app, or
ahead of it within the buffer).

The request's scope is ambient for the handler (``current_scope()``) and is
also at ``scope["scoped_clients.scope"]`` for frameworks that pass the ASGI
scope around.  ``websocket`` connections get one scope each, cancelled on
``websocket.disconnect``; on ``lifespan.shutdown`` every live request scope is
cancelled with reason ``shutdown``.

A request cancelled while its client is still connected (through a cancel bus,
by its deadline, at shutdown) is answered by the middleware once the app has
unwound: ``504`` (timeout), ``503`` (shutdown) or ``499`` (any other reason) if
no response had started, with the reason code as a plain-text body; otherwise
the response's body is ended where it stands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._bus import CancelBus, check_bus, valid_scope_id
from ._checks import check_timeout
from ._hops import DEADLINE_HEADER, parse_timeout
from ._reasons import CancelReason, ReasonCode
from ._scope import RequestScope

__all__ = ["BUFFER_LIMIT", "DEADLINE_HEADER", "SCOPE_KEY", "ScopeMiddleware"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

#: where the request's RequestScope is put in the ASGI scope
SCOPE_KEY = "scoped_clients.scope"
#: request body bytes read ahead of the app, at most (plus one server message).  Big enough
#: for every JSON body, so that their requests are watched for a disconnect throughout; small
#: next to the kernel's socket buffers, so that a large upload the app does not read stalls
#: its client (the server's flow control) instead of filling our memory.
BUFFER_LIMIT = 256 * 1024
_DISCONNECTS = {"http": "http.disconnect", "websocket": "websocket.disconnect"}
#: the status of a request cancelled before its response started, while its client is still there
_CANCEL_STATUS = {ReasonCode.TIMEOUT.value: 504, ReasonCode.SHUTDOWN.value: 503}


class ScopeMiddleware:
    """Opens a ``RequestScope`` per HTTP request / websocket and cancels it when the client leaves.

    ``name``: the scopes' name: a str, a function of the ASGI scope returning one, or
    ``None`` for ``"<METHOD> <path>"``.  ``timeout``: seconds per request (``None`` or
    ``inf``: none).  ``max_body_size``: the largest request body accepted, in bytes;
    a larger one is answered ``413 Content Too Large`` (before the app runs when the
    request declares its ``Content-Length``; otherwise the request's scope is cancelled
    with reason ``body_too_large`` and, if the app has not started its response, the
    middleware sends the 413).  ``None`` (the default): no limit, the server's own applies.

    ``id_header``: the request header a scope id is taken from (a page, a gateway or
    an upstream service names the request; a value that is not a valid id is ignored
    and a random one is used) and the response header it is returned in, so a page
    can ask to stop exactly its request.  ``None``: random ids, no header.
    ``bus``: a cancel bus every request scope joins (``LocalCancelBus``,
    ``scoped_clients.redis.RedisCancelBus``): ``await bus.cancel(scope_id)`` from
    anywhere stops that request.  ``deadline_header``: the header carrying a caller's
    remaining time in milliseconds (what scoped ``httpx`` clients send); a request
    that has one gets that timeout, or ``timeout`` if shorter.  ``None``: ignored.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        name: str | Callable[[MutableMapping[str, Any]], str] | None = None,
        timeout: float | None = None,
        max_body_size: int | None = None,
        bus: CancelBus | None = None,
        id_header: str | None = "x-request-id",
        deadline_header: str | None = DEADLINE_HEADER,
    ) -> None:
        if not callable(app):
            raise TypeError(
                f"ScopeMiddleware(app): app must be an ASGI application (an async callable taking scope, "
                f"receive, send), not {type(app).__name__}: {app!r}"
            )
        if name is not None and not isinstance(name, str) and not callable(name):
            raise TypeError(
                f"ScopeMiddleware(name=...) takes a str, a function of the ASGI scope returning a str, or None; "
                f"not {type(name).__name__}: {name!r}"
            )
        if max_body_size is not None and (
            isinstance(max_body_size, bool) or not isinstance(max_body_size, int) or max_body_size < 0
        ):
            raise ValueError(
                f"ScopeMiddleware(max_body_size=...) is a number of bytes (an int >= 0) or None for no limit, "
                f"got {max_body_size!r}"
            )
        check_bus(bus, "ScopeMiddleware(bus=...)")
        self.id_header = _header_name(id_header, "id_header")
        self.deadline_header = _header_name(deadline_header, "deadline_header")
        self.bus = bus
        self.app = app
        self.name = name
        self.timeout = check_timeout(timeout, "ScopeMiddleware(timeout=...)")
        self.max_body_size = max_body_size
        #: scopes of requests in flight (cancelled on lifespan shutdown)
        self.live: set[RequestScope] = set()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and self.max_body_size is not None and _declared_length(scope) > self.max_body_size:
            await _send_too_large(send, self.max_body_size)
        elif kind in _DISCONNECTS:
            await _Connection(self, scope, receive, send).run()
        elif kind == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
        else:
            await self.app(scope, receive, send)

    def _scope_name(self, scope: MutableMapping[str, Any]) -> str:
        if callable(self.name):
            name = self.name(scope)
            if not isinstance(name, str):
                raise TypeError(
                    f"ScopeMiddleware(name={self.name!r}) returned {type(name).__name__}; it must return a str"
                )
            return name
        if self.name is not None:
            return self.name
        return f"{scope.get('method', 'WS')} {scope.get('path', '')}"

    def _request_scope(self, scope: MutableMapping[str, Any]) -> RequestScope:
        timeout = self.timeout
        raw_timeout = _header(scope, self.deadline_header)
        if raw_timeout is not None and (incoming := parse_timeout(raw_timeout)) is not None:
            timeout = incoming if timeout is None else min(timeout, incoming)
        raw_id = _header(scope, self.id_header)
        scope_id = raw_id.decode("latin-1") if raw_id is not None else None
        return RequestScope(
            self._scope_name(scope),
            timeout=timeout,
            id=scope_id if valid_scope_id(scope_id) else None,
            bus=self.bus,
        )

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def lifespan_receive() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                reason = CancelReason(ReasonCode.SHUTDOWN, "the server is shutting down")
                for request_scope in list(self.live):
                    request_scope.cancel(reason)
            return message

        return lifespan_receive


def _header_name(value: object, what: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError(f"ScopeMiddleware({what}=...) is an HTTP header name (a str) or None, got {value!r}")
    return value.lower().encode("ascii")


def _header(scope: MutableMapping[str, Any], name: bytes | None) -> bytes | None:
    if name is None:
        return None
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _declared_length(scope: MutableMapping[str, Any]) -> int:
    """The request's ``Content-Length`` (-1 if absent or malformed: the server deals with those)."""
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1


async def _send_too_large(send: Send, limit: int) -> None:
    body = f"Request body too large: the limit is {limit} bytes.\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Connection:
    """One request (or websocket) under the middleware."""

    def __init__(self, owner: ScopeMiddleware, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        self.owner = owner
        self.asgi_scope = scope
        self.server_receive = receive
        self.server_send = send
        self.disconnect_type = _DISCONNECTS[scope["type"]]
        self.started = False  # the app has sent http.response.start
        self.complete = False  # the response (or the websocket close) has been sent in full
        self.disconnect: Message | None = None
        self.app_done = False
        self.too_large = False
        self.watching: anyio.CancelScope | None = None
        self.request_scope = owner._request_scope(scope)
        # Counted in messages the stream is unbounded; the watcher bounds it in bytes
        # (BUFFER_LIMIT) by waiting for `room` before it reads the next message.
        self.buffered = 0  # body bytes read from the server and not yet by the app
        self.received = 0  # body bytes read from the server in all
        self.room = anyio.Event()
        self.inbox: MemoryObjectSendStream[Message]
        self.outbox: MemoryObjectReceiveStream[Message]
        self.inbox, self.outbox = anyio.create_memory_object_stream[Message](float("inf"))

    async def run(self) -> None:
        scope = self.request_scope
        self.asgi_scope[SCOPE_KEY] = scope
        self.owner.live.add(scope)
        try:
            async with scope:
                scope.spawn(self._watch)
                try:
                    await self.owner.app(self.asgi_scope, self.receive, self.send)
                finally:
                    self.app_done = True
                    if self.watching is not None:
                        self.watching.cancel()
            if self.too_large and not self.started and self.owner.max_body_size is not None:
                await _send_too_large(self.server_send, self.owner.max_body_size)
            elif scope.cancel_reason is not None and self.disconnect_type == "http.disconnect":
                await self._end_cancelled(scope.cancel_reason)
        finally:
            self.owner.live.discard(scope)
            self.inbox.close()
            self.outbox.close()

    async def _end_cancelled(self, reason: CancelReason) -> None:
        """A request cancelled while its client is still there (a bus, a deadline, a shutdown): answer it.

        Left to the server, the client would get a 500 (no response started) or a broken
        chunked body, and the server would log an error for every such request.  Instead:
        no response yet: ``504`` for a timeout, ``503`` for a shutdown, ``499`` (client closed
        request, as nginx names it) for any other cancel, with the reason code as the body;
        a response under way: its body is ended where it stands.
        """
        if self.complete or self.disconnect is not None or reason.code == ReasonCode.CLIENT_DISCONNECTED:
            return
        try:
            if self.started:
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            status = _CANCEL_STATUS.get(reason.code, 499)
            body = f"Request cancelled: {reason.code}.\n".encode()
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
            await self.send({"type": "http.response.start", "status": status, "headers": headers})
            await self.send({"type": "http.response.body", "body": body})
        except Exception:  # the client left meanwhile: nobody to answer
            return

    async def _watch(self) -> None:
        if self.app_done:
            return
        with anyio.CancelScope() as self.watching:
            while True:
                while self.buffered >= BUFFER_LIMIT:  # backpressure: the app reads first
                    self.room = anyio.Event()
                    await self.room.wait()
                message = await self.server_receive()
                if message.get("type") == self.disconnect_type:
                    self._disconnected(message)
                    return
                if message.get("type") == "http.request":
                    size = len(message.get("body", b""))
                    self.received += size
                    limit = self.owner.max_body_size
                    if limit is not None and self.received > limit:
                        self._too_large(limit)
                        return
                    self.buffered += size
                self.inbox.send_nowait(message)

    def _disconnected(self, message: Message) -> None:
        self.disconnect = message
        if not self.complete:
            self.request_scope.cancel(CancelReason(ReasonCode.CLIENT_DISCONNECTED, "the client closed the connection"))
        self.inbox.send_nowait(message)

    def _too_large(self, limit: int) -> None:
        """A body without a Content-Length grew past ``max_body_size``: stop the request.

        The app's next ``receive()`` raises ``ScopeCancelled``, which unwinds it (a
        ``BaseException``: the frameworks' ``except Exception`` error pages do not answer
        500 first), and the middleware answers 413 if the response has not started.
        """
        self.too_large = True
        self.request_scope.cancel(
            CancelReason(ReasonCode.BODY_TOO_LARGE, f"the request body exceeded max_body_size={limit} bytes")
        )

    async def receive(self) -> Message:
        """The app's ``receive()``: the buffered messages, then the disconnect, forever."""
        if self.too_large:
            self.request_scope.check()
        if self.disconnect is not None and self.outbox.statistics().current_buffer_used == 0:
            return dict(self.disconnect)
        try:
            message = await self.outbox.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return {"type": self.disconnect_type}
        if message.get("type") == "http.request":
            self.buffered -= len(message.get("body", b""))
            if self.buffered < BUFFER_LIMIT:
                self.room.set()
        return message

    def _with_id_header(self, message: Message) -> Message:
        """The response start with the scope id in ``id_header``, unless the app set that header itself."""
        name = self.owner.id_header
        if name is None:
            return message
        headers = list(message.get("headers", ()))
        if any(bytes(key).lower() == name for key, _ in headers):
            return message
        headers.append((name, self.request_scope.id.encode("ascii")))
        return {**message, "headers": headers}

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            self.started = True
            message = self._with_id_header(message)
        elif kind == "websocket.accept":
            message = self._with_id_header(message)
        elif (kind == "http.response.body" and not message.get("more_body", False)) or kind == "websocket.close":
            self.complete = True
        try:
            await self.server_send(message)
        except Exception as exc:
            # The server found the socket gone (an OSError, uvicorn's ClientDisconnected,
            # Starlette's ClientDisconnect): that is the client leaving.  Anything else is a
            # bug of the app's, which propagates untouched.
            if isinstance(exc, OSError) or "Disconnect" in type(exc).__name__:
                reason = CancelReason(ReasonCode.CLIENT_DISCONNECTED, "sending to the client failed")
                self.request_scope.cancel(reason)
            raise
