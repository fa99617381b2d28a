"""Qdrant REST: operations by method and path; the scope's deadline becomes Qdrant's ``timeout``."""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from .._calls import CallInfo, Meter
from .._scope import RequestScope

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
    provider = "qdrant"

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
