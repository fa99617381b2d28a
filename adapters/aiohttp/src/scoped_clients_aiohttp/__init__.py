"""aiohttp integration for scoped_clients.

``scope_middleware()`` opens a ``RequestScope`` per request and cancels it with
reason ``client_disconnected`` when the client's connection closes.  aiohttp
does not cancel handlers on disconnect by default (``handler_cancellation`` is
off since 3.9) and offers no public disconnect callback, so a watcher task
checks the request's transport every ``poll`` seconds (default 5 ms); with
``handler_cancellation=True`` the handler's cancellation also cancels the scope
at once.  ``request_scope(request)`` returns the request's scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from aiohttp import web

from scoped_clients import CancelReason, ReasonCode, RequestScope, ScopeUsageError

__all__ = ["SCOPE_KEY", "request_scope", "scope_middleware"]

SCOPE_KEY = web.RequestKey("scoped_clients.scope", RequestScope)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def scope_middleware(
    *, name: str | None = None, timeout: float | None = None, poll: float = 0.005
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware giving every request its own ``RequestScope``."""
    left = CancelReason(ReasonCode.CLIENT_DISCONNECTED, "the client closed the connection")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        scope = RequestScope(name or f"{request.method} {request.path}", timeout=timeout)
        request[SCOPE_KEY] = scope
        response: web.StreamResponse | None = None
        async with scope:
            watching = anyio.CancelScope()

            async def watch() -> None:
                with watching:
                    while not _gone(request):  # noqa: ASYNC110 - aiohttp offers no disconnect event
                        await anyio.sleep(poll)
                    scope.cancel(left)

            scope.spawn(watch)
            try:
                response = await handler(request)
            except anyio.get_cancelled_exc_class():
                if _gone(request):  # handler_cancellation=True: aiohttp cancelled us for a disconnect
                    scope.cancel(left)
                raise
            finally:
                watching.cancel()
        if response is None:  # the scope absorbed the cancellation: the client is gone anyway
            raise web.HTTPServiceUnavailable(reason="client disconnected")
        return response

    return middleware


def request_scope(request: web.Request) -> RequestScope:
    """This request's ``RequestScope`` (needs ``scope_middleware()``)."""
    scope = request.get(SCOPE_KEY)
    if not isinstance(scope, RequestScope):
        raise ScopeUsageError(
            "no RequestScope for this request: add scoped_clients_aiohttp.scope_middleware() to the application"
        )
    return scope
