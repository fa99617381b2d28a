"""Drop-in Qdrant clients whose REST calls belong to the ambient ``RequestScope``.

Same constructors as ``qdrant_client.AsyncQdrantClient`` / ``QdrantClient``.

* **REST** (the default) goes through the scoped transport: a query in flight
  is aborted at the socket when the scope is cancelled, and a cancelled scope
  refuses new calls.  When the scope has a deadline, its remaining seconds are
  sent as Qdrant's server-side ``timeout`` so the server also gives up.
* **gRPC** (``prefer_grpc=True``) bypasses HTTP.  With ``AsyncQdrantClient`` a
  call awaited inside the scope's body (or a child spawned into it) is cancelled
  with the task, which cancels the gRPC call (the server sees ``CANCELLED``); a
  call awaited by a task outside the body is not.  ``QdrantClient`` cannot abort
  a blocking gRPC call without closing the channel shared by every request, so
  the scoped ``QdrantClient`` refuses ``prefer_grpc=True`` with ``UnsupportedError``.
* **Local mode** (``":memory:"``, ``path=``) makes no network call: it works as
  the vendor's client does, is not refused or aborted by the scope, and a local
  query blocks the event loop while it runs (the vendor's behaviour).
"""

from __future__ import annotations

from typing import Any

import httpx
import qdrant_client

from ._clients import HTTP2_UNSUPPORTED
from ._exceptions import UnsupportedError
from ._profiles.qdrant import QdrantProfile
from .httpx import AsyncScopedTransport, ScopedTransport

__all__ = ["AsyncQdrantClient", "QdrantClient"]


def _is_local(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    location = args[0] if args else kwargs.get("location")
    return location == ":memory:" or kwargs.get("path") is not None


def _limits(args: tuple[Any, ...], kwargs: dict[str, Any]) -> httpx.Limits:
    """The connection limits qdrant-client would give httpx (a transport makes httpx ignore ``limits``)."""
    limits = kwargs.pop("limits", None)
    if isinstance(limits, httpx.Limits):
        return limits
    target = str(kwargs.get("url") or kwargs.get("host") or (args[0] if args else "") or "localhost")
    if "localhost" in target or "127.0.0.1" in target:
        return httpx.Limits(max_connections=None, max_keepalive_connections=0)
    if kwargs.get("pool_size") is not None:
        return httpx.Limits(max_connections=kwargs["pool_size"])
    return httpx.Limits(max_connections=100, max_keepalive_connections=20)


def _transport_kwargs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("http2"):
        raise UnsupportedError(HTTP2_UNSUPPORTED)
    if "transport" in kwargs:
        return {"transport": kwargs.pop("transport")}
    limits = _limits(args, kwargs)
    if kwargs.get("pool_size") is not None and "limits" not in kwargs:
        kwargs.pop("pool_size")
    return {"limits": limits}


class AsyncQdrantClient(qdrant_client.AsyncQdrantClient):
    """``qdrant_client.AsyncQdrantClient`` with scoped REST calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not _is_local(args, kwargs):
            inner = _transport_kwargs(args, kwargs)
            kwargs["transport"] = AsyncScopedTransport(
                inner.get("transport") or httpx.AsyncHTTPTransport(limits=inner["limits"]), profile=QdrantProfile()
            )
        super().__init__(*args, **kwargs)


class QdrantClient(qdrant_client.QdrantClient):
    """``qdrant_client.QdrantClient`` with scoped REST calls; ``cancel()`` from another thread unblocks them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("prefer_grpc"):
            raise UnsupportedError(
                "a blocking gRPC call can only be stopped by closing the channel every request shares: use "
                "prefer_grpc=False (REST) with the scoped QdrantClient, or AsyncQdrantClient for gRPC"
            )
        if not _is_local(args, kwargs):
            inner = _transport_kwargs(args, kwargs)
            kwargs["transport"] = ScopedTransport(
                inner.get("transport") or httpx.HTTPTransport(limits=inner["limits"]), profile=QdrantProfile()
            )
        super().__init__(*args, **kwargs)
