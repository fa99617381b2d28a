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

The request's scope is ambient for the handler (``current_scope()``) and is
also at ``scope["scoped_clients.scope"]`` for frameworks that pass the ASGI
scope around.  ``websocket`` connections get one scope each, cancelled on
``websocket.disconnect``; on ``lifespan.shutdown`` every live request scope is
cancelled with reason ``shutdown``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._reasons import CancelReason, ReasonCode
from ._scope import RequestScope

__all__ = ["SCOPE_KEY", "ScopeMiddleware"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

#: where the request's RequestScope is put in the ASGI scope
SCOPE_KEY = "scoped_clients.scope"
_DISCONNECTS = {"http": "http.disconnect", "websocket": "websocket.disconnect"}


class ScopeMiddleware:
    """Opens a ``RequestScope`` per HTTP request / websocket and cancels it when the client leaves."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        name: str | Callable[[MutableMapping[str, Any]], str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.timeout = timeout
        #: scopes of requests in flight (cancelled on lifespan shutdown)
        self.live: set[RequestScope] = set()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in _DISCONNECTS:
            await _Connection(self, scope, receive, send).run()
        elif kind == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
        else:
            await self.app(scope, receive, send)

    def _scope_name(self, scope: MutableMapping[str, Any]) -> str:
        if callable(self.name):
            return self.name(scope)
        if self.name is not None:
            return self.name
        return f"{scope.get('method', 'WS')} {scope.get('path', '')}"

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def lifespan_receive() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                reason = CancelReason(ReasonCode.SHUTDOWN, "the server is shutting down")
                for request_scope in list(self.live):
                    request_scope.cancel(reason)
            return message

        return lifespan_receive


class _Connection:
    """One request (or websocket) under the middleware."""

    def __init__(self, owner: ScopeMiddleware, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        self.owner = owner
        self.asgi_scope = scope
        self.server_receive = receive
        self.server_send = send
        self.disconnect_type = _DISCONNECTS[scope["type"]]
        self.complete = False  # the response (or the websocket close) has been sent in full
        self.disconnect: Message | None = None
        self.app_done = False
        self.watching: anyio.CancelScope | None = None
        self.request_scope = RequestScope(owner._scope_name(scope), timeout=owner.timeout)
        self.inbox: MemoryObjectSendStream[Message]
        self.outbox: MemoryObjectReceiveStream[Message]
        # Unbounded on purpose: the watcher must keep reading to see a disconnect even
        # while the app has not read the body yet; the server bounds the body size.
        self.inbox, self.outbox = anyio.create_memory_object_stream[Message](math.inf)

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
        finally:
            self.owner.live.discard(scope)
            self.inbox.close()
            self.outbox.close()

    async def _watch(self) -> None:
        if self.app_done:
            return
        with anyio.CancelScope() as self.watching:
            while True:
                message = await self.server_receive()
                if message.get("type") == self.disconnect_type:
                    self.disconnect = message
                    if not self.complete:
                        self.request_scope.cancel(
                            CancelReason(ReasonCode.CLIENT_DISCONNECTED, "the client closed the connection")
                        )
                    self.inbox.send_nowait(message)
                    return
                self.inbox.send_nowait(message)

    async def receive(self) -> Message:
        """The app's ``receive()``: the buffered messages, then the disconnect, forever."""
        if self.disconnect is not None and self.outbox.statistics().current_buffer_used == 0:
            return dict(self.disconnect)
        try:
            return await self.outbox.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return {"type": self.disconnect_type}

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if (kind == "http.response.body" and not message.get("more_body", False)) or kind == "websocket.close":
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
