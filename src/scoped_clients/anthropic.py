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

from typing import TYPE_CHECKING, Any, cast

import anthropic
import httpx2

__all__ = ["Anthropic", "AsyncAnthropic"]

if TYPE_CHECKING:
    from anthropic import Anthropic as Anthropic
    from anthropic import AsyncAnthropic as AsyncAnthropic

    from ._transport import FinishPolicy
else:
    from ._dropin import DropIn
    from ._profiles.anthropic import AnthropicProfile

    class AsyncAnthropic(
        metaclass=DropIn,
        vendor=anthropic.AsyncAnthropic,
        profile=AnthropicProfile,
        http_path=("_client",),
        http_arg="http_client",
    ):
        """``anthropic.AsyncAnthropic`` with a scoped HTTP layer."""

    class Anthropic(
        metaclass=DropIn,
        vendor=anthropic.Anthropic,
        profile=AnthropicProfile,
        http_path=("_client",),
        http_arg="http_client",
    ):
        """``anthropic.Anthropic`` with a scoped HTTP layer; ``cancel()`` from another thread unblocks its reads."""


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
    from ._clients import vendor_http_client
    from ._profiles.anthropic import AnthropicProfile

    return cast(
        "httpx2.AsyncClient",
        vendor_http_client(
            anthropic.DefaultAsyncHttpxClient,
            AnthropicProfile(),
            kwargs,
            finish_policy=finish_policy,
            always_stream=always_stream,
        ),
    )


def http_client(*, finish_policy: FinishPolicy = "abort", always_stream: bool = False, **kwargs: Any) -> httpx2.Client:
    """The sync twin of ``async_http_client`` (``anthropic.DefaultHttpxClient(**kwargs)``, scoped).

    Args:
        finish_policy: ``"abort"`` (default) aborts every stream on cancel; ``"finish_if_done"``
            lets a stream whose finish reason already arrived complete, so the billed usage is received.
        always_stream: send non-streamed generations as streams, so that the provider notices a
            cancel at its next token (see the ``always_stream`` guide).
        **kwargs: passed to the SDK's default HTTP client class (timeouts, limits, proxies...).
    """
    from ._clients import vendor_http_client
    from ._profiles.anthropic import AnthropicProfile

    return cast(
        "httpx2.Client",
        vendor_http_client(
            anthropic.DefaultHttpxClient,
            AnthropicProfile(),
            kwargs,
            finish_policy=finish_policy,
            always_stream=always_stream,
        ),
    )


__all__ += ["async_http_client", "http_client"]
