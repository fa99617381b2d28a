"""FastAPI integration for scoped_clients.

``install(app)`` adds ``scoped_clients.asgi.ScopeMiddleware``; ``RequestScopeDep``
(``Annotated[RequestScope, Depends(request_scope)]``) hands a handler its request's
scope.  Call ``install`` after your other ``add_middleware`` calls: Starlette
puts the last added middleware outermost, and ``BaseHTTPMiddleware`` hides the
client's disconnect from everything inside it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from scoped_clients import RequestScope, ScopeUsageError
from scoped_clients.asgi import SCOPE_KEY, ScopeMiddleware

__all__ = ["RequestScopeDep", "install", "request_scope"]


def install(app: FastAPI, *, name: str | None = None, timeout: float | None = None) -> None:
    """Open a ``RequestScope`` for every request of ``app``, cancelled when its client leaves."""
    app.add_middleware(ScopeMiddleware, name=name, timeout=timeout)


async def request_scope(request: Request) -> RequestScope:
    """The dependency: this request's ``RequestScope``."""
    scope = request.scope.get(SCOPE_KEY)
    if not isinstance(scope, RequestScope):
        raise ScopeUsageError(
            "no RequestScope for this request: call scoped_clients_fastapi.install(app) (or add "
            "scoped_clients.asgi.ScopeMiddleware as the outermost middleware)"
        )
    return scope


RequestScopeDep = Annotated[RequestScope, Depends(request_scope)]
