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

import anthropic

__all__ = ["Anthropic", "AsyncAnthropic"]

if TYPE_CHECKING:
    from anthropic import Anthropic as Anthropic
    from anthropic import AsyncAnthropic as AsyncAnthropic
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
