"""The profile of any HTTP call: named by method, host and path; counts no tokens."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._calls import CallInfo, Meter
from .._hops import DEADLINE_HEADER, format_timeout
from . import Vendor

if TYPE_CHECKING:
    from .._scope import RequestScope


class GenericProfile:
    provider = "http"

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        return CallInfo(provider=self.provider, operation=_operation(method, url))

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        return Meter()

    def prepare(self, request: Any, scope: RequestScope) -> None:
        """Send the scope's remaining time to the next service (``DEADLINE_HEADER``), if it has a deadline.

        Only the generic clients (``scoped_clients.httpx`` / ``httpx2``: service-to-service
        calls) send it; the vendor clients' requests stay byte for byte the vendor SDK's
        (drop-in), and no LLM provider reads it.  A header the caller set is kept.
        """
        remaining = scope.remaining()
        if remaining is not None and DEADLINE_HEADER not in request.headers:
            request.headers[DEADLINE_HEADER] = format_timeout(remaining)


@functools.lru_cache(maxsize=512)
def _operation(method: str, url: str) -> str:
    """``"GET host/path"``: a service calls the same few URLs over and over, so each is parsed once."""
    parts = urlsplit(url)
    return f"{method} {parts.hostname}{parts.path}"


#: plain HTTP (``scoped_clients.httpx`` / ``httpx2``): no tokens, no stream plan; its drop-in
#: clients are the HTTP libraries' own (``scoped_clients._transport``)
VENDOR = Vendor(provider="http", profile=GenericProfile)
