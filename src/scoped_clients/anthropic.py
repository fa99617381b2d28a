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

from typing import TYPE_CHECKING, Any

import anthropic  # noqa: F401  (ImportError without the extra)
import httpx2

from ._dropin import dropins, vendor_http_client
from ._transport import FinishPolicy
from ._vendors.anthropic import VENDOR

__all__ = ["Anthropic", "AsyncAnthropic", "async_http_client", "http_client"]

if TYPE_CHECKING:
    from anthropic import Anthropic as Anthropic
    from anthropic import AsyncAnthropic as AsyncAnthropic
else:
    Anthropic = dropins(VENDOR)["Anthropic"]
    AsyncAnthropic = dropins(VENDOR)["AsyncAnthropic"]


def async_http_client(
    *, finish_policy: FinishPolicy = "abort", always_stream: bool = False, **kwargs: Any
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` for frameworks that take only an HTTP client (pydantic-ai's
    ``http_client``): built as ``anthropic.DefaultAsyncHttpxClient(**kwargs)`` (the SDK's
    timeouts, limits and keep-alive socket options), its calls owned by the ambient scope
    and reported as Anthropic calls (model, tokens, savings).

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
    """The sync twin of ``async_http_client`` (``anthropic.DefaultHttpxClient(**kwargs)``, scoped).

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
