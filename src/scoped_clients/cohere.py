"""Drop-in Cohere clients (v2 and v1) whose calls belong to the ambient ``RequestScope``.

Same constructors as ``cohere.AsyncClientV2`` / ``ClientV2`` / ``AsyncClient`` /
``Client``, which build the vendor"s own client (its 300 s timeout, TCP keepalive
socket options and proxy mounts) and scope the HTTP client it ends up with; an
``httpx_client=`` of yours is left as you gave it (the SDK gets a scoped copy).
Covered: ``chat``, ``chat_stream`` (v2 server-sent events, v1 JSON lines),
``rerank`` (search units), ``embed``. One added keyword: ``finish_policy``.

Cohere retries with ``asyncio.sleep``: a scope cancelled during a retry"s
backoff refuses the next attempt, it never reaches the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cohere  # noqa: F401  (ImportError without the extra)

from ._dropin import dropins
from ._vendors.cohere import VENDOR

__all__ = ["AsyncClient", "AsyncClientV2", "Client", "ClientV2"]

if TYPE_CHECKING:
    from cohere import AsyncClient as AsyncClient
    from cohere import AsyncClientV2 as AsyncClientV2
    from cohere import Client as Client
    from cohere import ClientV2 as ClientV2
else:
    AsyncClient = dropins(VENDOR)["AsyncClient"]
    AsyncClientV2 = dropins(VENDOR)["AsyncClientV2"]
    Client = dropins(VENDOR)["Client"]
    ClientV2 = dropins(VENDOR)["ClientV2"]
