"""Drop-in Anthropic clients whose calls belong to the ambient ``RequestScope``.

``from scoped_clients.anthropic import AsyncAnthropic`` instead of ``from
anthropic import AsyncAnthropic``: the same constructor builds the vendor's own
client (``type(client) is anthropic.AsyncAnthropic``, so credential profiles,
workload identity and OAuth resolve as they do for the vendor's), whose HTTP
layer is scoped. ``finish_policy`` and ``always_stream`` work as in
``scoped_clients.openai``.

anthropic retries *any* ``Exception`` raised while sending, wrapped in
``APIConnectionError``; ``ScopeCancelled`` is a ``BaseException`` and so is never
retried nor wrapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anthropic  # noqa: F401  (ImportError without the extra)

from ._vendors.anthropic import async_http_client as async_http_client
from ._vendors.anthropic import http_client as http_client

__all__ = ["Anthropic", "AsyncAnthropic", "async_http_client", "http_client"]

if TYPE_CHECKING:
    from anthropic import Anthropic as Anthropic
    from anthropic import AsyncAnthropic as AsyncAnthropic
else:
    from ._vendors.anthropic import Anthropic, AsyncAnthropic
