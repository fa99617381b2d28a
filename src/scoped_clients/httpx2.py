"""Drop-in ``httpx2`` clients whose requests belong to the ambient ``RequestScope``.

``AsyncClient`` / ``Client`` take exactly ``httpx2.AsyncClient`` / ``httpx2.Client``'s
arguments and are instances of them.  ``AsyncScopedTransport`` /
``ScopedTransport`` wrap any httpx2 transport, for code that builds its own client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx2

from ._transport._base import library_classes

__all__ = ["AsyncClient", "AsyncScopedTransport", "Client", "ScopedTransport"]

if TYPE_CHECKING:  # what library_classes(httpx2) builds, spelled out for type checkers
    from ._transport._base import AsyncTransportMixin, ClientMixin, SyncTransportMixin

    class AsyncScopedTransport(AsyncTransportMixin, httpx2.AsyncBaseTransport): ...

    class ScopedTransport(SyncTransportMixin, httpx2.BaseTransport): ...

    class AsyncClient(ClientMixin, httpx2.AsyncClient): ...

    class Client(ClientMixin, httpx2.Client): ...

else:
    _classes = library_classes(httpx2)
    AsyncScopedTransport = _classes.AsyncScopedTransport
    ScopedTransport = _classes.ScopedTransport
    AsyncClient = _classes.AsyncClient
    Client = _classes.Client
