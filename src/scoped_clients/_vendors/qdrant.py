"""Qdrant: everything scoped_clients knows about it.

REST operations by method and path; the scope's deadline becomes Qdrant's
``timeout``; the drop-in names ``QdrantClient`` / ``AsyncQdrantClient`` and what
they refuse (HTTP/2, a blocking gRPC call).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .._calls import CallInfo, Meter
from .._exceptions import HTTP2_UNSUPPORTED, UnsupportedError
from . import DropInName, Vendor

if TYPE_CHECKING:
    from .._scope import RequestScope

PROVIDER = "qdrant"

_POINTS = {
    ("POST", "query"): "query_points",
    ("POST", "search"): "search",
    ("PUT", ""): "upsert",
    ("POST", "delete"): "delete",
    ("POST", "scroll"): "scroll",
    ("POST", "count"): "count",
    ("POST", "query/batch"): "query_batch_points",
    ("POST", "recommend"): "recommend",
    ("POST", ""): "retrieve",
}
_COLLECTION = {"PUT": "create_collection", "DELETE": "delete_collection", "GET": "get_collection", "PATCH": "update"}
#: the longest server-side timeout sent (seconds): 2**31 - 1, what any integer field takes
_MAX_TIMEOUT = 2**31 - 1
_PATH = re.compile(r"/collections/(?P<name>[^/]+)(?:/(?P<what>points|exists)(?:/(?P<op>[a-z/]+))?)?$")


class QdrantProfile:
    provider = PROVIDER

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        path = urlsplit(url).path.rstrip("/")
        match = _PATH.search(path)
        if match is None:
            return CallInfo(provider=self.provider, operation=f"{method} {path or '/'}")
        what, op = match.group("what"), match.group("op") or ""
        if what == "points":
            operation = _POINTS.get((method, op), f"points.{op or method.lower()}")
        elif what == "exists":
            operation = "collection_exists"
        else:
            operation = _COLLECTION.get(method, method.lower())
        return CallInfo(provider=self.provider, operation=operation, extra={"collection": unquote(match.group("name"))})

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        return Meter()

    def prepare(self, request: Any, scope: RequestScope) -> None:
        """Pass the scope's remaining deadline as Qdrant's server-side ``timeout`` (whole seconds)."""
        remaining = scope.remaining()
        if remaining is None or not math.isfinite(remaining) or "timeout" in request.url.params:
            return  # no deadline (a scope never has an infinite one; the check keeps this total)
        # Qdrant takes whole seconds; a deadline years away is capped rather than sent as is.
        request.url = request.url.copy_merge_params({"timeout": min(_MAX_TIMEOUT, max(1, math.ceil(remaining)))})


# ------------------------------------------------------------------ drop-ins

_GRPC_SYNC_UNSUPPORTED = (
    "a blocking gRPC call can only be stopped by closing the channel every request shares: use "
    "prefer_grpc=False (REST) with the scoped QdrantClient, or AsyncQdrantClient for gRPC"
)


def _is_local(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    location = args[0] if args else kwargs.get("location")
    return location == ":memory:" or kwargs.get("path") is not None


def _check_async(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if kwargs.get("http2") and not _is_local(args, kwargs):
        raise UnsupportedError(HTTP2_UNSUPPORTED)


def _check_sync(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _check_async(args, kwargs)
    if kwargs.get("prefer_grpc") and not _is_local(args, kwargs):
        raise UnsupportedError(_GRPC_SYNC_UNSUPPORTED)


DROPINS = (
    DropInName(
        "AsyncQdrantClient",
        "``qdrant_client.AsyncQdrantClient`` with scoped REST calls.",
        http_path=("_client", "openapi_client", "client", "_async_client"),
        options=(),
        check=_check_async,
    ),
    DropInName(
        "QdrantClient",
        "``qdrant_client.QdrantClient`` with scoped REST calls; ``cancel()`` from another thread unblocks them.",
        http_path=("_client", "openapi_client", "client", "_client"),
        options=(),
        check=_check_sync,
    ),
)


#: Qdrant's searches are the GenAI conventions' ``retrieval``
_RETRIEVAL = ("query_points", "query_batch_points", "search", "recommend", "scroll")

VENDOR = Vendor(
    provider=PROVIDER,
    profile=QdrantProfile,
    sdk="qdrant_client",
    gen_ai_operations=dict.fromkeys(_RETRIEVAL, "retrieval"),
    shim="scoped_clients.qdrant",
    dropins=DROPINS,
)
