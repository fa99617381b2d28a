"""Drop-in Mistral client whose calls belong to the ambient ``RequestScope``.

``from scoped_clients.mistralai import Mistral`` instead of ``from mistralai.client import
Mistral``: the same constructor builds the vendor's own client (``type(client) is
mistralai.client.Mistral``) and scopes both of its HTTP clients, the sync one and the async
one; a ``client=`` / ``async_client=`` of yours is left as you gave it (the SDK gets a scoped
copy; an HTTP client that is neither httpx2's nor httpx's is refused: it could not be
aborted).  Covered: ``chat.complete`` / ``chat.stream`` (and their ``_async`` twins), FIM and
agents completions, ``embeddings.create``.  Two keyword options are added: ``finish_policy``
and ``always_stream`` (send non-streamed completions as streams, so that the provider
notices a cancel at its next token).

The SDK's async methods need an asyncio loop (uvloop too): on Trio a scoped async call
raises ``UnsupportedError`` saying so; use the sync methods in a worker thread there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mistralai.client  # noqa: F401  (ImportError without the extra)

from ._dropin import dropins
from ._vendors.mistralai import VENDOR

__all__ = ["Mistral"]

if TYPE_CHECKING:
    from mistralai.client import Mistral as Mistral
else:
    Mistral = dropins(VENDOR)["Mistral"]
