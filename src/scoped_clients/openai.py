"""Drop-in OpenAI clients whose calls belong to the ambient ``RequestScope``.

``from scoped_clients.openai import AsyncOpenAI`` instead of ``from openai import
AsyncOpenAI``: the same constructor builds the vendor's own client (``type(client)
is openai.AsyncOpenAI``), whose HTTP layer is scoped (see ``scoped_clients._dropin``).
Two keyword options are added: ``finish_policy`` (``"abort"``, the default, aborts
every stream on cancel; ``"finish_if_done"`` lets a stream whose finish reason
already arrived complete, so that the provider's billed usage is received) and
``always_stream`` (send non-streamed generations as streams, so that the provider
notices a cancel at its next token).

Type checkers see the vendor's class and its exact signature; the two options are
runtime keywords (or use ``scoped_clients.scope_client(openai.AsyncOpenAI(...), ...)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai  # noqa: F401  (ImportError without the extra)

from ._vendors.openai import async_http_client as async_http_client
from ._vendors.openai import http_client as http_client

__all__ = ["AsyncOpenAI", "OpenAI", "async_http_client", "http_client"]

if TYPE_CHECKING:
    from openai import AsyncOpenAI as AsyncOpenAI
    from openai import OpenAI as OpenAI
else:
    from ._vendors.openai import AsyncOpenAI, OpenAI
