"""Drop-in Qdrant clients whose REST calls belong to the ambient ``RequestScope``.

Same constructors as ``qdrant_client.AsyncQdrantClient`` / ``QdrantClient``, which
build the vendor"s own client (its connection limits, ``verify``, ``cert``,
``proxy`` and environment proxies, ``init_options`` untouched) and scope the REST
HTTP client it ends up with, proxy mounts included.

* **REST** (the default) goes through the scoped transport: a query in flight
  is aborted at the socket when the scope is cancelled, and a cancelled scope
  refuses new calls.  When the scope has a deadline, its remaining seconds are
  sent as Qdrant"s server-side ``timeout`` so the server also gives up.
* **gRPC** (``prefer_grpc=True``) bypasses HTTP.  With ``AsyncQdrantClient`` a
  call awaited inside the scope"s body (or a child spawned into it) is cancelled
  with the task, which cancels the gRPC call (the server sees ``CANCELLED``); a
  call awaited by a task outside the body is not.  ``QdrantClient`` cannot abort
  a blocking gRPC call without closing the channel shared by every request, so
  the scoped ``QdrantClient`` refuses a remote ``prefer_grpc=True`` with
  ``UnsupportedError``.
* **Local mode** (``":memory:"``, ``path=``) makes no network call: it works as
  the vendor"s client does (``prefer_grpc`` is ignored there, as by the vendor),
  is not refused or aborted by the scope, and a local query blocks the event loop
  while it runs (the vendor"s behaviour).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import qdrant_client  # noqa: F401  (ImportError without the extra)

from ._dropin import dropins
from ._vendors.qdrant import VENDOR

__all__ = ["AsyncQdrantClient", "QdrantClient"]

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient as AsyncQdrantClient
    from qdrant_client import QdrantClient as QdrantClient
else:
    AsyncQdrantClient = dropins(VENDOR)["AsyncQdrantClient"]
    QdrantClient = dropins(VENDOR)["QdrantClient"]
