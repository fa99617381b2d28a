"""Drop-in Anthropic clients whose calls belong to the ambient ``RequestScope``.

``from scoped_clients.anthropic import AsyncAnthropic`` instead of ``from
anthropic import AsyncAnthropic``: same constructor, methods (``messages.create``,
``messages.stream()``), return types and exceptions; ``isinstance`` holds.
``finish_policy`` works as in ``scoped_clients.openai``.

anthropic retries *any* ``Exception`` raised while sending, wrapped in
``APIConnectionError``; ``ScopeCancelled`` is a ``BaseException`` and so is never
retried nor wrapped.
"""

from __future__ import annotations

from typing import Any

import anthropic

from ._clients import inject
from ._profiles.anthropic import AnthropicProfile
from ._transport import FinishPolicy

__all__ = ["Anthropic", "AsyncAnthropic"]


class AsyncAnthropic(anthropic.AsyncAnthropic):
    """``anthropic.AsyncAnthropic`` with a scoped HTTP layer."""

    def __init__(self, *args: Any, finish_policy: FinishPolicy = "abort", **kwargs: Any) -> None:
        default = anthropic.DefaultAsyncHttpxClient
        inject(kwargs, "http_client", default, AnthropicProfile(), finish_policy, is_async=True)
        super().__init__(*args, **kwargs)


class Anthropic(anthropic.Anthropic):
    """``anthropic.Anthropic`` with a scoped HTTP layer; ``cancel()`` from another thread unblocks its reads."""

    def __init__(self, *args: Any, finish_policy: FinishPolicy = "abort", **kwargs: Any) -> None:
        inject(kwargs, "http_client", anthropic.DefaultHttpxClient, AnthropicProfile(), finish_policy, is_async=False)
        super().__init__(*args, **kwargs)
