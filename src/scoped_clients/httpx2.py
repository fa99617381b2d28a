"""Drop-in ``httpx2`` clients whose requests belong to the ambient ``RequestScope``.

``AsyncClient`` / ``Client`` take exactly ``httpx2.AsyncClient`` / ``httpx2.Client``'s
arguments and are instances of them.  ``AsyncScopedTransport`` /
``ScopedTransport`` wrap any httpx2 transport, for code that builds its own client.
"""

from __future__ import annotations

import httpx2

from ._clients import AsyncTransportMixin, ClientMixin, SyncTransportMixin
from ._transport import AsyncBodyMixin, SyncBodyMixin

__all__ = ["AsyncClient", "AsyncScopedTransport", "Client", "ScopedTransport"]


class _AsyncBody(AsyncBodyMixin, httpx2.AsyncByteStream):
    pass


class _SyncBody(SyncBodyMixin, httpx2.SyncByteStream):
    pass


class AsyncScopedTransport(AsyncTransportMixin, httpx2.AsyncBaseTransport):
    """Wraps a ``httpx2.AsyncBaseTransport`` (default: a new ``httpx2.AsyncHTTPTransport``)."""

    _inner_factory = httpx2.AsyncHTTPTransport
    _body_cls = _AsyncBody


class ScopedTransport(SyncTransportMixin, httpx2.BaseTransport):
    """Wraps a ``httpx2.BaseTransport`` (default: a new ``httpx2.HTTPTransport``)."""

    _inner_factory = httpx2.HTTPTransport
    _body_cls = _SyncBody


class AsyncClient(ClientMixin, httpx2.AsyncClient):
    """``httpx2.AsyncClient`` whose requests are owned by the ambient scope."""


class Client(ClientMixin, httpx2.Client):
    """``httpx2.Client`` whose requests are owned by the ambient scope."""
