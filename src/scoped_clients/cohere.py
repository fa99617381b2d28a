"""Drop-in Cohere clients (v2 and v1) whose calls belong to the ambient ``RequestScope``.

Same constructors as ``cohere.AsyncClientV2`` / ``ClientV2`` / ``AsyncClient`` /
``Client``; the HTTP client is built with Cohere's own defaults (300 s timeout,
redirects followed), or yours (``httpx_client=``) is wrapped in place.
Covered: ``chat``, ``chat_stream`` (v2 server-sent events, v1 JSON lines),
``rerank`` (search units), ``embed``.

Cohere retries with ``asyncio.sleep``: a scope cancelled during a retry's
backoff refuses the next attempt, it never reaches the network.
"""

from __future__ import annotations

from typing import Any

import cohere
import httpx

from ._clients import inject
from ._profiles.cohere import CohereProfile
from ._transport import FinishPolicy

__all__ = ["AsyncClient", "AsyncClientV2", "Client", "ClientV2"]

_DEFAULT_TIMEOUT = 300.0  # cohere's own default when it builds the client


def _inject(kwargs: dict[str, Any], finish_policy: FinishPolicy, *, is_async: bool) -> None:
    timeout = kwargs.get("timeout") or _DEFAULT_TIMEOUT
    factory: Any = httpx.AsyncClient if is_async else httpx.Client
    inject(
        kwargs,
        "httpx_client",
        lambda: factory(timeout=timeout, follow_redirects=True),
        CohereProfile(),
        finish_policy,
        is_async=is_async,
    )


class AsyncClientV2(cohere.AsyncClientV2):
    """``cohere.AsyncClientV2`` with a scoped HTTP layer."""

    def __init__(self, *args: Any, finish_policy: FinishPolicy = "abort", **kwargs: Any) -> None:
        _inject(kwargs, finish_policy, is_async=True)
        super().__init__(*args, **kwargs)


class ClientV2(cohere.ClientV2):
    """``cohere.ClientV2`` with a scoped HTTP layer."""

    def __init__(self, *args: Any, finish_policy: FinishPolicy = "abort", **kwargs: Any) -> None:
        _inject(kwargs, finish_policy, is_async=False)
        super().__init__(*args, **kwargs)


class AsyncClient(cohere.AsyncClient):
    """``cohere.AsyncClient`` (v1 API) with a scoped HTTP layer."""

    def __init__(self, *args: Any, finish_policy: FinishPolicy = "abort", **kwargs: Any) -> None:
        _inject(kwargs, finish_policy, is_async=True)
        super().__init__(*args, **kwargs)


class Client(cohere.Client):
    """``cohere.Client`` (v1 API) with a scoped HTTP layer."""

    def __init__(self, *args: Any, finish_policy: FinishPolicy = "abort", **kwargs: Any) -> None:
        _inject(kwargs, finish_policy, is_async=False)
        super().__init__(*args, **kwargs)
