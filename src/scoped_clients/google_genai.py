"""A drop-in Google Gemini client whose calls belong to the ambient ``RequestScope``.

``from scoped_clients.google_genai import Client`` instead of ``from google.genai import
Client``: the same constructor builds the vendor's own client (``type(client) is
google.genai.Client``), whose HTTP clients are scoped, sync and ``client.aio`` alike:
``generate_content``, ``generate_content_stream``, chats, ``embed_content``,
``count_tokens``.  ``finish_policy`` and ``always_stream`` work as in
``scoped_clients.openai`` (``always_stream`` sends ``generateContent`` to
``streamGenerateContent`` and rebuilds the answer).

google-genai sends ``client.aio``'s requests through aiohttp whenever aiohttp imports;
the drop-in sends them through google-genai's own httpx2 client (httpx when the caller
chose it), scoped, so it works on Trio too, and refuses ``HttpOptions(aiohttp_client=...)``.
A caller's ``httpx_client`` / ``httpx_async_client`` is left as given: the SDK gets a scoped
view of it.  Vertex AI calls take the same path (credentials are added by the SDK).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import google.genai  # noqa: F401  (ImportError without the extra)

from ._dropin import dropins
from ._vendors.google_genai import VENDOR

__all__ = ["Client"]

if TYPE_CHECKING:
    from google.genai import Client as Client
else:
    Client = dropins(VENDOR)["Client"]
