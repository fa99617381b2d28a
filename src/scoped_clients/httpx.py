"""Drop-in ``httpx`` clients whose requests belong to the ambient ``RequestScope``.

``AsyncClient`` / ``Client`` take exactly ``httpx.AsyncClient`` / ``httpx.Client``'s
arguments and are instances of them.  ``AsyncScopedTransport`` /
``ScopedTransport`` wrap any httpx transport, for code that builds its own client.
"""

from __future__ import annotations

import httpx

from ._clients import AsyncTransportMixin, ClientMixin, SyncTransportMixin
from ._transport import AsyncBodyMixin, SyncBodyMixin

__all__ = ["AsyncClient", "AsyncScopedTransport", "Client", "ScopedTransport"]


class _AsyncBody(AsyncBodyMixin, httpx.AsyncByteStream):
    pass


class _SyncBody(SyncBodyMixin, httpx.SyncByteStream):
    pass


class AsyncScopedTransport(AsyncTransportMixin, httpx.AsyncBaseTransport):
    """Wraps a ``httpx.AsyncBaseTransport`` (default: a new ``httpx.AsyncHTTPTransport``)."""

    _inner_factory = httpx.AsyncHTTPTransport
    _body_cls = _AsyncBody


class ScopedTransport(SyncTransportMixin, httpx.BaseTransport):
    """Wraps a ``httpx.BaseTransport`` (default: a new ``httpx.HTTPTransport``)."""

    _inner_factory = httpx.HTTPTransport
    _body_cls = _SyncBody


class AsyncClient(ClientMixin, httpx.AsyncClient):
    """``httpx.AsyncClient`` whose requests are owned by the ambient scope."""


class Client(ClientMixin, httpx.Client):
    """``httpx.Client`` whose requests are owned by the ambient scope."""
