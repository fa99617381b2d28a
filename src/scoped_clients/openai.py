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

from typing import TYPE_CHECKING, Any

import httpx2
import openai  # noqa: F401  (ImportError without the extra)

from ._dropin import dropins, vendor_http_client
from ._transport import FinishPolicy
from ._vendors.openai import VENDOR

__all__ = ["AsyncOpenAI", "OpenAI", "async_http_client", "http_client"]

if TYPE_CHECKING:
    from openai import AsyncOpenAI as AsyncOpenAI
    from openai import OpenAI as OpenAI
else:
    AsyncOpenAI = dropins(VENDOR)["AsyncOpenAI"]
    OpenAI = dropins(VENDOR)["OpenAI"]


def async_http_client(
    *, finish_policy: FinishPolicy = "abort", always_stream: bool = False, **kwargs: Any
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` for frameworks that take only an HTTP client (LangChain's
    ``http_async_client``, pydantic-ai's ``http_client``): built as
    ``openai.DefaultAsyncHttpx2Client(**kwargs)`` (the SDK's timeouts and limits), its
    calls owned by the ambient scope and reported as OpenAI calls (model, tokens, savings).

    Args:
        finish_policy: ``"abort"`` (default) aborts every stream on cancel; ``"finish_if_done"``
            lets a stream whose finish reason already arrived complete, so the billed usage is received.
        always_stream: send non-streamed generations as streams, so that the provider notices a
            cancel at its next token (see the ``always_stream`` guide).
        **kwargs: passed to the SDK's default HTTP client class (timeouts, limits, proxies...).
    """
    client: httpx2.AsyncClient = vendor_http_client(
        VENDOR, "async", kwargs, finish_policy=finish_policy, always_stream=always_stream
    )
    return client


def http_client(*, finish_policy: FinishPolicy = "abort", always_stream: bool = False, **kwargs: Any) -> httpx2.Client:
    """The sync twin of ``async_http_client`` (``openai.DefaultHttpx2Client(**kwargs)``, scoped).

    Args:
        finish_policy: ``"abort"`` (default) aborts every stream on cancel; ``"finish_if_done"``
            lets a stream whose finish reason already arrived complete, so the billed usage is received.
        always_stream: send non-streamed generations as streams, so that the provider notices a
            cancel at its next token (see the ``always_stream`` guide).
        **kwargs: passed to the SDK's default HTTP client class (timeouts, limits, proxies...).
    """
    client: httpx2.Client = vendor_http_client(
        VENDOR, "sync", kwargs, finish_policy=finish_policy, always_stream=always_stream
    )
    return client
