"""Drop-in ``httpx`` clients whose requests belong to the ambient ``RequestScope``.

``AsyncClient`` / ``Client`` take exactly ``httpx.AsyncClient`` / ``httpx.Client``'s
arguments and are instances of them.  ``AsyncScopedTransport`` /
``ScopedTransport`` wrap any httpx transport, for code that builds its own client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from ._transport._base import library_classes

__all__ = ["AsyncClient", "AsyncScopedTransport", "Client", "ScopedTransport"]

if TYPE_CHECKING:  # what library_classes(httpx) builds, spelled out for type checkers
    from ._transport._base import AsyncTransportMixin, ClientMixin, SyncTransportMixin

    class AsyncScopedTransport(AsyncTransportMixin, httpx.AsyncBaseTransport): ...

    class ScopedTransport(SyncTransportMixin, httpx.BaseTransport): ...

    class AsyncClient(ClientMixin, httpx.AsyncClient): ...

    class Client(ClientMixin, httpx.Client): ...

else:
    _classes = library_classes(httpx)
    AsyncScopedTransport = _classes.AsyncScopedTransport
    ScopedTransport = _classes.ScopedTransport
    AsyncClient = _classes.AsyncClient
    Client = _classes.Client
