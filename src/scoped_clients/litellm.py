"""LiteLLM's ``acompletion`` / ``completion``, embeddings and rerank, owned by the ambient ``RequestScope``.

``from scoped_clients.litellm import acompletion`` instead of ``from litellm import
acompletion``: the same function (LiteLLM's signature, arguments and answers); inside a
scope its request goes through a scoped transport, so that cancelling the scope stops the
call at the provider (the socket is closed, the provider sees the disconnect), it is
never retried or re-sent, and the scope's report names the provider and model LiteLLM
resolved.  Covered: ``openai/``, ``anthropic/``, ``gemini/``, ``cohere/``, ``groq/`` and
``mistral/``, streamed and not; any other provider is refused inside a scope
(``UnsupportedError``), and LiteLLM's proxy is out of reach of a client library.  Outside
a scope each function is LiteLLM's own call.  LiteLLM runs on asyncio only (uvloop too).

``close_litellm_async_clients()`` closes the scoped calls' connection pools, then LiteLLM's
own clients (``litellm.close_litellm_async_clients()``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import litellm  # ImportError without the extra

from ._vendors import litellm as _vendor

__all__ = [
    "acompletion",
    "aembedding",
    "arerank",
    "close_litellm_async_clients",
    "completion",
    "embedding",
    "rerank",
]

if TYPE_CHECKING:
    from litellm import acompletion as acompletion
    from litellm import aembedding as aembedding
    from litellm import arerank as arerank
    from litellm import completion as completion
    from litellm import embedding as embedding
    from litellm import rerank as rerank
else:
    acompletion = _vendor.scoped_async("acompletion", "completion")
    completion = _vendor.scoped_sync("completion", "completion")
    aembedding = _vendor.scoped_async("aembedding", "embedding")
    arerank = _vendor.scoped_async("arerank", "rerank")
    embedding = _vendor.scoped_sync("embedding", "embedding")
    rerank = _vendor.scoped_sync("rerank", "rerank")


async def close_litellm_async_clients() -> None:
    """Close the connection pools of the scoped calls, then LiteLLM's own cached clients."""
    await _vendor.close_clients()
    close: Any = getattr(litellm, "close_litellm_async_clients")  # noqa: B009  (untyped, not re-exported)
    await close()
