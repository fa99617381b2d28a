"""Drop-in Groq clients whose calls belong to the ambient ``RequestScope``.

``from scoped_clients.groq import AsyncGroq`` instead of ``from groq import
AsyncGroq``: the same constructor builds the vendor's own client (``type(client)
is groq.AsyncGroq``), whose HTTP layer (httpx 0.28) is scoped. ``finish_policy``
and ``always_stream`` work as in ``scoped_clients.openai``; Groq sends the usage
of a stream in its last chunk (``x_groq.usage``) without being asked.

groq retries *any* ``Exception`` raised while sending (twice by default), wrapped in
``APIConnectionError``; ``ScopeCancelled`` is a ``BaseException`` and so is never
retried nor wrapped: a cancelled call reaches the provider once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import groq  # noqa: F401  (ImportError without the extra)

from ._dropin import dropins
from ._vendors.groq import VENDOR

__all__ = ["AsyncGroq", "Groq"]

if TYPE_CHECKING:
    from groq import AsyncGroq as AsyncGroq
    from groq import Groq as Groq
else:
    AsyncGroq = dropins(VENDOR)["AsyncGroq"]
    Groq = dropins(VENDOR)["Groq"]
